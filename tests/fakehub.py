"""A small real HTTP server on 127.0.0.1 that answers the Hugging Face Hub endpoints huggingface-hub uses:
model info (with LFS sha256 when ``blobs=true``) and file downloads with HEAD, ETag, commit headers and
byte ranges. It counts what it serves so tests can check that only headers were read.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    """Repos of local files served over HTTP; ``bytes_served`` counts body bytes per file name."""

    files: dict[str, dict[str, Path]] = field(default_factory=dict)
    bytes_served: Counter[str] = field(default_factory=Counter)
    requests: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None

    def add(self, repo: str, path: Path, name: str | None = None) -> None:
        self.files.setdefault(repo, {})[name or path.name] = path

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, *, body: bool) -> None:
                parsed = urlparse(self.path)
                hub.requests.append(f"{self.command} {self.path}")
                info = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", parsed.path)
                if info:
                    return self._model_info(info.group(1), parse_qs(parsed.query), body)
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", parsed.path)
                if resolve:
                    return self._file(resolve.group(1), unquote(resolve.group(3)), body)
                self.send_error(404)

            def _model_info(self, repo: str, query: dict[str, list[str]], body: bool) -> None:
                if repo not in hub.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.end_headers()
                    return
                siblings = []
                for name, path in hub.files[repo].items():
                    sibling: dict[str, object] = {"rfilename": name}
                    if query.get("blobs") == ["True"] or query.get("blobs") == ["true"]:
                        size = path.stat().st_size
                        sibling.update(size=size, lfs={"sha256": sha256_of(path), "size": size, "pointerSize": 134})
                    siblings.append(sibling)
                payload = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if body:
                    self.wfile.write(payload)

            def _file(self, repo: str, name: str, body: bool) -> None:
                path = hub.files.get(repo, {}).get(name)
                if path is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                size = path.stat().st_size
                start, end = 0, size - 1
                status = 200
                if match := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
                    start = int(match.group(1))
                    end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{sha256_of(path)}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Size", str(size))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if not body:
                    return
                with path.open("rb") as handle:
                    handle.seek(start)
                    remaining = end - start + 1
                    while remaining > 0:
                        chunk = handle.read(min(remaining, 1 << 20))
                        if not chunk:
                            break
                        try:
                            self.wfile.write(chunk)
                        except (BrokenPipeError, ConnectionResetError):
                            break
                        hub.bytes_served[name] += len(chunk)
                        remaining -= len(chunk)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-hub", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(10)


_hashes: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]
