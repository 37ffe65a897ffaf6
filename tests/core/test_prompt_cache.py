"""Prompts kept in RAM when their sequence is needed by another request, and copied back when they return;
requests admitted together each keep their own sequence's cache (real llama.cpp, the demo model)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.prompts import Message
from app.core.runtime.decoding import common_prefix_length
from app.core.runtime.host import EngineHost
from app.core.runtime.prompt_cache import (
    MAX_SAVED_PROMPTS,
    MIN_SAVED_TOKENS,
    PromptCache,
    auto_budget,
    worth_restoring,
)
from app.core.runtime.tickets import ReplyTicket
from app.core.runtime.types import GenerationRequest, GenerationStats, LoadSettings, SamplingSettings

GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0, max_new_tokens=12)
QUESTIONS = ("Name three colours of the sea at dusk.", "Why do lighthouses have lenses?")


def _ask(text: str) -> GenerationRequest:
    return GenerationRequest((Message("user", text),), GREEDY)


def _finished(ticket: ReplyTicket) -> tuple[str, GenerationStats]:
    text = ticket.run_to_end()
    assert ticket.stats is not None
    return text, ticket.stats


@pytest.fixture
def one_sequence(demo_model: Path) -> Iterator[EngineHost]:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(demo_model), n_ctx=512, n_parallel=1))
    yield engine
    engine.close()


# -- the cache itself -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "length"),
    [((), (1,), 0), ((1, 2, 3), (1, 2, 3), 3), ((1, 2, 3), (1, 2, 3, 4), 3), ((5, 2), (1, 2), 0)]
    + [(tuple(range(1000)), (*range(k), -1), k) for k in (1, 2, 499, 500, 999)],
)
def test_common_prefix_length(a: tuple[int, ...], b: tuple[int, ...], length: int) -> None:
    assert common_prefix_length(a, b) == length == common_prefix_length(b, a)


def test_the_cache_keeps_the_longest_prompt_and_evicts_the_least_recently_used() -> None:
    first, second, third = tuple(range(40)), tuple(range(100, 140)), tuple(range(200, 240))
    cache = PromptCache(budget_bytes=250)
    assert cache.put(first, bytearray(100)) and cache.put(second, bytearray(100))
    assert cache.best((*first[:30], 7)) == (cache.best(first)[0], 30)  # type: ignore[index]
    assert cache.put(third, bytearray(100))  # over the budget: `second` was used least recently
    assert len(cache) == 2 and cache.size_bytes == 200
    assert cache.best(second) is None or cache.best(second)[1] == 0  # type: ignore[index]
    assert not cache.wants(first[:35])  # already held as the start of a saved prompt
    assert cache.put((*first, 1, 2), bytearray(120))  # continues `first`: replaces it
    assert len(cache) == 2 and cache.size_bytes == 220
    assert not cache.put(tuple(range(300, 340)), bytearray(251))  # larger than the whole budget
    assert not cache.wants(tuple(range(MIN_SAVED_TOKENS - 1)))  # short prompts are cheap to evaluate again
    cache.clear()
    assert len(cache) == 0 and cache.size_bytes == 0
    many = [tuple(range(1000 * i, 1000 * i + 40)) for i in range(MAX_SAVED_PROMPTS + 3)]
    cache.budget_bytes = 1 << 20
    for tokens in many:
        cache.put(tokens, bytearray(10))
    assert len(cache) == MAX_SAVED_PROMPTS and cache.best(many[0]) is None  # the oldest went first


def test_a_copy_must_gain_a_fair_share_of_what_it_moves() -> None:
    assert worth_restoring(12, 170) and not worth_restoring(3, 40)
    assert not worth_restoring(200, 4000) and worth_restoring(250, 4000)


def test_the_automatic_budget_leaves_the_model_its_ram() -> None:
    gib = 1 << 30
    assert auto_budget(64 * gib, 4 * gib) == 4 * gib  # at most 4 GiB
    assert auto_budget(30 * gib, 26 * gib) == gib  # a quarter of what the weights leave
    assert auto_budget(20 * gib, 26 * gib) == 0  # mapped weights bigger than what is free: none


# -- through the engine host ----------------------------------------------------------------------------


def test_a_conversation_that_returns_is_copied_back_not_evaluated(one_sequence: EngineHost) -> None:
    first_text, first = _finished(one_sequence.generate(_ask(QUESTIONS[0])))
    _, other = _finished(one_sequence.generate(_ask(QUESTIONS[1])))  # takes the only sequence
    assert other.prompt_tokens_cached < other.prompt_tokens - 5  # only the shared template start
    again_text, again = _finished(one_sequence.generate(_ask(QUESTIONS[0])))
    assert again.prompt_tokens_cached == again.prompt_tokens - 1  # all but the last token, from RAM
    assert again.prompt_tokens_evaluated == 1
    assert again_text == first_text  # the copied cells are the ones evaluated the first time
    assert first.prompt_tokens_cached == 0


def test_with_the_prompt_cache_off_a_returning_conversation_is_evaluated(demo_model: Path, host: EngineHost) -> None:
    host.load(LoadSettings(model_path=str(demo_model), n_ctx=512, n_parallel=1, prompt_cache_mib=0))
    _finished(host.generate(_ask(QUESTIONS[0])))
    _finished(host.generate(_ask(QUESTIONS[1])))
    _, again = _finished(host.generate(_ask(QUESTIONS[0])))
    assert again.prompt_tokens_evaluated > 5


def test_clearing_the_cache_forgets_the_saved_prompts_too(one_sequence: EngineHost) -> None:
    _finished(one_sequence.generate(_ask(QUESTIONS[0])))
    _finished(one_sequence.generate(_ask(QUESTIONS[1])))
    one_sequence.clear_cache()
    _, again = _finished(one_sequence.generate(_ask(QUESTIONS[0])))
    assert again.prompt_tokens_cached == 0


def _admitted_together(host: EngineHost, questions: list[str]) -> list[ReplyTicket]:
    """Requests the host takes in one round (it is kept busy until all are queued)."""
    gate = threading.Event()
    blocked = host.submit_call(lambda: gate.wait(30))
    tickets = [host.generate(_ask(q)) for q in questions]
    gate.set()
    blocked.result(30)
    return tickets


def test_requests_admitted_together_each_keep_their_own_cache(demo_model: Path, host: EngineHost) -> None:
    # no RAM cache: a prompt can only be reused from the sequence that holds it
    host.load(LoadSettings(model_path=str(demo_model), n_ctx=256, n_parallel=4, prompt_cache_mib=0))
    questions = [*QUESTIONS, "What is a tide?", "Describe a storm at sea."]
    texts = [_finished(t)[0] for t in _admitted_together(host, questions)]  # on sequences 0, 1, 2, 3
    order = [0, 2, 1, 3]  # the second is not next to the first: moving its cache would overwrite the third's
    for index, ticket in zip(order, _admitted_together(host, [questions[i] for i in order]), strict=True):
        reply, stats = _finished(ticket)
        assert stats.prompt_tokens_evaluated == 1, f"request {index} lost its cache to another one"
        assert reply == texts[index]
