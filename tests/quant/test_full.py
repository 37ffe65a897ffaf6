"""Shape-true full-size Mixtral files: real shapes and llama.cpp's own per-tensor types, data a sparse hole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.core.models.gguf import read_model
from app.core.planning.planner import ModelShape
from app.core.runtime import llama_log
from app.core.runtime.native import NativeModel
from models_manifest import load_catalog
from quant.full import computed_catalog_sizes, quantizer_types, write_full, write_sparse
from quant.tiny import TinyMixtralSpec

# mradermacher/Mixtral-8x7B-Instruct-v0.1-GGUF, Q4_K_M: the published file size
PUBLIC_8X7B_Q4_K_M_BYTES = 28_448_468_384


def test_a_full_size_8x7b_q4_k_m_is_as_big_as_the_published_file_and_costs_no_disk(tmp_path: Path) -> None:
    full = write_full("8x7b", "Q4_K_M", tmp_path)
    assert full.apparent_bytes == pytest.approx(PUBLIC_8X7B_Q4_K_M_BYTES, rel=1e-4)
    assert full.disk_bytes < 4 * 2**20  # the header and vocabulary only
    model = read_model(full.path)
    shape = ModelShape.from_gguf(model, full.path.name)
    assert (shape.n_layer, shape.n_embd, shape.n_ff, shape.n_expert, shape.n_vocab) == (32, 4096, 14336, 8, 32000)
    types = {t.name: t.type_name for t in model.tensors}
    # the choices of llama.cpp's own quantizer for 8-expert models, not a uniform Q4_K
    assert types["blk.0.ffn_gate_exps.weight"] == "Q4_K" and types["blk.0.attn_v.weight"] in ("Q6_K", "Q8_0")
    assert types["blk.0.ffn_norm.weight"] == "F32" and types["blk.0.ffn_gate_inp.weight"] == "F32"


@pytest.mark.parametrize(("model", "instruct", "layers"), [("8x7b", False, 32), ("8x22b", True, 56)])
def test_llama_cpp_accepts_the_full_size_files(tmp_path: Path, model: str, instruct: bool, layers: int) -> None:
    full = write_full(model, "Q2_K", tmp_path, instruct=instruct)
    with llama_log.capture() as lines:
        native = NativeModel(str(full.path), n_gpu_layers=0, no_alloc=True)  # checks every tensor's name and shape
    try:
        assert native.n_layer == layers and native.metadata["llama.expert_count"] == "8"
        assert native.vocab.size == (32768 if instruct else 32000)
        reported = [line.split("=")[-1].strip() for line in lines if "model type" in line]
        assert reported == [model.upper().replace("X", "x")]  # llama.cpp recognises 8x7B / 8x22B
    finally:
        native.close()


def test_types_come_from_llama_cpps_dry_run(tmp_path: Path) -> None:
    spec = TinyMixtralSpec(n_layer=2, n_embd=256, n_ff=512)
    f16 = write_sparse(spec, tmp_path / "f16.gguf", {}, 1)
    q2 = quantizer_types(f16, "Q2_K")
    q8 = quantizer_types(f16, "Q8_0")
    assert set(q2) == set(q8) == {t.name for t in read_model(f16).tensors}
    assert q8["blk.0.ffn_down_exps.weight"] == "Q8_0"
    assert q2["blk.0.ffn_down_exps.weight"] != q2["blk.0.attn_v.weight"]  # mixed types within one level


def test_the_sizes_command_prints_every_level_and_keeps_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quant", "full", "--model", "8x22b", "--quant", "Q2_K", "--sizes"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": ""},
    )
    assert "8x22b Q2_K" in result.stdout and "on disk" in result.stdout
    size = int(result.stdout.split()[2].replace(",", ""))
    assert size == pytest.approx(18.6e9 + 18.5e9 + 15.0e9, rel=0.01)  # MaziyarPanahi's three Q2_K parts
    assert list(tmp_path.iterdir()) == []


def test_every_computed_catalog_size_is_what_llama_cpps_quantizer_gives_the_real_shape() -> None:
    computed = computed_catalog_sizes()
    catalog = {(m.id, q.quant): q for m in load_catalog() for q in m.quants}
    assert len(computed) >= 20  # every 8x7B and 8x22B level the catalog lists
    for key, size in computed.items():
        assert catalog[key].size == size, key  # run `python -m quant full --update-catalog` after a change
    instruct = catalog[("mixtral-8x7b-instruct", "Q4_K_M")]
    assert instruct.size == pytest.approx(PUBLIC_8X7B_Q4_K_M_BYTES, rel=1e-4)


@pytest.fixture(scope="module")
def too_big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8x22B Instruct at Q8_0: about 140 GB apparent, more RAM than any machine these tests run on."""
    return write_full("8x22b", "Q8_0", tmp_path_factory.mktemp("too-big"), instruct=True).path


def test_a_level_too_big_for_this_machine_is_refused_before_llama_cpp_is_asked(too_big: Path) -> None:
    from app.core.errors import ModelLoadError
    from app.core.runtime.host import EngineHost
    from app.core.runtime.types import LoadSettings

    host = EngineHost()
    try:
        with llama_log.capture() as lines, pytest.raises(ModelLoadError) as caught:
            host.load(LoadSettings(model_path=str(too_big), n_ctx=4096))
    finally:
        host.close()
    assert caught.value.reason == "out_of_memory"
    message = str(caught.value)
    assert message.startswith(f"{too_big.name} does not fit this machine: it needs 1")  # 1xx GiB
    assert "Choose a quantization whose file is under" in message
    assert not any("llama_model_loader" in line for line in lines)  # llama.cpp never opened the file


def test_the_console_chat_refuses_a_too_big_level_with_the_planners_advice(too_big: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "chat", "--model", str(too_big), "--prompt", "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "does not fit this machine" in result.stderr and "mixtral-desk models list" in result.stderr
