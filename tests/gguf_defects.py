"""GGUF files with one defect llama.cpp refuses, for the tests of plan, load and import."""

from __future__ import annotations

from pathlib import Path


def defective_gguf(tmp_path: Path, defect: str) -> Path:
    """A small Mixtral-architecture GGUF (data a sparse hole) with one defect llama.cpp refuses."""
    from quant.full import write_sparse
    from quant.tiny import TinyMixtralSpec, tensor_layout

    spec = TinyMixtralSpec(n_layer=2, n_embd=256, n_ff=512)
    layout = tensor_layout(spec, 32000)
    if defect == "unknown architecture":
        spec = TinyMixtralSpec(n_layer=2, n_embd=256, n_ff=512, architecture="notanarch")
    elif defect == "missing tensor":
        layout = [t for t in layout if t[0] != "blk.1.ffn_down_exps.weight"]
    elif defect == "wrong shape":
        layout = tensor_layout(TinyMixtralSpec(n_layer=2, n_embd=256, n_ff=768), 32000)  # header says 512
    path = write_sparse(spec, tmp_path / f"{defect.replace(' ', '-')}.gguf", {}, 1, layout)
    if defect == "duplicate tensor":  # rename blk.1.attn_q to blk.1.attn_k in place: same length
        data = path.read_bytes()
        path.write_bytes(data.replace(b"blk.1.attn_q.weight", b"blk.1.attn_k.weight", 1))
    return path
