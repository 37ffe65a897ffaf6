"""The expert-routing trace on the tiny Mixtral: complete, deterministic, prompt-sensitive."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.errors import DeskError
from app.core.prompts import Message
from app.core.runtime.host import EngineHost
from app.core.runtime.routing import trace_routing
from app.core.runtime.types import LoadSettings


@pytest.fixture(scope="module")
def engine(tiny_v1: dict[str, Path]) -> EngineHost:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_K_M"]), n_ctx=512))
    return engine


def prompt(engine: EngineHost, text: str) -> list[int]:
    return engine.prompt_tokens([Message("user", text)])


def test_counts_add_up_and_prompt_and_reply_are_told_apart(engine: EngineHost) -> None:
    tokens = prompt(engine, "Which experts will you use?")
    trace = trace_routing(engine, tokens, generate=6)
    assert (trace.n_layer, trace.n_expert, trace.n_expert_used) == (2, 8, 2)
    assert sum(sum(row) for row in trace.counts) == len(trace.tokens) * 2 * trace.n_layer
    assert [t.in_prompt for t in trace.tokens] == [True] * len(tokens) + [False] * (len(trace.tokens) - len(tokens))
    assert [t.token for t in trace.tokens[: len(tokens)]] == tokens
    for route in trace.tokens:
        assert len(route.experts) == 2 and all(
            len(set(pair)) == 2 and all(0 <= e < 8 for e in pair) for pair in route.experts
        )
        assert all(w[0] >= w[1] > 0 for w in route.weights)  # the top expert first
    balance = trace.balance()
    assert all(0 < b.entropy_bits <= 3 and abs(sum(b.shares) - 1) < 1e-9 for b in balance)


def test_choices_are_deterministic_for_a_seed_and_change_with_the_prompt(engine: EngineHost) -> None:
    first = trace_routing(engine, prompt(engine, "Tell me about the sea."), generate=5, seed=42)
    again = trace_routing(engine, prompt(engine, "Tell me about the sea."), generate=5, seed=42)
    other = trace_routing(engine, prompt(engine, "Numbers: 1 2 3 4 5 6 7 8 9"), generate=5, seed=42)
    assert first.tokens == again.tokens
    assert first.counts != other.counts


def test_a_dense_model_has_no_router(demo_model: Path) -> None:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(demo_model), n_ctx=256))
    with pytest.raises(DeskError, match="not a mixture-of-experts"):
        trace_routing(engine, [1, 2, 3], generate=1)


def test_route_command_json_and_heatmap(tiny_v1: dict[str, Path], tmp_path: Path) -> None:
    png = tmp_path / "route.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "route",
            "--model",
            str(tiny_v1["Q4_0"]),
            "--prompt",
            "Hello",
            "--generate",
            "4",
            "--json",
            "--png",
            str(png),
            "--compare-speed",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert len(payload["balance"]) == 2 and payload["speed"]["without_tracing_tokens_per_s"] > 0
    assert png.stat().st_size > 3_000
