"""Context policy: rolling window drops whole old turns and says so; stop refuses; nothing is cut silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.context import POLICY_ROLLING, POLICY_STOP, fit_prompt, reply_reserve
from app.core.errors import ContextOverflowError
from app.core.prompts import Message, MistralV1Format
from app.core.runtime.host import EngineHost
from app.core.runtime.types import GenerationRequest, LoadSettings, SamplingSettings

M = Message


@pytest.fixture(scope="module")
def vocab(tiny_v1: dict[str, Path]):
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), vocab_only=True))
    return engine.with_model(lambda loaded: loaded.vocab)


def long_conversation(turns: int) -> list[Message]:
    messages = [M("system", "Keep this system prompt.")]
    for i in range(turns):
        messages += [
            M("user", f"Question number {i}: " + "words " * 20),
            M("assistant", f"Answer {i}: " + "more " * 20),
        ]
    messages.append(M("user", "The latest question must survive."))
    return messages


def test_a_conversation_that_fits_is_untouched(vocab) -> None:
    messages = long_conversation(2)
    fitted = fit_prompt(messages, MistralV1Format(), vocab, n_ctx=4096, reserve=256)
    assert fitted.kept == tuple(messages) and not fitted.dropped and fitted.describe_dropped() == ""


def test_rolling_window_drops_the_oldest_whole_turns(vocab) -> None:
    messages = long_conversation(10)
    full = len(MistralV1Format().encode(messages, vocab))
    fitted = fit_prompt(messages, MistralV1Format(), vocab, n_ctx=full // 2 + 64, reserve=64, policy=POLICY_ROLLING)
    assert len(fitted.tokens) <= fitted.budget
    assert fitted.kept[0] == messages[0]  # system prompt kept
    assert fitted.kept[-1] == messages[-1]  # latest user message kept
    assert fitted.dropped == tuple(messages[1 : 1 + len(fitted.dropped)])  # a prefix of the history
    assert len(fitted.dropped) % 2 == 0  # whole user+assistant turns
    assert fitted.kept[1].role == "user"
    assert f"oldest {len(fitted.dropped)} messages" in fitted.describe_dropped()


def test_stop_policy_refuses_with_the_numbers(vocab) -> None:
    messages = long_conversation(10)
    with pytest.raises(ContextOverflowError, match="rolling window") as caught:
        fit_prompt(messages, MistralV1Format(), vocab, n_ctx=512, reserve=128, policy=POLICY_STOP)
    assert caught.value.available == 384 and caught.value.needed > 384


def test_a_latest_message_that_cannot_fit_is_never_truncated(vocab) -> None:
    messages = [M("system", "sys"), M("user", "old"), M("assistant", "reply"), M("user", "huge " * 400)]
    with pytest.raises(ContextOverflowError, match="Nothing was cut"):
        fit_prompt(messages, MistralV1Format(), vocab, n_ctx=256, reserve=64)


def test_reply_reserve_is_capped_at_half_the_window() -> None:
    assert reply_reserve(4096, 512) == 512
    assert reply_reserve(1024, 4000) == 512
    assert reply_reserve(4096, 0) == 256


def test_the_engine_reports_what_it_dropped(tiny_v1: dict[str, Path]) -> None:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=512))
    messages = tuple(long_conversation(12))
    generation = engine.generate(GenerationRequest(messages, SamplingSettings(max_new_tokens=8)))
    generation.run_to_end()
    assert generation.prompt is not None and generation.stats is not None
    assert generation.prompt.dropped and generation.stats.dropped_messages == len(generation.prompt.dropped)
    assert generation.stats.prompt_tokens <= 512 - 8


def test_the_engine_stop_policy_raises_before_generating(tiny_v1: dict[str, Path]) -> None:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=512))
    request = GenerationRequest(tuple(long_conversation(12)), SamplingSettings(max_new_tokens=8), POLICY_STOP)
    with pytest.raises(ContextOverflowError):
        engine.generate(request).run_to_end()
