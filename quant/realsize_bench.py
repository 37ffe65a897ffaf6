"""Mixtral 8x7B at its real size, end to end through the app: the shape-true Q2_K file (17.3 GB apparent,
zero weights, no disk) loaded and run by the console chat and by the window's load path.

    python -m quant realsize-bench [--level Q2_K] [--tokens 32] [--skip-window]

Prints, for each path: load seconds, time to first token, decode tokens/s, peak RSS; then the planner's
estimate for this machine and the bandwidth bound (active bytes per token ÷ measured RAM bandwidth), with
the measured speed as a share of each. The first load reads 17 GB of holes into the page cache (about a
minute here); later loads of the same file find it there. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROMPT = "Write a short poem about the sea."
CHAT = (sys.executable, "-m", "app", "chat", "--model")


def console_chat(path: Path, tokens: int) -> dict[str, Any]:
    """`mixtral-desk chat --prompt … --json` in a child process: wall time, the reply's stats, peak RSS."""
    started = time.perf_counter()
    result = subprocess.run(
        [*CHAT, str(path), "--prompt", PROMPT, "--json", "--max-tokens", str(tokens), "--temperature", "0"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"console chat failed: {result.stderr.strip()[-2000:]}")
    payload = json.loads(result.stdout)
    stats = payload["stats"]
    return {
        "load_s": wall - stats["total_time_s"],  # the child's whole life minus the reply: start-up and load
        "ttft_s": stats["time_to_first_token_s"],
        "tokens_per_s": stats["generation_tokens_per_s"],
        "generated": stats["generated_tokens"],
        "prompt_tokens": stats["prompt_tokens"],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
    }


def window_path(path: Path, tokens: int) -> dict[str, Any]:
    """The window's load and send path (``python -m app.gui.load_timing``, offscreen, in a child process)."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run(
        [sys.executable, "-m", "app.gui.load_timing", "--model", str(path), "--tokens", str(tokens)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the window path failed: {result.stderr.strip()[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quant realsize-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--level", default="Q2_K", help="quantization level of the 8x7B file (default Q2_K)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens to generate (default 32)")
    parser.add_argument("--folder", type=Path, default=None, help="where the shape-true file is kept")
    parser.add_argument("--skip-window", action="store_true", help="only the console chat")
    parser.add_argument(
        "--drop-caches", action="store_true", help="empty the page cache first, for a cold first load (root only)"
    )
    args = parser.parse_args(argv)

    from app.core.models.gguf import read_model
    from app.core.planning.fit import device_for, plan_file, ram_bandwidth_gbps
    from app.core.planning.planner import ModelShape, PlanSettings
    from app.core.storage import paths
    from quant.full import write_full

    folder = args.folder or paths.cache_dir() / "planner-check" / "full"
    full = write_full("8x7b", args.level, folder)
    print(f"{full.path.name}: {full.apparent_bytes / 1e9:.1f} GB apparent, {full.disk_bytes / 2**20:.1f} MiB on disk")
    os.environ["MIXTRAL_DESK_HOME"] = tempfile.mkdtemp(prefix="realsize-bench-")  # the children's data folder
    if args.drop_caches:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    rows = [("console chat", console_chat(full.path, args.tokens))]
    if not args.skip_window:
        rows.append(("window", window_path(full.path, args.tokens)))

    shape = ModelShape.from_gguf(read_model(full.path), full.path.name)
    plan = plan_file(full.path, device_for(), PlanSettings(n_parallel=2))
    active = shape.active_bytes_per_token
    bandwidth = ram_bandwidth_gbps()
    bound = bandwidth * 1e9 / active
    print(
        f"\n| path | load s | TTFT s (prompt tokens) | decode tok/s | peak RSS GiB | "
        f"of planner's {plan.decode_tokens_per_s:.2f} | "
        f"of bound {bound:.2f} |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, row in rows:
        speed = row["tokens_per_s"]
        print(
            f"| {name} | {row['load_s']:.1f} | {row['ttft_s']:.2f} ({row['prompt_tokens']}) | "
            f"{speed:.2f} ({row['generated']} tokens) | "
            f"{row['peak_rss_gib']:.1f} | {speed / plan.decode_tokens_per_s:.2f} | {speed / bound:.2f} |"
        )
    print(
        f"\nactive bytes per token {active / 2**30:.2f} GiB (attention, norms, router, 2 of 8 experts per layer, "
        f"output); RAM bandwidth {bandwidth:.1f} GB/s measured; planner: {plan.summary()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
