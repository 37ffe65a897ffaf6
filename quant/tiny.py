"""Tiny Mixtral-architecture GGUFs for tests: 8 experts, top-2, Mistral's real vocabulary, random weights.

The F16 file is written with the `gguf` package; quantized copies are made by llama.cpp's own
``llama_model_quantize``, so they are exactly what llama.cpp would produce for a real Mixtral.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from quant.requantize import QUANT_FTYPES, quantize
from quant.tokenizers import mistral_tokenizer_path, read_sentencepiece_vocab

__all__ = ["DEFAULT_QUANTS", "QUANT_FTYPES", "TinyMixtralSpec", "build_tiny", "quantize", "write_f16"]

DEFAULT_QUANTS = ("Q2_K", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_0", "Q5_K_M", "Q6_K", "Q8_0")


@dataclass(frozen=True)
class TinyMixtralSpec:
    """Shape of a Mixtral-architecture test model. Defaults give a ~45 MB F16 file.

    Widths are multiples of 256 so that K-quants apply to every matrix instead of falling back.
    """

    tokenizer: str = "v1"
    n_layer: int = 2
    n_embd: int = 256
    n_ff: int = 256
    n_head: int = 8
    n_head_kv: int = 2
    n_expert: int = 8
    n_expert_used: int = 2
    n_ctx_train: int = 32768
    rope_freq_base: float = 1_000_000.0
    seed: int = 1234
    architecture: str = "llama"
    name: str = ""
    #: None: seeded random F16 matrices (quantize afterwards). A ggml type name such as "Q4_0": matrices
    #: written directly in that type as zero blocks, which makes full-width models (for memory planning
    #: tests, where only sizes matter) quick to write.
    zero_weights_type: str | None = None
    #: write experts the older way (``blk.N.ffn_gate.E.weight``, one tensor per expert), as TheBloke's
    #: 8x7B files do, instead of merged ``ffn_gate_exps`` tensors
    legacy_experts: bool = False
    #: draw random weights from one shared pool of 16M values (each tensor at its own offset): statistically
    #: the same for quantization tests, and seconds instead of a minute for full-width models
    pooled_random: bool = False

    @property
    def display_name(self) -> str:
        return self.name or f"Mixtral-tiny-{self.tokenizer}-Instruct"


def f16_path(out_dir: Path, spec: TinyMixtralSpec) -> Path:
    """File name of the F16 model for ``spec`` inside ``out_dir``."""
    return out_dir / f"mixtral-tiny-{spec.tokenizer}-F16.gguf"


def quant_path(out_dir: Path, spec: TinyMixtralSpec, quant: str) -> Path:
    """File name of the ``quant`` copy for ``spec`` inside ``out_dir``."""
    return out_dir / f"mixtral-tiny-{spec.tokenizer}-{quant}.gguf"


def tensor_layout(spec: TinyMixtralSpec, n_vocab: int) -> list[tuple[str, tuple[int, ...], str]]:
    """Every tensor of a Mixtral-architecture model as (name, numpy shape, kind); kind is "matrix" (written
    in the model's weight type), "norm" (F32 ones) or "router" (the F32 expert gate)."""
    n_embd_kv = spec.n_embd // spec.n_head * spec.n_head_kv
    tensors: list[tuple[str, tuple[int, ...], str]] = [("token_embd.weight", (n_vocab, spec.n_embd), "matrix")]
    for layer in range(spec.n_layer):
        p = f"blk.{layer}."
        tensors += [
            (p + "attn_norm.weight", (spec.n_embd,), "norm"),
            (p + "attn_q.weight", (spec.n_embd, spec.n_embd), "matrix"),
            (p + "attn_k.weight", (n_embd_kv, spec.n_embd), "matrix"),
            (p + "attn_v.weight", (n_embd_kv, spec.n_embd), "matrix"),
            (p + "attn_output.weight", (spec.n_embd, spec.n_embd), "matrix"),
            (p + "ffn_norm.weight", (spec.n_embd,), "norm"),
            (p + "ffn_gate_inp.weight", (spec.n_expert, spec.n_embd), "router"),
        ]
        if spec.legacy_experts:
            for expert in range(spec.n_expert):
                tensors += [
                    (p + f"ffn_gate.{expert}.weight", (spec.n_ff, spec.n_embd), "matrix"),
                    (p + f"ffn_down.{expert}.weight", (spec.n_embd, spec.n_ff), "matrix"),
                    (p + f"ffn_up.{expert}.weight", (spec.n_ff, spec.n_embd), "matrix"),
                ]
        else:
            tensors += [
                (p + "ffn_gate_exps.weight", (spec.n_expert, spec.n_ff, spec.n_embd), "matrix"),
                (p + "ffn_down_exps.weight", (spec.n_expert, spec.n_embd, spec.n_ff), "matrix"),
                (p + "ffn_up_exps.weight", (spec.n_expert, spec.n_ff, spec.n_embd), "matrix"),
            ]
    tensors += [("output_norm.weight", (spec.n_embd,), "norm"), ("output.weight", (n_vocab, spec.n_embd), "matrix")]
    return tensors


def write_metadata(writer: Any, spec: TinyMixtralSpec, vocab: Any, file_type: int) -> None:
    """The Mixtral hyperparameters and Mistral's tokenizer, as llama.cpp's converter writes them."""
    head_dim = spec.n_embd // spec.n_head
    writer.add_name(spec.display_name)
    writer.add_context_length(spec.n_ctx_train)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(spec.rope_freq_base)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_expert_count(spec.n_expert)
    writer.add_expert_used_count(spec.n_expert_used)
    writer.add_vocab_size(len(vocab.pieces))
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocab.pieces)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_unk_token_id(vocab.unk_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def write_f16(spec: TinyMixtralSpec, path: Path, split_max_tensors: int = 0) -> Path:
    """Write the model described by ``spec`` to ``path`` (atomically) and return the path.

    With ``split_max_tensors`` the model is written as parts of at most that many tensors, named
    ``STEM-0000k-of-0000n.gguf`` beside ``path``; the first part's path is returned.
    """
    import gguf

    vocab = read_sentencepiece_vocab(mistral_tokenizer_path(spec.tokenizer))
    rng = np.random.default_rng(spec.seed)

    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).astype(np.float16) if spec.pooled_random else None

    def random_f16(shape: tuple[int, ...]) -> np.ndarray:
        if pool is None:
            return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
        count = int(np.prod(shape))
        start = int(rng.integers(0, pool.size))
        return np.resize(np.roll(pool, -start), count).reshape(shape)

    zero_type = gguf.GGMLQuantizationType[spec.zero_weights_type or "F16"]
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=path.parent))
    writer = gguf.GGUFWriter(str(staging / path.name), spec.architecture, split_max_tensors=split_max_tensors)
    write_metadata(writer, spec, vocab, 1 if spec.zero_weights_type is None else 2)  # MOSTLY_F16 / MOSTLY_Q4_0
    for name, shape, kind in tensor_layout(spec, len(vocab.pieces)):
        if kind == "norm":
            writer.add_tensor(name, np.ones(shape, dtype=np.float32))
        elif kind == "router":
            writer.add_tensor(name, (rng.standard_normal(shape) * 0.5).astype(np.float32))
        elif spec.zero_weights_type is None:
            writer.add_tensor(name, random_f16(shape))
        else:
            zeros = np.zeros(gguf.quant_shape_to_byte_shape(shape, zero_type), dtype=np.uint8)
            writer.add_tensor(name, zeros, raw_dtype=zero_type)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    written = sorted(staging.glob("*.gguf"))
    for part in written:
        part.replace(path.parent / part.name)
    staging.rmdir()
    return path.parent / written[0].name


