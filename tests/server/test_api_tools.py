"""Tool calling through the API on the tiny 8x22B-vocabulary Mixtral, driven by the clients people use (the
official openai SDK and langchain-openai): calls come back as ``tool_calls`` (streamed and not), follow the tools'
schemas, and a conversation holding the call and its result is the exact prompt mistral-common writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import jsonschema
import openai
import pytest

from app.core.prompts import Message, ToolCall
from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings
from app.server.run import RunningServer, start_in_background
from tests.core.test_tool_prompts import TIME, mistral_common_tokens
from tests.core.test_tool_replies import LIGHT

MODEL = "mixtral-8x22b-tiny"
TOOLS = [LIGHT, TIME]
ASK = [{"role": "user", "content": "Dim the kitchen light to 20 %."}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def server(tiny_v3: dict[str, Path]) -> Iterator[RunningServer]:
    host = EngineHost()
    host.load(LoadSettings(model_path=str(tiny_v3["Q4_K_M"]), n_ctx=1024, n_parallel=2))
    running = start_in_background(host, MODEL)
    yield running
    running.stop()
    host.close()


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def check_calls(calls: list) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and len(call.id) == 9 and call.id.isalnum()
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_a_tool_call_and_its_result_make_a_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,  # random weights would go on calling
        temperature=0.8,
        seed=3,
        max_tokens=200,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    check_calls(choice.message.tool_calls)
    history = [
        *ASK,
        choice.message.model_dump(exclude_none=True),  # sent back as the SDK hands it over
        *({"role": "tool", "tool_call_id": c.id, "content": '{"done": true}'} for c in choice.message.tool_calls),
    ]
    second = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=5
    )
    assert second.choices[0].message.tool_calls is None and second.choices[0].finish_reason in ("stop", "length")
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls)
    conversation = [
        Message("user", ASK[0]["content"]),
        Message("assistant", "", calls),
        *(Message("tool", '{"done": true}', tool_call_id=c.id) for c in calls),
    ]
    assert second.usage.prompt_tokens == len(mistral_common_tokens(TOOLS, conversation))


def test_a_streamed_call_arrives_as_tool_call_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "set_light"}},
        parallel_tool_calls=False,
        temperature=0.8,
        seed=5,
        max_tokens=200,
        stream=True,
    )
    deltas, reasons, text = [], [], ""
    for chunk in stream:
        for choice in chunk.choices:
            deltas += choice.delta.tool_calls or []
            text += choice.delta.content or ""
            reasons += [choice.finish_reason] if choice.finish_reason else []
    assert reasons == ["tool_calls"] and text == ""
    assert [d.function.name for d in deltas] == ["set_light"] and deltas[0].index == 0
    check_calls(deltas)


def test_auto_calls_when_the_model_writes_the_tool_call_token(server: RunningServer, client: openai.OpenAI) -> None:
    marker = httpx.post(server.url + "/tokenize", json={"content": "[TOOL_CALLS]", "add_special": True})
    (token,) = marker.json()["tokens"]
    called = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        logit_bias={str(token): 100},
        parallel_tool_calls=False,
        temperature=0.8,
        seed=3,
        max_tokens=200,
    )
    assert called.choices[0].finish_reason == "tool_calls"
    check_calls(called.choices[0].message.tool_calls)
    refused = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", logit_bias={str(token): 100}, max_tokens=10
    )
    assert refused.choices[0].message.tool_calls is None


def test_langchain_binds_tools_and_reads_the_calls(server: RunningServer) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=MODEL, base_url=server.url + "/v1", api_key="unused", temperature=0.8, seed=3, max_completion_tokens=200
    )
    reply = llm.bind_tools(TOOLS, tool_choice="set_light", parallel_tool_calls=False).invoke(
        "Dim the kitchen light to 20 %."
    )
    assert [call["name"] for call in reply.tool_calls] == ["set_light"]
    jsonschema.validate(reply.tool_calls[0]["args"], SCHEMAS["set_light"])
    short = ChatOpenAI(model=MODEL, base_url=server.url + "/v1", api_key="unused", max_completion_tokens=3)
    assert short.invoke("Hello").response_metadata["token_usage"]["completion_tokens"] <= 3


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "fly"}}}, "No tool named 'fly'"),
        ({"tool_choice": "required", "tools": None}, "no tools are offered"),
        ({"response_format": {"type": "json_object"}}, "response format and call tools"),
        ({"tools": [{"type": "function"}]}, "tools[0]"),
    ],
    ids=["unknown-tool", "required-without-tools", "json-and-tools", "bad-tool"],
)
def test_tool_requests_that_cannot_be_met_are_refused(client: openai.OpenAI, extra: dict, words: str) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 5, **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        client.post("/chat/completions", cast_to=object, body={k: v for k, v in body.items() if v is not None})
    assert words in refused.value.message
