"""A small real HTTP server on 127.0.0.1 that answers the Hugging Face Hub endpoints huggingface-hub uses:
model info (with LFS sha256 when ``blobs=true``) and file downloads with HEAD, ETag, commit headers and
byte ranges. It counts what it serves so tests can check that only headers were read.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Fault:
    """One misbehaviour for the next GET of a file.

    kind: ``cut`` (close the connection after ``after`` bytes), ``status`` (answer ``status``), ``trickle``
    (send ``chunk`` bytes every ``delay`` seconds), ``corrupt`` (flip the bytes of the body), ``ignore_range``
    (answer 200 with the whole file even when a Range was asked).
    """

    kind: str
    after: int = 0
    status: int = 500
    chunk: int = 1
    delay: float = 0.05


@dataclass
class FakeHub:
    """Repos of local files served over HTTP; ``bytes_served`` counts body bytes per file name."""

    files: dict[str, dict[str, Path]] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    throttle_bytes_per_s: float = 0.0
    bytes_served: Counter[str] = field(default_factory=Counter)
    #: (file name, first byte) of every body request, in arrival order
    requested_from: list[tuple[str, int]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def add(self, repo: str, path: Path, name: str | None = None) -> None:
        self.files.setdefault(repo, {})[name or path.name] = path

    def fail_next(self, name: str, *faults: Fault) -> None:
        """Queue faults for the next GETs of ``name``, one per request."""
        self.faults.setdefault(name, []).extend(faults)

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_text}:{port}"

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
                fault = hub.faults[name].pop(0) if body and hub.faults.get(name) else None
                if fault is not None and fault.kind == "status":
                    self.send_response(fault.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = path.stat().st_size
                start, end = 0, size - 1
                status = 200
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if match and not (fault is not None and fault.kind == "ignore_range"):
                    start = int(match.group(1))
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{sha256_of(path)}"')
                self.send_header("X-Linked-Etag", f'"{sha256_of(path)}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Size", str(size))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if not body:
                    return
                hub.requested_from.append((name, start))
                block = 1 << 16
                if fault is not None and fault.kind == "trickle":
                    block = fault.chunk
                elif hub.throttle_bytes_per_s:
                    block = max(1, int(hub.throttle_bytes_per_s / 20))
                sent = 0
                with path.open("rb") as handle:
                    handle.seek(start)
                    remaining = end - start + 1
                    while remaining > 0:
                        chunk = handle.read(min(remaining, block))
                        if not chunk:
                            break
                        if fault is not None and fault.kind == "cut" and sent + len(chunk) > fault.after:
                            chunk = chunk[: fault.after - sent]
                            self.wfile.write(chunk)
                            hub.bytes_served[name] += len(chunk)
                            self.wfile.flush()
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        if fault is not None and fault.kind == "corrupt":
                            chunk = bytes(b ^ 0xFF for b in chunk)
                        try:
                            self.wfile.write(chunk)
                        except (BrokenPipeError, ConnectionResetError):
                            return
                        hub.bytes_served[name] += len(chunk)
                        sent += len(chunk)
                        remaining -= len(chunk)
                        if fault is not None and fault.kind == "trickle":
                            hub.pause(fault.delay)
                        elif hub.throttle_bytes_per_s:
                            hub.pause(0.05)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.timeout = 0.2  # how often the serving loop looks at the stop flag
        self.thread = threading.Thread(target=self._serve, name="fake-hub", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        # a loop of our own rather than serve_forever: shutdown() waits without a limit, and a suite run once hung
        # there for good in a fixture's teardown
        assert self.server is not None
        while not self._stopping.is_set():
            self.server.handle_request()

    def pause(self, seconds: float) -> None:
        """Server-side pacing for slow-line faults (the server's own timing, not test synchronisation)."""
        self._stopping.wait(seconds)

    def stop(self) -> None:
        self._stopping.set()
        if self.thread is not None:
            self.thread.join(10)
        if self.server is not None:
            self.server.server_close()


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
