"""Several replies to one prompt share its evaluation (n > 1), and each token's log-probability comes with the
likeliest alternatives when asked for."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.prompts import Message
from app.core.runtime.host import EngineHost
from app.core.runtime.types import GenerationRequest, LoadSettings, SamplingSettings

QUESTION = (Message("user", "Name three colours of the rainbow and say why the sky is blue. " * 4),)


@pytest.fixture(scope="module")
def engine(demo_model: Path) -> Iterator[EngineHost]:
    host = EngineHost()
    host.load(LoadSettings(model_path=str(demo_model), n_ctx=1024, n_parallel=4))
    yield host
    host.close()


def test_choices_evaluate_the_prompt_once_and_greedy_choices_agree(engine: EngineHost) -> None:
    engine.clear_cache()
    greedy = SamplingSettings(temperature=0, max_new_tokens=24)
    alone = engine.generate(GenerationRequest(QUESTION, greedy))
    alone.run_to_end()
    engine.clear_cache()
    tickets = engine.generate_choices(GenerationRequest(QUESTION, greedy), 3)
    texts = [t.run_to_end() for t in tickets]
    assert texts == [alone.text] * 3  # from a copy of the prompt's cells each answers as if it were alone
    prompt = alone.stats.prompt_tokens
    assert tickets[0].stats.prompt_tokens_evaluated == prompt
    assert [t.stats.prompt_tokens_evaluated for t in tickets[1:]] == [1, 1]  # the last token, for its logits
    assert [t.stats.prompt_tokens_cached for t in tickets[1:]] == [prompt - 1] * 2


def test_seeded_choices_differ_and_each_repeats(engine: EngineHost) -> None:
    sampled = SamplingSettings(temperature=1.0, seed=11, max_new_tokens=16)
    first = [t.run_to_end() for t in engine.generate_choices(GenerationRequest(QUESTION, sampled), 3)]
    again = [t.run_to_end() for t in engine.generate_choices(GenerationRequest(QUESTION, sampled), 3)]
    assert first == again and len(set(first)) > 1


def test_more_choices_than_sequences_all_finish(engine: EngineHost) -> None:
    tickets = engine.generate_choices(GenerationRequest(QUESTION, SamplingSettings(seed=2, max_new_tokens=6)), 6)
    assert all(t.run_to_end() is not None and t.stats.generated_tokens for t in tickets)


def test_logprobs_are_the_models_distribution_with_the_likeliest_alternatives(engine: EngineHost) -> None:
    ticket = engine.generate(
        GenerationRequest(
            QUESTION, SamplingSettings(temperature=0, repeat_penalty=1.0, max_new_tokens=12, top_logprobs=5)
        )
    )
    ticket.run_to_end()
    assert len(ticket.logprobs) == len(ticket.token_ids) == 12
    for token, entry in zip(ticket.token_ids, ticket.logprobs, strict=True):
        assert entry.chosen.token == token == entry.top[0].token  # greedy (no penalties) takes the likeliest
        assert len(entry.top) == 5 and [p.logprob for p in entry.top] == sorted(
            (p.logprob for p in entry.top), reverse=True
        )
        assert entry.chosen.logprob <= 0 and sum(math.exp(p.logprob) for p in entry.top) <= 1.0001
    assert b"".join(e.chosen.piece for e in ticket.logprobs).decode().strip() == ticket.text
    plain = engine.generate(GenerationRequest(QUESTION, SamplingSettings(temperature=0, max_new_tokens=4)))
    plain.run_to_end()
    assert plain.logprobs == []
