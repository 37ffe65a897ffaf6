"""The engine host on real llama.cpp: loading every quantization, streaming, cancel, prefix reuse, sampling,
continuous batching, and failures that stay with their own request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.errors import DeskError, NoModelError, PromptFormatError
from app.core.prompts import FORMAT_PLAIN, Message
from app.core.runtime.decoding import StopStringFilter, TokenTextDecoder
from app.core.runtime.host import EngineHost
from app.core.runtime.types import (
    STOP_CANCELLED,
    STOP_CONTEXT_FULL,
    STOP_EOS,
    STOP_MAX_TOKENS,
    STOP_STRING,
    GenerationRequest,
    LoadSettings,
    SamplingSettings,
)
from quant.tiny import DEFAULT_QUANTS

M = Message
GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0, max_new_tokens=24)


@pytest.fixture(scope="module")
def tiny_engine(tiny_v1: dict[str, Path]) -> Iterator[EngineHost]:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_K_M"]), n_ctx=512, seed=7))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def demo_engine(demo_model: Path) -> Iterator[EngineHost]:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(demo_model), n_ctx=1024, n_parallel=4))
    yield engine
    engine.close()


@pytest.mark.parametrize("level", ["F16", *DEFAULT_QUANTS])
def test_every_quantization_of_the_tiny_mixtral_loads_and_generates(
    tiny_v1: dict[str, Path], level: str, host: EngineHost
) -> None:
    engine = host
    info = engine.load(LoadSettings(model_path=str(tiny_v1[level]), n_ctx=256))
    assert (info.expert_count, info.expert_used_count, info.n_vocab) == (8, 2, 32000)
    generation = engine.generate(GenerationRequest((M("user", "Hello"),), GREEDY))
    deltas = list(generation)
    assert generation.stats is not None
    assert generation.stats.generated_tokens == GREEDY.max_new_tokens
    assert generation.stats.stop_reason == STOP_MAX_TOKENS
    assert "".join(deltas) == generation.text


def test_demo_model_answers_a_question_end_to_end(demo_engine: EngineHost) -> None:
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


def test_text_streams_in_rounds_while_the_reply_runs(tiny_engine: EngineHost) -> None:
    # the tiny model makes a token in about 1-3 ms, well inside one 15 ms flush round even on a busy machine
    sampling = SamplingSettings(temperature=0.0, repeat_penalty=1.0, max_new_tokens=400, ignore_eos=True)
    generation = tiny_engine.generate(GenerationRequest((M("user", "Tell me a story."),), sampling))
    stream = iter(generation)
    deltas = [next(stream)]  # the first token's text comes at once...
    still_running_at_first = not generation.finished.is_set()
    deltas.append(next(stream))  # ...and later text in rounds, long before 400 tokens are done
    still_running_at_second = not generation.finished.is_set()
    deltas += list(stream)
    assert still_running_at_first and still_running_at_second
    assert "".join(deltas) == generation.text
    assert generation.stats is not None and generation.stats.generated_tokens == 400
    assert 3 <= len(deltas) < 200  # several tokens per delta: consumers are not woken for every token


def test_cancel_from_another_thread_stops_within_one_token(tiny_engine: EngineHost) -> None:
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
    generation.cancel()  # from the test thread while the consumer holds the first token
    at_cancel = generation.tokens_generated
    may_continue.set()
    worker.join(30)
    assert not worker.is_alive() and "error" not in result
    assert generation.stats is not None and generation.stats.stop_reason == STOP_CANCELLED
    assert generation.tokens_generated - at_cancel <= 1


def test_cancel_during_prompt_evaluation_stops_before_any_token(tiny_v1: dict[str, Path], host: EngineHost) -> None:
    engine = host
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=2048, n_batch=32))
    generation = engine.generate(GenerationRequest((M("user", "word " * 800),), GREEDY))
    generation.cancel()
    assert list(generation) == []
    assert generation.stats is not None and generation.stats.stop_reason == STOP_CANCELLED
    assert generation.stats.prompt_tokens_evaluated == 0


def test_second_turn_evaluates_only_the_new_tokens(demo_engine: EngineHost) -> None:
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


def test_regenerating_the_same_prompt_evaluates_one_token(tiny_engine: EngineHost) -> None:
    request = GenerationRequest((M("user", "Same question"),), GREEDY)
    tiny_engine.generate(request).run_to_end()
    again = tiny_engine.generate(request)
    again.run_to_end()
    assert again.stats is not None and again.stats.prompt_tokens_evaluated <= 1


def test_same_seed_same_reply_and_greedy_is_deterministic(tiny_engine: EngineHost) -> None:
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


def test_stop_string_ends_the_reply_before_it(tiny_engine: EngineHost) -> None:
    full = tiny_engine.generate(GenerationRequest((M("user", "Stop me"),), GREEDY)).run_to_end()
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    cut = tiny_engine.generate(
        GenerationRequest((M("user", "Stop me"),), SamplingSettings(**{**GREEDY.to_json(), "stop": (stop,)}))
    )
    text = cut.run_to_end()
    assert text == full[: full.index(stop)].lstrip()
    assert cut.stats is not None and cut.stats.stop_reason == STOP_STRING


def test_generation_stops_honestly_when_the_context_is_full(tiny_v1: dict[str, Path], host: EngineHost) -> None:
    engine = host
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=128))
    generation = engine.generate(GenerationRequest((M("user", "Go on"),), SamplingSettings(max_new_tokens=0)))
    generation.run_to_end()
    assert generation.stats is not None
    assert generation.stats.stop_reason in (STOP_CONTEXT_FULL, STOP_EOS)
    if generation.stats.stop_reason == STOP_CONTEXT_FULL:
        assert generation.stats.context_used == generation.stats.context_size


def test_plain_text_mode_continues_the_text(tiny_v1: dict[str, Path], host: EngineHost) -> None:
    engine = host
    engine.load(LoadSettings(model_path=str(tiny_v1["Q8_0"]), n_ctx=256, chat_format=FORMAT_PLAIN))
    generation = engine.generate(GenerationRequest((M("user", "Once upon a time"),), GREEDY))
    generation.run_to_end()
    assert generation.prompt is not None
    assert list(generation.prompt.tokens) == [1, *engine.tokenize("Once upon a time")]


def test_generating_without_a_model_says_so(host: EngineHost) -> None:
    with pytest.raises(NoModelError):
        host.generate(GenerationRequest((M("user", "x"),))).run_to_end()


def test_quantized_kv_cache_without_flash_attention_is_refused(tiny_v1: dict[str, Path], host: EngineHost) -> None:
    with pytest.raises(DeskError, match="flash attention"):
        host.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), kv_type="q8_0", flash_attn=False))


def test_quantized_kv_cache_with_flash_attention_generates(tiny_v1: dict[str, Path], host: EngineHost) -> None:
    engine = host
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=256, kv_type="q8_0", flash_attn=True))
    assert engine.generate(GenerationRequest((M("user", "kv"),), GREEDY)).run_to_end()


def test_text_decoder_never_splits_a_utf8_character(tiny_engine: EngineHost) -> None:
    text = "𓀀 ꙮ ᚠ 日本語 🙂 façade"  # the first three are not in the vocabulary: one token per byte
    tokens = tiny_engine.tokenize(text)
    pieces = tiny_engine.with_model(lambda loaded: [loaded.vocab.token_bytes(t) for t in tokens])
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


# -- continuous batching, shared model, failures that stay with their request ----------------------------


def _greedy_request(text: str, tokens: int = 32) -> GenerationRequest:
    return GenerationRequest(
        (M("user", text),), SamplingSettings(temperature=0.0, repeat_penalty=1.0, max_new_tokens=tokens)
    )


def test_concurrent_streams_are_decoded_together_and_each_finishes(demo_engine: EngineHost) -> None:
    demo_engine.clear_cache()
    tickets = [demo_engine.generate(_greedy_request(f"Tell me about the number {n}.", 24)) for n in range(4)]
    order: list[int] = []

    def read(index: int) -> None:
        for _ in tickets[index]:
            order.append(index)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(60)
    assert all(t.stats is not None and t.error is None for t in tickets)
    # interleaved: every stream produced text before any other stream finished
    first_seen = {i: order.index(i) for i in range(4)}
    last_seen = {i: len(order) - 1 - order[::-1].index(i) for i in range(4)}
    assert max(first_seen.values()) < min(last_seen.values())


def test_greedy_reply_is_the_same_alone_and_beside_three_others(demo_engine: EngineHost) -> None:
    request = _greedy_request("Name three fruits and their colours.", 40)
    demo_engine.clear_cache()
    alone = demo_engine.generate(request).run_to_end()
    demo_engine.clear_cache()
    others = [demo_engine.generate(_greedy_request(f"Write a line about {w}.", 40)) for w in ("rain", "cats", "maps")]
    together = demo_engine.generate(request)
    assert together.run_to_end() == alone
    for other in others:
        other.run_to_end()
    assert together.stats is not None and together.stats.generated_tokens > 10


def test_cancelling_one_of_four_streams_leaves_the_others_untouched(demo_engine: EngineHost) -> None:
    requests = [_greedy_request(f"Count slowly from {n} upwards.", 48) for n in (1, 20, 300, 4000)]
    demo_engine.clear_cache()
    expected = [demo_engine.generate(r).run_to_end() for r in requests]
    demo_engine.clear_cache()
    tickets = [demo_engine.generate(r) for r in requests]
    victim = tickets[1]
    next(iter(victim))  # it is running
    victim.cancel()
    at_cancel = victim.tokens_generated
    victim.run_to_end()
    assert victim.stats is not None and victim.stats.stop_reason == STOP_CANCELLED
    assert victim.tokens_generated - at_cancel <= 1
    for index in (0, 2, 3):
        assert tickets[index].run_to_end() == expected[index]
        assert tickets[index].stats is not None and tickets[index].stats.stop_reason in (STOP_MAX_TOKENS, STOP_EOS)


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ((M("user", "broken \ud83d emoji"),), PromptFormatError),  # a lone UTF-16 surrogate
        ((), PromptFormatError),  # nothing to answer
    ],
)
def test_a_failing_request_fails_alone_and_the_host_keeps_serving(
    demo_engine: EngineHost, messages: tuple[Message, ...], error: type[Exception]
) -> None:
    running = demo_engine.generate(_greedy_request("Say something long about the sea.", 48))
    bad = demo_engine.generate(GenerationRequest(messages))
    with pytest.raises(error) as raised:
        bad.run_to_end()
    assert str(raised.value)  # a sentence for the user
    running.run_to_end()
    assert running.error is None and running.stats is not None
    after = demo_engine.generate(_greedy_request("What is the capital of France?", 12))
    assert after.run_to_end()
    health = demo_engine.health()
    assert health.alive and not health.busy and health.model


def test_an_empty_plain_prompt_is_refused_with_a_reason(demo_engine: EngineHost) -> None:
    ticket = demo_engine.generate(GenerationRequest((M("user", ""),), chat_format=FORMAT_PLAIN))
    with pytest.raises(PromptFormatError, match="empty"):
        ticket.run_to_end()


def test_health_reports_running_and_waiting_requests(tiny_v1: dict[str, Path], host: EngineHost) -> None:
    host.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=256, n_parallel=1))
    endless = SamplingSettings(temperature=1.0, max_new_tokens=0, ignore_eos=True)
    first = host.generate(GenerationRequest((M("user", "one"),), endless))
    second = host.generate(GenerationRequest((M("user", "two"),), endless))
    next(iter(first))
    health = host.health()
    assert health.alive and health.active == 1 and health.queued == 1 and health.busy
    first.cancel()
    next(iter(second))  # the waiting request starts when the sequence frees up
    second.cancel()
    second.run_to_end()
    assert second.stats is not None and second.stats.stop_reason == STOP_CANCELLED
    assert host.health().active == 0


def test_a_queued_request_cancelled_while_every_sequence_is_busy_ends_at_once(
    tiny_v1: dict[str, Path], host: EngineHost
) -> None:
    host.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=256, n_parallel=1))
    endless = SamplingSettings(temperature=1.0, max_new_tokens=0, ignore_eos=True)
    running = host.generate(GenerationRequest((M("user", "one"),), endless))
    queued = host.generate(GenerationRequest((M("user", "two"),), endless))
    next(iter(running))
    queued.cancel()
    assert queued.wait(30) and not running.finished.is_set()  # it did not wait for the running reply
    assert queued.stats is not None and queued.stats.stop_reason == STOP_CANCELLED
    assert queued.tokens_generated == 0 and queued.stats.prompt_tokens_evaluated == 0
    running.cancel()
    running.run_to_end()


def test_a_continued_text_moves_next_to_the_running_replies_and_answers_the_same(
    demo_model: Path, host: EngineHost
) -> None:
    host.load(LoadSettings(model_path=str(demo_model), n_ctx=512, n_parallel=4))
    moves: list[tuple[int, int]] = []
    context = host.with_model(lambda loaded: loaded.context)
    move = context.move_sequence
    context.move_sequence = lambda source, target: (moves.append((source, target)), move(source, target))[1]

    def text(words: str) -> tuple[int, ...]:
        return tuple(host.tokenize(words))

    def plain(tokens: tuple[int, ...], sampling: SamplingSettings = GREEDY) -> GenerationRequest:
        return GenerationRequest((), sampling, chat_format=FORMAT_PLAIN, prompt_tokens=tokens)

    story = text("Once upon a time, in a small village by the sea, there lived")
    expected = host.generate(plain(story)).run_to_end()  # its cache: sequence 0
    host.generate(plain(text("Photosynthesis is the process by which"))).run_to_end()  # sequence 1
    host.generate(plain(text("import numpy as np"))).run_to_end()  # sequence 2
    endless = SamplingSettings(temperature=1.0, max_new_tokens=0, ignore_eos=True)
    running = host.generate(plain(text("Count: one, two, three,"), endless))  # sequence 3
    next(iter(running))
    again = host.generate(plain(story))  # continues sequence 0, which is not next to 3
    assert again.run_to_end() == expected
    assert moves == [(0, 2)]  # its cache was copied next to the running reply, not evaluated again
    assert again.stats is not None and again.stats.prompt_tokens_cached == len(story) - 1
    running.cancel()
    running.run_to_end()


def test_a_long_prompt_is_prefilled_in_chunks_while_another_stream_decodes(demo_model: Path, host: EngineHost) -> None:
    host.load(LoadSettings(model_path=str(demo_model), n_ctx=2048, n_batch=64, n_parallel=2))
    short = host.generate(_greedy_request("Hi!", 64))
    next(iter(short))
    long = host.generate(_greedy_request("Summarise: " + "the tide comes in and goes out again. " * 60, 8))
    produced_while_prefilling = 0
    progress = []  # the long prompt's (evaluated, total) as the short reply streams
    while not long.token_ids and not long.finished.is_set():
        if short.next_delta(30) is None:
            break
        produced_while_prefilling += 1
        progress.append((long.prompt_done, long.prompt_total))
    long.run_to_end()
    short.run_to_end()
    assert long.stats is not None and long.stats.prompt_tokens > 5 * 64
    assert produced_while_prefilling >= 3  # the short reply kept streaming during the long prefill
    assert (long.prompt_done, long.prompt_total) == (long.stats.prompt_tokens, long.stats.prompt_tokens)
    done = [d for d, total in progress if total]
    assert done == sorted(done) and any(0 < d < long.stats.prompt_tokens for d in done)  # progress, in steps


def test_an_api_style_client_resending_a_growing_conversation_reuses_its_prefix(demo_engine: EngineHost) -> None:
    demo_engine.clear_cache()
    history = [M("user", "Give me a word.")]
    first = demo_engine.generate(GenerationRequest(tuple(history), GREEDY))
    first.run_to_end()
    other = demo_engine.generate(_greedy_request("An unrelated question in between?", 16))  # another client
    other.run_to_end()
    history += [M("assistant", first.text), M("user", "Another one.")]
    second = demo_engine.generate(GenerationRequest(tuple(history), GREEDY))
    second.run_to_end()
    assert second.stats is not None and first.stats is not None
    assert second.stats.prompt_tokens_cached >= first.stats.prompt_tokens - 1
    assert second.stats.prompt_tokens_evaluated < second.stats.prompt_tokens // 2


def test_load_can_be_cancelled(tiny_v1: dict[str, Path], host: EngineHost) -> None:
    from app.core.runtime.loading import LoadCancelled

    future = host.load_async(LoadSettings(model_path=str(tiny_v1["F16"]), n_ctx=256))
    host.cancel_load()
    try:
        future.result(60)
    except LoadCancelled:
        assert host.info is None
    else:  # it finished before llama.cpp reported progress: then it is simply loaded
        assert host.info is not None