def build_tiny(
    out_dir: Path,
    tokenizer: str = "v1",
    quants: tuple[str, ...] | list[str] = DEFAULT_QUANTS,
    spec: TinyMixtralSpec | None = None,
) -> dict[str, Path]:
    """Write the F16 tiny model and its quantized copies; existing files are reused.

    Returns a mapping from level (``F16``, ``Q4_K_M``, ...) to file path.
    """
    spec = replace(spec or TinyMixtralSpec(), tokenizer=tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = f16_path(out_dir, spec)
    if not src.exists():
        write_f16(spec, src)
    files = {"F16": src}
    for quant in quants:
        dst = quant_path(out_dir, spec, quant)
        if not dst.exists():
            quantize(src, dst, quant)
        files[quant] = dst
    return files


def mixtral_shaped_models(folder: Path, layers: Sequence[int] = (1, 2)) -> dict[int, Path]:
    """Full-width 8x7B-shaped models (4096 wide, 8 experts of 14336, 32/8 heads) with few layers, Q4_K."""
    models = {}
    for count in layers:
        path = folder / f"mixtral-8x7b-shaped-{count}layer-Q4_K.gguf"
        if not path.exists():
            spec = TinyMixtralSpec(
                n_layer=count,
                n_embd=4096,
                n_ff=14336,
                n_head=32,
                n_head_kv=8,
                zero_weights_type="Q4_K",
                name=f"Mixtral-8x7B-shaped-{count}",
            )
            write_f16(spec, path)
        models[count] = path
    return models
