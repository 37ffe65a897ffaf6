"""Download speed against a local fake hub on 127.0.0.1, as ratios measured in the same invocation.

1. Uncapped: our downloader (sha256 verified) with 1 and with 4 connections against a plain urllib copy of
   the same file from the same server. Target: at least 0.9 of the plain copy.
2. Each connection capped (``--cap-mbps``, 20 MB/s by default, like a CDN edge that throttles one stream):
   our downloader with 1, 4 and 8 parallel byte ranges, and huggingface-hub's ``hf_hub_download`` on the same
   server; prints MB/s and the speed-up over one connection and over ``hf_hub_download``.

    python -m quant download-bench [--size-mib 1024] [--capped-size-mib 256] [--cap-mbps 20]
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


def _random_file(path: Path, mib: int) -> Path:
    with path.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(1 << 20))
    return path


def _ours(source: Path, tag: str, connections: int, min_range_bytes: int | None = None) -> float:
    from app.core.models.downloads import MIN_RANGE_BYTES, Downloader, DownloadSpec, FileSpec
    from app.core.storage import paths

    spec = DownloadSpec(f"bench:{tag}", (FileSpec("bench/model", source.name),), paths.models_dir() / tag)
    start = time.perf_counter()
    placed = Downloader(spec, connections=connections, min_range_bytes=min_range_bytes or MIN_RANGE_BYTES).run()
    elapsed = time.perf_counter() - start
    placed[0].unlink()
    return elapsed


def _hf_hub_download(source: Path, cache: Path) -> float:
    from huggingface_hub import hf_hub_download

    start = time.perf_counter()
    hf_hub_download("bench/model", source.name, cache_dir=cache)
    elapsed = time.perf_counter() - start
    shutil.rmtree(cache, ignore_errors=True)
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quant download-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="uncapped test file (default 1024 MiB)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating uncapped rounds of each client")
    parser.add_argument("--capped-size-mib", type=int, default=256, help="capped test file (default 256 MiB)")
    parser.add_argument("--cap-mbps", type=float, default=20.0, help="per-connection cap in MB/s (default 20)")
    parser.add_argument("--skip-uncapped", action="store_true", help="only the per-connection-capped figures")
    args = parser.parse_args(argv)

    import huggingface_hub.constants as hub_constants

    from quant.fakehub import FakeHub, sha256_of

    work = Path(tempfile.mkdtemp(prefix="download-bench-"))
    os.environ["MIXTRAL_DESK_HOME"] = str(work / "home")
    hub = FakeHub()
    hub.start()
    hub_constants.ENDPOINT = hub.url
    hub_constants.HUGGINGFACE_CO_URL_TEMPLATE = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    hub_constants.HF_HUB_OFFLINE = False
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        if not args.skip_uncapped:
            source = _random_file(work / "payload.gguf", args.size_mib)
            sha256_of(source)  # the server's ETag, computed before any timing
            hub.add("bench/model", source)
            size = source.stat().st_size
            plain, one, four = [], [], []
            for round_no in range(args.rounds):
                target = work / f"plain-{round_no}.bin"
                plain.append(_plain_copy(f"{hub.url}/bench/model/resolve/main/{source.name}", target))
                target.unlink()
                one.append(_ours(source, f"one-{round_no}", 1))
                four.append(_ours(source, f"four-{round_no}", 4))
            best = {name: size / min(times) / 1e6 for name, times in (("plain", plain), ("1", one), ("4", four))}
            print(f"uncapped: {size / 2**20:.0f} MiB from a local server on 127.0.0.1 (best of {args.rounds})")
            print(f"  plain urllib copy:                    {best['plain']:8.1f} MB/s")
            for name in ("1", "4"):
                ratio = best[name] / best["plain"]
                print(f"  mixtral-desk, {name} connection(s) + sha256: {best[name]:8.1f} MB/s  ratio {ratio:.2f}")
            source.unlink()
        capped = _random_file(work / "capped.gguf", args.capped_size_mib)
        sha256_of(capped)
        hub.add("bench/model", capped)
        hub.throttle_bytes_per_s = args.cap_mbps * 1e6
        size = capped.stat().st_size
        figures = {}
        for connections in (1, 4, 8):
            elapsed = _ours(capped, f"capped-{connections}", connections, min_range_bytes=size // connections)
            figures[f"{connections}"] = size / elapsed / 1e6
        figures["hf"] = size / _hf_hub_download(capped, work / "hf-cache") / 1e6
    finally:
        hub.stop()
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        shutil.rmtree(work, ignore_errors=True)
    print(f"each connection capped at {args.cap_mbps:.0f} MB/s: {size / 2**20:.0f} MiB, one run each")
    print(f"  hf_hub_download:                      {figures['hf']:8.1f} MB/s")
    for name in ("1", "4", "8"):
        over_one = figures[name] / figures["1"]
        over_hf = figures[name] / figures["hf"]
        print(
            f"  mixtral-desk, {name} connection(s):          {figures[name]:8.1f} MB/s  "
            f"x{over_one:.2f} over 1 connection, x{over_hf:.2f} over hf_hub_download"
        )
    print(f"peak RSS grew by {(rss_after - rss_before) / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
