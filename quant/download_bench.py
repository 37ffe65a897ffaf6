"""Download speed: our downloader (with sha256 verification) against a plain urllib copy of the same file
from the same local server, as a ratio. Target: at least 0.9.

    python -m quant download-bench [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path


def _plain_copy(url: str, target: Path) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url) as response, target.open("wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quant download-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="test file size (default 1024 MiB)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each client (default 2)")
    args = parser.parse_args(argv)

    import huggingface_hub.constants as hub_constants

    from quant.fakehub import FakeHub, sha256_of

    work = Path(tempfile.mkdtemp(prefix="download-bench-"))
    os.environ["MIXTRAL_DESK_HOME"] = str(work / "home")
    source = work / "payload.gguf"
    with source.open("wb") as out:
        block = os.urandom(1 << 20)
        for _ in range(args.size_mib):
            out.write(block)
    sha256_of(source)  # the server's ETag, computed before any timing
    hub = FakeHub()
    hub.add("bench/model", source)
    hub.start()
    hub_constants.ENDPOINT = hub.url
    hub_constants.HUGGINGFACE_CO_URL_TEMPLATE = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    hub_constants.HF_HUB_OFFLINE = False
    from app.core.models.downloads import Downloader, DownloadSpec, FileSpec
    from app.core.storage import paths

    size = source.stat().st_size
    plain_times, ours_times = [], []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        for round_no in range(args.rounds):
            target = work / f"plain-{round_no}.bin"
            plain_times.append(_plain_copy(f"{hub.url}/bench/model/resolve/main/{source.name}", target))
            target.unlink()
            spec = DownloadSpec(
                f"bench:{round_no}", (FileSpec("bench/model", source.name),), paths.models_dir() / f"r{round_no}"
            )
            start = time.perf_counter()
            placed = Downloader(spec).run()
            ours_times.append(time.perf_counter() - start)
            placed[0].unlink()
    finally:
        hub.stop()
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        shutil.rmtree(work, ignore_errors=True)
    plain = size / min(plain_times) / 1e6
    ours = size / min(ours_times) / 1e6
    print(f"file: {size / 2**20:.0f} MiB from a local server on 127.0.0.1 (best of {args.rounds})")
    print(f"plain urllib copy:            {plain:8.1f} MB/s")
    print(f"mixtral-desk download+sha256: {ours:8.1f} MB/s")
    print(f"ratio: {ours / plain:.2f} (target >= 0.90)")
    print(f"peak RSS grew by {(rss_after - rss_before) / 1024:.0f} MiB while moving {size / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
