"""Full-size Mixtral GGUFs that cost no disk: shape-true test files, not models.

    python -m quant full --model 8x7b --quant Q2_K --out DIR
    python -m quant full --model 8x22b --instruct --sizes # every level's exact file size, nothing kept
    python -m quant full --update-catalog                 # computed sizes into models_manifest/catalog.json

Each file has Mixtral's real architecture, hyperparameters and Mistral's real vocabulary (v1 for 8x7B, v3 for
8x22B), every tensor in the type llama.cpp's own quantizer picks for the level, and tensor data that is a
sparse hole: a 17 GB Q2_K file takes under a megabyte of disk. llama.cpp loads and runs it (the weights are
zeros, so the text is meaningless but the speed and memory are real), the planner sizes it, and its length is
the exact size of a real file at that level.

The per-tensor types are learned, not re-implemented: a full-size F16 file (also a hole) goes through
``llama_model_quantize`` with ``dry_run``, which logs the type it would give every tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models_manifest import SIZE_COMPUTED, CatalogModel, default_path, load_catalog
from quant.requantize import QUANT_FTYPES
from quant.tiny import TinyMixtralSpec, tensor_layout, write_metadata
from quant.tokenizers import mistral_tokenizer_path, read_sentencepiece_vocab

LEVELS = ("Q2_K", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")

# The published hyperparameters of the two Mixtral generations.
SHAPES = {
    "8x7b": TinyMixtralSpec(
        tokenizer="v1",
        n_layer=32,
        n_embd=4096,
        n_ff=14336,
        n_head=32,
        n_head_kv=8,
        n_ctx_train=32768,
        rope_freq_base=1_000_000.0,
        name="Mixtral-8x7B-Instruct-v0.1 (shape-true test file, zero weights)",
    ),
    "8x22b": TinyMixtralSpec(
        tokenizer="v1",  # the base model; Instruct v0.1 has Mistral's v3 vocabulary (32768)
        n_layer=56,
        n_embd=6144,
        n_ff=16384,
        n_head=48,
        n_head_kv=8,
        n_ctx_train=65536,
        rope_freq_base=1_000_000.0,
        name="Mixtral-8x22B-v0.1 (shape-true test file, zero weights)",
    ),
}

# Published file sizes to compare with (bytes): mradermacher's 8x7B conversions. Instruct Q4_K_M is exact;
# the base repo's figures are the hub's rounded GB.
PUBLIC_SIZES: dict[tuple[str, str], tuple[int, str]] = {
    ("8x7b", "Q2_K"): (17_300_000_000, "mradermacher base, ~17.3 GB"),
    ("8x7b", "Q3_K_M"): (22_500_000_000, "mradermacher base, ~22.5 GB"),
    ("8x7b", "Q4_K_M"): (28_448_468_384, "mradermacher Instruct, exact"),
    ("8x7b", "Q5_K_M"): (33_200_000_000, "mradermacher base, ~33.2 GB"),
}

_DRY_RUN_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*?\], type =\s*(\S+),\s+size = .*?(?:\((\S+)\))?\s*$")


@dataclass(frozen=True)
class FullFile:
    """A written shape-true file: its path, apparent size and the disk it really takes."""

    path: Path
    level: str
    apparent_bytes: int
    disk_bytes: int


def write_sparse(
    spec: TinyMixtralSpec,
    path: Path,
    types: dict[str, str],
    file_type: int,
    layout: list[tuple[str, tuple[int, ...], str]] | None = None,
) -> Path:
    """Write ``spec`` with each matrix in ``types[name]`` (a ggml type name; default F16) and all tensor data a
    hole. Norms and the expert router stay F32, as llama.cpp's quantizer leaves them. ``layout`` replaces the
    tensor list (tests use it to write defective files)."""
    import gguf

    vocab = read_sentencepiece_vocab(mistral_tokenizer_path(spec.tokenizer))
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.writing")
    writer = gguf.GGUFWriter(str(staging), spec.architecture)
    write_metadata(writer, spec, vocab, file_type)
    for name, shape, kind in layout if layout is not None else tensor_layout(spec, len(vocab.pieces)):
        ggml_type = gguf.GGMLQuantizationType["F32" if kind != "matrix" else types.get(name, "F16")]
        block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        rows = 1
        for size in shape[:-1]:
            rows *= size
        writer.add_tensor_info(name, shape, np.dtype(np.float32), rows * shape[-1] // block * type_size, ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    out = writer.fout[0]
    data_start = gguf.GGUFWriter.ggml_pad(out.tell(), writer.data_alignment)
    data_bytes = sum(
        gguf.GGUFWriter.ggml_pad(info.nbytes, writer.data_alignment) for info in writer.tensors[0].values()
    )
    out.truncate(data_start + data_bytes)  # the data: a hole the file system does not store
    writer.close()
    staging.replace(path)
    return path


def quantizer_types(f16: Path, level: str) -> dict[str, str]:
    """The ggml type llama.cpp's quantizer gives each tensor of ``f16`` at ``level`` (a dry run: no data is
    read or written)."""
    from app.core.runtime import llama_log
    from app.core.runtime.native import quantize

    with tempfile.TemporaryDirectory() as scratch, llama_log.capture() as lines:
        status = quantize(str(f16), str(Path(scratch) / "never-written.gguf"), QUANT_FTYPES[level], dry_run=True)
    if status != 0:
        raise RuntimeError(f"llama.cpp's dry run of {level} failed (status {status})")
    types = {}
    for line in lines:
        match = _DRY_RUN_LINE.match(line.strip())
        if match:
            name, current, target = match.groups()
            types[name] = (target or current).upper()
    if not types:
        raise RuntimeError("llama.cpp's dry run reported no tensors")
    return types


def shape_for(model: str, *, instruct: bool = False) -> TinyMixtralSpec:
    """The real shape of ``model`` (8x7b or 8x22b); ``instruct`` picks the Instruct release's vocabulary."""
    spec = SHAPES[model]
    if instruct and model == "8x22b":
        return replace(spec, tokenizer="v3", name=spec.name.replace("v0.1", "Instruct-v0.1"))
    return spec


