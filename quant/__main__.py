"""`python -m quant`: model tooling commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_tiny(args: argparse.Namespace) -> int:
    from quant.tiny import DEFAULT_QUANTS, build_tiny

    quants = [q.strip() for q in args.quants.split(",") if q.strip()] if args.quants else list(DEFAULT_QUANTS)
    files = build_tiny(Path(args.out), tokenizer=args.tokenizer, quants=quants)
    for level, path in files.items():
        print(f"{level}\t{path}\t{path.stat().st_size} bytes")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quant", description="Mixtral Desk model tooling.")
    commands = parser.add_subparsers(dest="command", required=True)
    tiny = commands.add_parser(
        "tiny",
        help="write a tiny Mixtral-architecture GGUF and its quantized copies",
        description="Write a tiny Mixtral-architecture GGUF (8 experts, top-2, Mistral's real vocabulary, "
        "seeded random F16 weights) and quantize it with llama.cpp.",
    )
    tiny.add_argument("--tokenizer", choices=["v1", "v3"], default="v1", help="v1 = Mixtral 8x7B, v3 = 8x22B")
    tiny.add_argument("--out", required=True, help="output directory")
    tiny.add_argument("--quants", default="", help="comma-separated levels, e.g. Q2_K,Q4_K_M,Q8_0")
    tiny.set_defaults(func=_cmd_tiny)
    check = commands.add_parser(
        "planner-check",
        help="compare the memory planner with llama.cpp's own buffer sizes",
        add_help=False,
    )
    check.set_defaults(func=None)
    commands.add_parser(
        "download-bench", help="download speed against a plain copy from a local server", add_help=False
    )
    commands.add_parser(
        "host-bench", help="the engine host against bare llama.cpp: decode and concurrent streams", add_help=False
    )
    commands.add_parser("requantize", help="requantize a GGUF with llama.cpp's quantizer", add_help=False)
    commands.add_parser(
        "full", help="full-size Mixtral GGUFs whose data is a sparse hole (shape-true test files)", add_help=False
    )
    commands.add_parser(
        "realsize-bench", help="the full-size 8x7B through the console chat and the window", add_help=False
    )
    commands.add_parser(
        "eval", help="perplexity, KL divergence and top-1 agreement against a reference", add_help=False
    )
    if argv is None:
        argv = sys.argv[1:]
    scripts = {
        "planner-check": "quant.planner_check",
        "download-bench": "quant.download_bench",
        "host-bench": "quant.host_bench",
        "requantize": "quant.requantize",
        "full": "quant.full",
        "eval": "quant.evaluate",
        "realsize-bench": "quant.realsize_bench",
    }
    if argv and argv[0] in scripts:
        import importlib

        return int(importlib.import_module(scripts[argv[0]]).main(argv[1:]))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
