"""Requantization through llama.cpp and quality measurement against a reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.models.gguf import read_model
from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings
from quant.evaluate import evaluate
from quant.requantize import RequantizeError, requantize
from quant.tiny import TinyMixtralSpec, write_f16


def test_requantize_writes_a_loadable_file_and_reports_progress(tiny_v1: dict[str, Path], tmp_path: Path) -> None:
    progress: list[tuple[int, int]] = []
    out = requantize(
        tiny_v1["F16"], "q5_k_m", tmp_path / "m.Q5_K_M.gguf", on_progress=lambda d, t: progress.append((d, t))
    )
    assert out.exists() and progress[-1] == (23, 23)
    assert {t.type_name for t in read_model(out).tensors} >= {"Q5_K"}
    assert EngineHost().load(LoadSettings(model_path=str(out), n_ctx=256)).expert_count == 8


def test_default_output_name_sits_beside_the_source(tiny_v1: dict[str, Path], tmp_path: Path) -> None:
    source = tmp_path / "mixtral-tiny-F16.gguf"
    source.write_bytes(tiny_v1["F16"].read_bytes())
    assert requantize(source, "Q4_0").name == "mixtral-tiny.Q4_0.gguf"


@pytest.mark.parametrize(
    ("source", "target", "kwargs", "message"),
    [
        ("Q2_K", "Q8_0", {}, "Requantizing up adds size"),
        ("F16", "Q9_X", {}, "Unknown quantization"),
        ("F16", "Q4_0", {"free_space": lambda folder: 1000}, "Not enough disk space"),
    ],
)
def test_refusals_say_why(
    tiny_v1: dict[str, Path], tmp_path: Path, source: str, target: str, kwargs, message: str
) -> None:
    with pytest.raises(RequantizeError, match=message):
        requantize(tiny_v1[source], target, tmp_path / "out.gguf", **kwargs)
    assert not (tmp_path / "out.gguf").exists()


def test_an_existing_output_is_never_overwritten(tiny_v1: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "taken.gguf"
    out.write_text("precious")
    with pytest.raises(RequantizeError, match="already exists"):
        requantize(tiny_v1["F16"], "Q4_0", out)
    assert out.read_text() == "precious"


def test_a_split_input_becomes_one_file(tmp_path: Path) -> None:
    write_f16(TinyMixtralSpec(n_layer=2), tmp_path / "big.gguf", split_max_tensors=9)
    second_part = tmp_path / "big-00002-of-00003.gguf"
    out = requantize(second_part, "Q4_K_M", tmp_path / "big.Q4_K_M.gguf")
    model = read_model(out)
    assert len(model.parts) == 1 and len(model.tensors) == 23


def test_quality_orders_sensibly_along_the_ladder(tiny_v1: dict[str, Path]) -> None:
    results = {q: evaluate(tiny_v1[q], reference=tiny_v1["F16"]) for q in ("Q2_K", "Q4_K_M", "Q8_0")}
    kl = {q: r.mean_kl for q, r in results.items()}
    agree = {q: r.top1_agreement for q, r in results.items()}
    assert kl["Q2_K"] > kl["Q4_K_M"] > kl["Q8_0"] and kl["Q8_0"] < 1e-3
    assert agree["Q8_0"] > agree["Q4_K_M"] > agree["Q2_K"]
    assert all(r.tokens_scored > 200 and r.perplexity > 1 for r in results.values())


def test_the_reference_against_itself_agrees_completely(tiny_v1: dict[str, Path]) -> None:
    same = evaluate(tiny_v1["Q8_0"], reference=tiny_v1["Q8_0"])
    assert same.mean_kl == pytest.approx(0.0, abs=1e-4) and same.top1_agreement == 1.0


def test_perplexity_of_a_real_model_on_english_is_low(demo_model: Path) -> None:
    result = evaluate(demo_model)
    assert 5 < result.perplexity < 100  # a random model scores ~32000 here


def test_eval_command_prints_json(tiny_v1: dict[str, Path], tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "quant",
            "eval",
            "--model",
            str(tiny_v1["Q4_0"]),
            "--reference",
            str(tiny_v1["F16"]),
            "--text",
            str(text),
            "--ctx",
            "256",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload[0]["model"] == tiny_v1["Q4_0"].name and payload[0]["mean_kl"] > 0
    short = subprocess.run(
        [sys.executable, "-m", "quant", "eval", "--model", str(tiny_v1["Q4_0"]), "--text", str(text), "--ctx", "4096"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert short.returncode == 1 and "at least 4095 are needed" in short.stderr


@pytest.fixture(scope="session")
def mixtral_shaped_ladder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One full-width 8x7B-shaped layer (4096 wide, 8 experts of 14336, 32/8 heads) with random weights, and
    its Q2_K / Q4_0 / Q8_0 copies made by llama.cpp (a few minutes on two cores)."""
    folder = tmp_path_factory.mktemp("mixtral-shaped")
    spec = TinyMixtralSpec(
        n_layer=1,
        n_embd=4096,
        n_ff=14336,
        n_head=32,
        n_head_kv=8,
        pooled_random=True,
        name="Mixtral-8x7B-shaped-1layer",
    )
    source = write_f16(spec, folder / "shaped-F16.gguf")
    files = {"F16": source}
    for level in ("Q2_K", "Q4_0", "Q8_0"):
        files[level] = requantize(source, level, folder / f"shaped-{level}.gguf")
    return files


@pytest.mark.slow
def test_quality_orders_sensibly_on_a_full_width_mixtral_layer(mixtral_shaped_ladder: dict[str, Path]) -> None:
    from quant.evaluate import evaluate_many

    levels = ("Q2_K", "Q4_0", "Q8_0")
    results = dict(
        zip(
            levels,
            evaluate_many(
                [mixtral_shaped_ladder[q] for q in levels], reference=mixtral_shaped_ladder["F16"], n_ctx=256
            ),
            strict=True,
        )
    )
    kl = {q: r.mean_kl for q, r in results.items()}
    assert kl["Q2_K"] > kl["Q4_0"] > kl["Q8_0"] and kl["Q8_0"] < 0.05
    assert results["Q8_0"].top1_agreement > results["Q4_0"].top1_agreement > results["Q2_K"].top1_agreement