def write_full(
    model: str,
    level: str,
    out_dir: Path,
    *,
    instruct: bool = False,
    spec: TinyMixtralSpec | None = None,
    source: Path | None = None,
) -> FullFile:
    """The shape-true ``model`` (8x7b or 8x22b, or any ``spec``) at ``level`` in ``out_dir`` (reused when
    already there). ``source``: that shape's sparse F16 file, when a caller writes several levels."""
    spec = spec or shape_for(model, instruct=instruct)
    path = out_dir / f"mixtral-{model}{'-instruct' if instruct else ''}-shape-true-{level}.gguf"
    if not path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as work:
            f16 = source or write_sparse(spec, Path(work) / "f16.gguf", {}, 1)
            write_sparse(spec, path, quantizer_types(f16, level), QUANT_FTYPES[level])
    stat = path.stat()
    return FullFile(path, level, stat.st_size, stat.st_blocks * 512)


def catalog_spec(model: CatalogModel) -> TinyMixtralSpec:
    """The shape a catalog model's files have, from its architecture block and tokenizer."""
    arch = model.architecture
    return TinyMixtralSpec(
        tokenizer=model.tokenizer or "v1",
        n_layer=arch.n_layer,
        n_embd=arch.n_embd,
        n_ff=arch.n_ff,
        n_head=arch.n_head,
        n_head_kv=arch.n_head_kv,
        n_expert=arch.n_expert,
        n_expert_used=arch.n_expert_used,
        n_ctx_train=model.context_length,
        rope_freq_base=1_000_000.0,
        name=model.name,
    )


def computed_catalog_sizes() -> dict[tuple[str, str], int]:
    """(model id, level) -> the shape-true file size, for every catalog size marked ``computed``."""
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="catalog-sizes-") as scratch:
        for model in load_catalog():
            spec = catalog_spec(model)
            source = None
            for quant in model.quants:
                if quant.size_source != SIZE_COMPUTED or quant.quant not in QUANT_FTYPES:
                    continue
                source = source or write_sparse(spec, Path(scratch) / f"{model.id}-F16.gguf", {}, 1)
                full = write_full(model.id, quant.quant, Path(scratch), spec=spec, source=source)
                sizes[(model.id, quant.quant)] = full.apparent_bytes
                os.remove(full.path)
    return sizes


def update_catalog(path: Path | None = None) -> int:
    """Write the computed sizes into the catalog file; returns how many changed."""
    target = path or default_path()
    data = json.loads(target.read_text(encoding="utf-8"))
    sizes = computed_catalog_sizes()
    changed = 0
    for model in data["models"]:
        for quant in model["quants"]:
            size = sizes.get((model["id"], quant["quant"]))
            if size is not None and quant["size"] != size:
                quant["size"] = size
                changed += 1
    target.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quant full", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="8x7b")
    parser.add_argument("--instruct", action="store_true", help="the Instruct release (8x22B: v3 vocabulary)")
    parser.add_argument("--quant", action="append", choices=LEVELS, help="level(s) to write (default: all)")
    parser.add_argument("--out", type=Path, help="folder for the files (default: a temporary one, removed)")
    parser.add_argument("--sizes", action="store_true", help="print each level's size and keep no files")
    parser.add_argument("--update-catalog", action="store_true", help="write computed sizes into the catalog")
    args = parser.parse_args(argv)
    if args.update_catalog:
        print(f"{update_catalog()} computed sizes changed in {default_path()}")
        return 0
    levels = args.quant or list(LEVELS)
    with tempfile.TemporaryDirectory(prefix="quant-full-") as scratch:
        out = Path(scratch) if args.sizes or args.out is None else args.out
        spec = shape_for(args.model, instruct=args.instruct)
        source = write_sparse(spec, Path(scratch) / "F16.gguf", {}, 1)  # one F16 for every level's dry run
        for level in levels:
            full = write_full(args.model, level, out, spec=spec, source=source)
            where = "" if args.sizes or args.out is None else f"  {full.path}"
            public = PUBLIC_SIZES.get((args.model, level))
            versus = (
                f"; public {public[0]:,d} ({public[1]}): {(full.apparent_bytes / public[0] - 1) * 100:+.3f} %"
                if public
                else ""
            )
            print(
                f"{args.model} {level:7s} {full.apparent_bytes:>15,d} bytes ({full.apparent_bytes / 2**20:10.1f} MiB), "
                f"{full.disk_bytes / 1024:.0f} KiB on disk{where}{versus}"
            )
            if args.sizes:
                os.remove(full.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
