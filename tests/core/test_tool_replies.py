"""Replies that call tools, on the tiny 8x22B-vocabulary Mixtral (random weights, so the grammar is what makes a
call): the calls are read from what follows the [TOOL_CALLS] token, kept out of the streamed text, follow the
tools' parameter schemas, and go back into the conversation token for token as mistral-common writes them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from app.core.errors import DeskError
from app.core.prompts import FORMAT_MISTRAL_V3, Message
from app.core.runtime.host import EngineHost
from app.core.runtime.types import STOP_TOOL_CALLS, GenerationRequest, LoadSettings, SamplingSettings
from tests.core.test_tool_prompts import TIME, mistral_common_tokens

ASK = (Message("user", "What's the weather in Paris?"),)
# arguments a random model can finish in a few tokens (an unbounded string it might write for ever)
LIGHT = {
    "type": "function",
    "function": {
        "name": "set_light",
        "description": "Dim a room's light.",
        "parameters": {
            "type": "object",
            "properties": {
                "room": {"type": "string", "enum": ["kitchen", "hall"]},
                "level": {"type": "integer", "minimum": 0, "maximum": 100},
            },
            "required": ["room", "level"],
        },
    },
}
TOOLS = (LIGHT, TIME)


@pytest.fixture(scope="module")
def v3_host(tiny_v3: dict[str, Path]) -> Iterator[EngineHost]:
    host = EngineHost()
    host.load(LoadSettings(model_path=str(tiny_v3["Q4_K_M"]), n_ctx=1024, n_parallel=2))
    yield host
    host.close()


def ask(host: EngineHost, **options: object) -> object:
    sampling = options.pop("sampling", SamplingSettings(temperature=0.8, seed=3, max_new_tokens=200))
    request = GenerationRequest(ASK, sampling, tools=TOOLS, **options)  # type: ignore[arg-type]
    ticket = host.generate(request)
    ticket.run_to_end()
    return ticket


def marker(host: EngineHost) -> int:
    return host.tokenize("[TOOL_CALLS]", special=True)[0]


def test_a_required_call_follows_the_tool_schema_and_is_not_streamed_as_text(v3_host: EngineHost) -> None:
    ticket = ask(
        v3_host, tool_choice="required", sampling=SamplingSettings(temperature=0.8, seed=3, max_new_tokens=400)
    )
    assert ticket.stats.stop_reason == STOP_TOOL_CALLS, ticket.tool_text
    assert ticket.text == "" and ticket.token_ids[0] == marker(v3_host)
    assert ticket.tool_calls
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for call in ticket.tool_calls:
        assert len(call.id) == 9 and call.id.isalnum()
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])


def test_a_named_tool_is_the_only_one_called_and_once_without_parallel_calls(v3_host: EngineHost) -> None:
    for seed in range(4):
        sampling = SamplingSettings(temperature=1.0, seed=seed, max_new_tokens=120)
        ticket = ask(v3_host, required_tool="get_time", parallel_tool_calls=False, sampling=sampling)
        assert ticket.stats.stop_reason == STOP_TOOL_CALLS, ticket.tool_text
        assert [c.name for c in ticket.tool_calls] == ["get_time"]


def test_auto_writes_text_until_the_model_writes_the_tool_call_token(v3_host: EngineHost) -> None:
    free = ask(v3_host)
    assert free.text and not free.tool_calls and marker(v3_host) not in free.token_ids
    pushed = SamplingSettings(temperature=0.8, seed=3, max_new_tokens=120, logit_bias=((marker(v3_host), 100.0),))
    # the model is made to call at once: the grammar holds what follows (one call: random weights go on calling)
    called = ask(v3_host, sampling=pushed, parallel_tool_calls=False)
    assert called.stats.stop_reason == STOP_TOOL_CALLS, called.tool_text
    assert called.tool_calls and called.text == ""


def test_none_never_calls_even_when_the_model_would(v3_host: EngineHost) -> None:
    pushed = SamplingSettings(temperature=0.8, seed=3, max_new_tokens=40, logit_bias=((marker(v3_host), 100.0),))
    ticket = ask(v3_host, tool_choice="none", sampling=pushed)
    assert marker(v3_host) not in ticket.token_ids and not ticket.tool_calls


def test_a_call_cut_short_stays_text_for_the_caller_to_see(v3_host: EngineHost) -> None:
    short = SamplingSettings(temperature=0.8, seed=3, max_new_tokens=4)
    ticket = ask(v3_host, tool_choice="required", sampling=short)
    assert ticket.stats.stop_reason == "max_tokens"
    assert not ticket.tool_calls and ticket.tool_text.startswith("[")


def test_the_call_and_its_result_continue_the_conversation_as_mistral_common_writes_it(v3_host: EngineHost) -> None:
    ticket = ask(v3_host, tool_choice="required", parallel_tool_calls=False)
    call = ticket.tool_calls[0]
    conversation = [
        *ASK,
        Message("assistant", "", ticket.tool_calls),
        *(Message("tool", '{"ok": true}', tool_call_id=c.id) for c in ticket.tool_calls),
    ]
    ours = v3_host.prompt_tokens(conversation, FORMAT_MISTRAL_V3, tools=TOOLS)
    assert ours == mistral_common_tokens(list(TOOLS), conversation)
    answer = v3_host.generate(
        GenerationRequest(tuple(conversation), SamplingSettings(seed=1, max_new_tokens=8), tools=TOOLS)
    )
    answer.run_to_end()
    assert answer.stats.prompt_tokens == len(ours) and call.name in ("set_light", "get_time")


def test_tool_choices_that_cannot_be_met_are_refused(v3_host: EngineHost, tiny_v1: dict[str, Path]) -> None:
    with pytest.raises(DeskError, match="No tool named 'nope'"):
        ask(v3_host, required_tool="nope")
    json_mode = SamplingSettings(grammar='root ::= "{}"')
    with pytest.raises(DeskError, match="response format and call tools"):
        ask(v3_host, sampling=json_mode)
    with pytest.raises(DeskError, match="Unknown tool choice"):
        ask(v3_host, tool_choice="sometimes")
