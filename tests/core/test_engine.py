"""The runner on real llama.cpp: loading every quantization, streaming, cancel, prefix reuse, sampling."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app.core.engine import (
    STOP_CANCELLED,
    STOP_CONTEXT_FULL,
    STOP_EOS,
    STOP_MAX_TOKENS,
    STOP_STRING,
    Engine,
    GenerationRequest,
    LoadSettings,
    SamplingSettings,
    StopStringFilter,
    TokenTextDecoder,
)
from app.core.errors import DeskError, EngineBusyError, NoModelError
from app.core.prompts import FORMAT_PLAIN, Message
from quant.tiny import DEFAULT_QUANTS

M = Message
GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0, max_new_tokens=24)


@pytest.fixture(scope="module")
def tiny_engine(tiny_v1: dict[str, Path]) -> Engine:
    engine = Engine()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_K_M"]), n_ctx=512, seed=7))
    return engine


@pytest.fixture(scope="module")
def demo_engine(demo_model: Path) -> Engine:
    engine = Engine()
    engine.load(LoadSettings(model_path=str(demo_model), n_ctx=2048))
    return engine


@pytest.mark.parametrize("level", ["F16", *DEFAULT_QUANTS])
def test_every_quantization_of_the_tiny_mixtral_loads_and_generates(tiny_v1: dict[str, Path], level: str) -> None:
    engine = Engine()
    info = engine.load(LoadSettings(model_path=str(tiny_v1[level]), n_ctx=256))
    assert (info.expert_count, info.expert_used_count, info.n_vocab) == (8, 2, 32000)
    generation = engine.generate(GenerationRequest((M("user", "Hello"),), GREEDY))
    deltas = list(generation)
    assert generation.stats is not None
    assert generation.stats.generated_tokens == GREEDY.max_new_tokens
    assert generation.stats.stop_reason == STOP_MAX_TOKENS
    assert "".join(deltas) == generation.text


def test_demo_model_answers_a_question_end_to_end(demo_engine: Engine) -> None:
    question = M("user", "What is the capital city of France? Answer in one word.")
    generation = demo_engine.generate(
        GenerationRequest((question,), SamplingSettings(temperature=0, repeat_penalty=1.0))
    )
    reply = generation.run_to_end()
    assert "Paris" in reply
    stats = generation.stats
    assert stats is not None and stats.stop_reason == STOP_EOS
    assert stats.prompt_tokens == len(demo_engine.prompt_tokens([question]))
    assert stats.time_to_first_token_s > 0 and stats.generation_tokens_per_s > 0
    assert stats.context_used == stats.prompt_tokens + stats.generated_tokens


def test_stream_yields_many_deltas_before_the_end(tiny_engine: Engine) -> None:
    generation = tiny_engine.generate(GenerationRequest((M("user", "Go"),), GREEDY))
    seen_stats_while_streaming = []
    deltas = []
    for delta in generation:
        deltas.append(delta)
        seen_stats_while_streaming.append(generation.stats)
    assert len(deltas) > 5
    assert all(stats is None for stats in seen_stats_while_streaming)  # stats arrive only at the end


def test_cancel_from_another_thread_stops_within_one_token(tiny_engine: Engine) -> None:
    generation = tiny_engine.generate(
        GenerationRequest((M("user", "Write forever"),), SamplingSettings(max_new_tokens=0, temperature=1.0))
    )
    first_delta = threading.Event()
    may_continue = threading.Event()
    result: dict[str, object] = {}

    def consume() -> None:
        try:
            for _ in generation:
                if not first_delta.is_set():
                    first_delta.set()
                    may_continue.wait(10)
        except Exception as err:  # pragma: no cover - surfaced by the assertion below
            result["error"] = err

    worker = threading.Thread(target=consume)
    worker.start()
    assert first_delta.wait(30)
    tiny_engine.cancel()  # from the test thread while the consumer holds the first token
    at_cancel = generation.tokens_generated
    may_continue.set()
    worker.join(30)
    assert not worker.is_alive() and "error" not in result
    assert generation.stats is not None and generation.stats.stop_reason == STOP_CANCELLED
    assert generation.tokens_generated - at_cancel <= 1


def test_cancel_during_prompt_evaluation_stops_before_any_token(tiny_v1: dict[str, Path]) -> None:
    engine = Engine()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=2048, n_batch=32))
    generation = engine.generate(GenerationRequest((M("user", "word " * 800),), GREEDY))
    generation.cancel()
    assert list(generation) == []
    assert generation.stats is not None and generation.stats.stop_reason == STOP_CANCELLED
    assert generation.stats.prompt_tokens_evaluated == 0


def test_second_turn_evaluates_only_the_new_tokens(demo_engine: Engine) -> None:
    turn1 = [M("system", "You are brief."), M("user", "Name a colour."), M("assistant", "Blue."), M("user", "Another?")]
    first = demo_engine.generate(GenerationRequest(tuple(turn1), GREEDY))
    first.run_to_end()
    turn2 = [*turn1, M("assistant", first.text), M("user", "And a third one?")]
    second = demo_engine.generate(GenerationRequest(tuple(turn2), GREEDY))
    second.run_to_end()
    tokens1, tokens2 = demo_engine.prompt_tokens(turn1), demo_engine.prompt_tokens(turn2)
    stats = second.stats
    assert stats is not None and first.stats is not None
    assert first.stats.prompt_tokens == len(tokens1)
    assert stats.prompt_tokens == len(tokens2)
    assert stats.prompt_tokens_cached >= len(tokens1)
    assert stats.prompt_tokens_evaluated == len(tokens2) - stats.prompt_tokens_cached
    assert stats.prompt_tokens_evaluated <= len(tokens2) - len(tokens1)


def test_regenerating_the_same_prompt_evaluates_one_token(tiny_engine: Engine) -> None:
    request = GenerationRequest((M("user", "Same question"),), GREEDY)
    tiny_engine.generate(request).run_to_end()
    again = tiny_engine.generate(request)
    again.run_to_end()
    assert again.stats is not None and again.stats.prompt_tokens_evaluated <= 1


def test_same_seed_same_reply_and_greedy_is_deterministic(tiny_engine: Engine) -> None:
    def reply(sampling: SamplingSettings) -> str:
        return tiny_engine.generate(GenerationRequest((M("user", "Seeded"),), sampling)).run_to_end()

    hot = SamplingSettings(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, max_new_tokens=24)
    assert reply(SamplingSettings(**{**hot.to_json(), "seed": 11})) == reply(
        SamplingSettings(**{**hot.to_json(), "seed": 11})
    )
    assert reply(SamplingSettings(**{**hot.to_json(), "seed": 11})) != reply(
        SamplingSettings(**{**hot.to_json(), "seed": 12})
    )
    assert reply(GREEDY) == reply(GREEDY)


def test_stop_string_ends_the_reply_before_it(tiny_engine: Engine) -> None:
    full = tiny_engine.generate(GenerationRequest((M("user", "Stop me"),), GREEDY)).run_to_end()
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    cut = tiny_engine.generate(
        GenerationRequest((M("user", "Stop me"),), SamplingSettings(**{**GREEDY.to_json(), "stop": (stop,)}))
    )
    text = cut.run_to_end()
    assert text == full[: full.index(stop)].lstrip()
    assert cut.stats is not None and cut.stats.stop_reason == STOP_STRING


def test_generation_stops_honestly_when_the_context_is_full(tiny_v1: dict[str, Path]) -> None:
    engine = Engine()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=128))
    generation = engine.generate(GenerationRequest((M("user", "Go on"),), SamplingSettings(max_new_tokens=0)))
    generation.run_to_end()
    assert generation.stats is not None
    assert generation.stats.stop_reason in (STOP_CONTEXT_FULL, STOP_EOS)
    if generation.stats.stop_reason == STOP_CONTEXT_FULL:
        assert generation.stats.context_used == generation.stats.context_size


def test_plain_text_mode_continues_the_text(tiny_v1: dict[str, Path]) -> None:
    engine = Engine()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q8_0"]), n_ctx=256, chat_format=FORMAT_PLAIN))
    generation = engine.generate(GenerationRequest((M("user", "Once upon a time"),), GREEDY))
    generation.run_to_end()
    assert generation.prompt is not None
    assert list(generation.prompt.tokens) == [1, *engine.vocab.encode("Once upon a time", special=False)]


def test_a_second_concurrent_request_is_refused(tiny_engine: Engine) -> None:
    first = iter(tiny_engine.generate(GenerationRequest((M("user", "one"),), GREEDY)))
    next(first)
    with pytest.raises(EngineBusyError):
        next(iter(tiny_engine.generate(GenerationRequest((M("user", "two"),), GREEDY))))
    for _ in first:
        pass


def test_generating_without_a_model_says_so() -> None:
    with pytest.raises(NoModelError):
        Engine().generate(GenerationRequest((M("user", "x"),))).run_to_end()


def test_quantized_kv_cache_without_flash_attention_is_refused(tiny_v1: dict[str, Path]) -> None:
    with pytest.raises(DeskError, match="flash attention"):
        Engine().load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), kv_type="q8_0"))


def test_quantized_kv_cache_with_flash_attention_generates(tiny_v1: dict[str, Path]) -> None:
    engine = Engine()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=256, kv_type="q8_0", flash_attn=True))
    assert engine.generate(GenerationRequest((M("user", "kv"),), GREEDY)).run_to_end()


def test_text_decoder_never_splits_a_utf8_character(tiny_engine: Engine) -> None:
    text = "𓀀 ꙮ ᚠ 日本語 🙂 façade"  # the first three are not in the vocabulary: one token per byte
    tokens = tiny_engine.vocab.encode(text, special=False)
    pieces = [tiny_engine.vocab.token_bytes(t) for t in tokens]
    assert any(len(p) == 1 and p[0] >= 0x80 for p in pieces), "expected byte-fallback tokens"
    decoder = TokenTextDecoder()
    deltas = [decoder.decode(piece) for piece in pieces] + [decoder.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas).strip() == text


@pytest.mark.parametrize(
    ("chunks", "stops", "shown", "stopped"),
    [
        (["Hello", " wor", "ld"], ["world"], "Hello ", True),
        (["a<", "/s", ">b"], ["</s>"], "a", True),
        (["a<", "b"], ["</s>"], "a<b", False),
        (["plain"], [], "plain", False),
    ],
)
def test_stop_string_filter(chunks: list[str], stops: list[str], shown: str, stopped: bool) -> None:
    stop_filter = StopStringFilter(stops)
    out, hit = "", False
    for chunk in chunks:
        text, hit = stop_filter.push(chunk)
        out += text
        if hit:
            break
    if not hit:
        out += stop_filter.flush()
    assert (out, hit) == (shown, stopped)
