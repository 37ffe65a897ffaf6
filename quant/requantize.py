"""Requantize a GGUF with llama.cpp's own quantizer.

    python -m quant requantize SRC.gguf --to Q4_K_M [--out PATH] [--threads N]

Refuses to overwrite, checks free disk space first, refuses to "requantize up" (a Q4 file turned into Q8_0
gains size, not precision), and handles split inputs (give the first part; the output is one file).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# llama.cpp file types (enum llama_ftype) for each quantization level
QUANT_FTYPES: dict[str, int] = {
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_0": 2,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_0": 8,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "Q8_0": 7,
}
# Typical bits per weight of each level for Mixtral-sized models (llama.cpp's own mixes).
BITS_PER_WEIGHT: dict[str, float] = {
    "Q2_K": 2.9,
    "Q3_K_S": 3.5,
    "Q3_K_M": 3.9,
    "Q3_K_L": 4.2,
    "Q4_0": 4.55,
    "Q4_K_S": 4.6,
    "Q4_K_M": 4.85,
    "Q5_0": 5.55,
    "Q5_K_S": 5.55,
    "Q5_K_M": 5.7,
    "Q6_K": 6.6,
    "Q8_0": 8.5,
}
_TENSOR_PROGRESS = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")
ProgressCallback = Callable[[int, int], None]


class RequantizeError(RuntimeError):
    """A requantization that cannot or should not run; the message says why."""


def source_bits_per_weight(path: Path) -> tuple[float, int]:
    """(bits per weight, number of weights) of a model, from its tensor table."""
    from app.core.models.gguf import read_model

    model = read_model(path)
    elements = 0
    for tensor in model.tensors:
        count = 1
        for dim in tensor.shape:
            count *= dim
        elements += count
    return (model.weight_bytes * 8 / elements if elements else 0.0), elements


def quantize(
    src: Path,
    dst: Path,
    quant: str,
    *,
    threads: int = 0,
    allow_requantize: bool = True,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Run ``llama_model_quantize`` from ``src`` to ``dst`` (written atomically via a temporary file)."""
    from app.core.runtime import llama_log, native

    if quant not in QUANT_FTYPES:
        raise RequantizeError(f"Unknown quantization {quant!r}; choose from {', '.join(QUANT_FTYPES)}.")

    def progress(line: str) -> None:
        if on_progress is not None and (match := _TENSOR_PROGRESS.match(line.strip())):
            on_progress(int(match.group(1)), int(match.group(2)))

    tmp = dst.with_name(f".{dst.name}.partial")
    with llama_log.capture(progress) as lines:
        rc = native.quantize(
            str(src), str(tmp), QUANT_FTYPES[quant], threads=threads, allow_requantize=allow_requantize
        )
    if rc != 0:
        tmp.unlink(missing_ok=True)
        errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
        raise RequantizeError(f"llama.cpp could not quantize {src.name} to {quant}: {errors[-1] if errors else rc}")
    tmp.replace(dst)
    return dst


def requantize(
    src: Path,
    target: str,
    out: Path | None = None,
    *,
    threads: int = 0,
    on_progress: ProgressCallback | None = None,
    free_space: Callable[[Path], int] | None = None,
) -> Path:
    """Requantize ``src`` (any part of a split model) to ``target``; returns the new file.

    Raises:
        RequantizeError: unknown level, output exists, not enough disk, or the input is already below the target.
    """
    from app.core.models.gguf import SPLIT_PART, GGUFError

    target = target.upper()
    if target not in QUANT_FTYPES:
        raise RequantizeError(f"Unknown quantization {target!r}; choose from {', '.join(QUANT_FTYPES)}.")
    if not src.is_file():
        raise RequantizeError(f"{src} does not exist.")
    try:
        bits, elements = source_bits_per_weight(src)
    except GGUFError as err:
        raise RequantizeError(f"Cannot requantize {src.name}: {err}") from err
    if bits < BITS_PER_WEIGHT[target] - 0.5:
        raise RequantizeError(
            f"{src.name} already uses about {bits:.1f} bits per weight; {target} needs about "
            f"{BITS_PER_WEIGHT[target]:.1f}. Requantizing up adds size, not quality: start from the F16 or Q8_0 file."
        )
    if match := SPLIT_PART.match(src.name):
        stem = match.group("stem")
        src = src.with_name(f"{stem}-00001-of-{match.group('count')}.gguf")
    else:
        stem = src.stem
    base = re.sub(r"[.-](F16|BF16|F32|Q\d\w*)$", "", stem, flags=re.I)
    out = out or src.with_name(f"{base}.{target}.gguf")
    if out.exists():
        raise RequantizeError(f"{out} already exists; remove it or choose another --out.")
    needed = int(elements * BITS_PER_WEIGHT[target] / 8 * 1.05)
    free = (free_space or (lambda folder: shutil.disk_usage(folder).free))(out.parent)
    if needed > free:
        raise RequantizeError(
            f"Not enough disk space: {target} needs about {needed / 1024**3:.1f} GiB, {free / 1024**3:.1f} GiB are free."
        )
    return quantize(src, out, target, threads=threads, on_progress=on_progress)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quant requantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="source GGUF (the first or any part of a split model)")
    parser.add_argument("--to", required=True, choices=list(QUANT_FTYPES), help="target quantization")
    parser.add_argument("--out", default=None, help="output path (default: beside the source)")
    parser.add_argument("--threads", type=int, default=0, help="quantizer threads (default: all cores)")
    args = parser.parse_args(argv)

    def show(done: int, total: int) -> None:
        print(f"\r[{done}/{total}] tensors", end="", file=sys.stderr, flush=True)

    try:
        out = requantize(
            Path(args.src), args.to, Path(args.out) if args.out else None, threads=args.threads, on_progress=show
        )
    except RequantizeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
