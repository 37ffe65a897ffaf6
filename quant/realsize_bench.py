"""Mixtral 8x7B at its real size, end to end through the app: the shape-true Q2_K file (17.3 GB apparent,
zero weights, no disk) loaded and run by the console chat and by the window's load path.

    python -m quant realsize-bench [--level Q2_K] [--tokens 32] [--skip-window]
    python -m quant realsize-bench --rpc-mem 8GiB

Prints, for each path: load seconds, time to first token, decode tokens/s, peak RSS; then the planner's
estimate for this machine and the bandwidth bound (active bytes per token ÷ measured RAM bandwidth), with
the measured speed as a share of each. With ``--rpc-mem`` the console chat runs three times against a
llama.cpp RPC worker started here with that memory limit (a real device out-of-memory beyond it): on the CPU
alone, with whole layers on the worker, and with every layer on the worker but the experts of the fewest
layers that leave it room kept in RAM; each next to the planner's figures for it (the worker is this same
CPU, so the speeds are relative only). The first load reads 17 GB of holes into the page cache (about a
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


def console_chat(path: Path, tokens: int, *options: str) -> dict[str, Any]:
    """`mixtral-desk chat --prompt … --json` in a child process: wall time, the reply's stats, peak RSS."""
    started = time.perf_counter()
    result = subprocess.run(
        [*CHAT, str(path), "--prompt", PROMPT, "--json", "--max-tokens", str(tokens), "--temperature", "0", *options],
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
    parser.add_argument("--rpc-mem", metavar="SIZE", help="also offload to a local RPC worker capped at SIZE")
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
    if args.rpc_mem:
        return offload_runs(full.path, args.tokens, args.rpc_mem)
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


def offload_runs(path: Path, tokens: int, limit: str) -> int:
    """The console chat on the CPU alone, then with a worker capped at ``limit``: whole layers, experts in RAM."""
    from app.core.models.gguf import read_model
    from app.core.planning.fit import device_for, plan_file
    from app.core.planning.planner import ModelShape, PlanSettings, fewest_experts_in_ram
    from app.core.planning.rpc_workers import probe_worker
    from quant.local_workers import local_workers

    rows = [("CPU only", console_chat(path, tokens), plan_file(path, device_for(), PlanSettings(n_parallel=2)))]
    with local_workers(limit, threads=os.cpu_count() or 1) as (address,):  # it computes while this one waits
        device = device_for(workers=[probe_worker(address)])
        settings = PlanSettings(n_parallel=2)
        fewest = fewest_experts_in_ram(ModelShape.from_gguf(read_model(path)), device, settings)
        runs = [("whole layers on the worker", 0)]
        if fewest is not None:
            runs.append((f"experts of {fewest} layers in RAM, the rest on the worker", fewest))
        for name, cpu_moe in runs:
            plan = plan_file(path, device, PlanSettings(n_parallel=2, cpu_moe=cpu_moe))
            rows.append((name, console_chat(path, tokens, "--rpc", address, "--cpu-moe", str(cpu_moe)), plan))
    print(f"\n| {path.name}, worker capped at {limit} | load s | decode tok/s | planner tok/s | plan |")
    print("|---|---|---|---|---|")
    for name, row, plan in rows:
        print(
            f"| {name} | {row['load_s']:.1f} | {row['tokens_per_s']:.2f} ({row['generated']} tokens) | "
            f"{plan.decode_tokens_per_s:.2f} | {plan.summary()} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
