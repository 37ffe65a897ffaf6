"""What the API accepts and refuses: strict types, OpenAI's newer fields, llama.cpp's extras, tokenizing, the
error shape of every refusal, and the guards in front (body limit with chunked bodies, Host, CORS, the key)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import jsonschema
import openai
import pytest

from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings
from app.server.run import RunningServer, start_in_background

KEY = "requests-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def engine(demo_model: Path) -> Iterator[EngineHost]:
    host = EngineHost()
    host.load(LoadSettings(model_path=str(demo_model), n_ctx=2048))
    yield host
    host.close()


@pytest.fixture(scope="module")
def server(engine: EngineHost) -> Iterator[RunningServer]:
    running = start_in_background(
        engine, "demo", api_key=KEY, max_body_bytes=64 * 1024, cors_origins=("http://localhost:3000",)
    )
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def post(server: RunningServer, path: str, body: object, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {**AUTH, "Content-Type": "application/json", **headers}
    return httpx.post(server.url + path, content=content, headers=all_headers, timeout=120)


def refused(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    problem = response.json()["error"]
    assert set(problem) == {"message", "type", "param", "code"}
    assert all(word in problem["message"] for word in words), problem["message"]
    return problem


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", "7"), ("stream", "yes"), ("temperature", "0.5"), ("seed", 1.5), ("stream", 1)],
)
def test_values_of_the_wrong_type_are_refused_not_coerced(server: RunningServer, field: str, value: object) -> None:
    problem = refused(post(server, "/v1/chat/completions", {"model": "demo", "messages": HI, field: value}), 400)
    assert problem["param"] == field


def test_max_completion_tokens_limits_the_reply(client: openai.OpenAI) -> None:
    story = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    reply = client.chat.completions.create(model="demo", messages=story, max_completion_tokens=5, temperature=0)
    assert reply.usage.completion_tokens == 5 and reply.choices[0].finish_reason == "length"


def test_every_stop_string_counts_up_to_sixteen(server: RunningServer, client: openai.OpenAI) -> None:
    count = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    full = client.chat.completions.create(model="demo", messages=count, temperature=0, max_tokens=60)
    text = full.choices[0].message.content
    assert "7" in text
    stops = [f"never{i}" for i in range(15)] + ["7"]  # the one that matters is the 16th
    cut = post(server, "/v1/chat/completions", {"model": "demo", "messages": count, "temperature": 0, "stop": stops})
    assert cut.status_code == 200 and cut.json()["choices"][0]["message"]["content"] == text[: text.index("7")]
    refused(post(server, "/v1/chat/completions", {"model": "demo", "messages": HI, "stop": [*stops, "x"]}), 400, "16")


def test_text_parts_and_the_developer_role(server: RunningServer, client: openai.OpenAI) -> None:
    as_parts = [{"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello."}]}]
    as_text = [{"role": "user", "content": "Say\nhello."}]
    one = client.chat.completions.create(model="demo", messages=as_parts, temperature=0, max_tokens=2)
    two = client.chat.completions.create(model="demo", messages=as_text, temperature=0, max_tokens=2)
    assert one.usage.prompt_tokens == two.usage.prompt_tokens  # the same prompt, token for token in length
    developer = client.chat.completions.create(
        model="demo", messages=[{"role": "developer", "content": "Be brief."}, *HI], max_tokens=2
    )
    system = client.chat.completions.create(
        model="demo", messages=[{"role": "system", "content": "Be brief."}, *HI], max_tokens=2
    )
    assert developer.usage.prompt_tokens == system.usage.prompt_tokens
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    refused(post(server, "/v1/chat/completions", {"model": "demo", "messages": image}), 400, "image_url", "text only")


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            ("no way to offer tools", "8x22B"),
        ),
        ({"top_logprobs": 2}, ("top_logprobs needs logprobs",)),
        ({"logprobs": True, "top_logprobs": 21}, ("top_logprobs",)),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}},
            ("wat",),
        ),
        ({"response_format": {"type": "yaml"}}, ("yaml",)),
        ({"n": 17}, ("n",)),
        ({"logit_bias": {"99999999": 5}}, ("token 99999999",)),
    ],
    ids=[
        "tools-without-a-tool-format",
        "top-logprobs-alone",
        "too-many-top-logprobs",
        "bad-schema",
        "yaml",
        "n-17",
        "bias-outside-vocabulary",
    ],
)
def test_what_cannot_be_served_is_refused_not_ignored(
    server: RunningServer, extra: dict, words: tuple[str, ...]
) -> None:
    refused(
        post(server, "/v1/chat/completions", {"model": "demo", "messages": HI, "max_tokens": 3, **extra}), 400, *words
    )
    assert post(server, "/v1/chat/completions", {"model": "demo", "messages": HI, "max_tokens": 2}).status_code == 200


CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}, "population": {"type": "integer", "minimum": 0}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


def test_json_mode_and_schema_output_parses_and_validates(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What is the largest city in France, and how many people live there?"}]
    shaped = client.chat.completions.create(
        model="demo",
        messages=ask,
        temperature=0,
        max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}},
    )
    jsonschema.validate(json.loads(shaped.choices[0].message.content), CITY)
    stream = client.chat.completions.create(
        model="demo",
        messages=ask,
        temperature=0.8,
        seed=3,
        max_tokens=120,
        stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}},
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(streamed), CITY)
    brief = [{"role": "user", "content": "Reply with a JSON object with one key, 'ok', set to true."}]
    anything = client.chat.completions.create(
        model="demo", messages=brief, temperature=0, max_tokens=60, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(anything.choices[0].message.content), dict)


def test_tokenize_detokenize_and_logit_bias(server: RunningServer) -> None:
    tokens = post(server, "/tokenize", {"content": " banana"}).json()["tokens"]
    assert tokens and post(server, "/detokenize", {"tokens": tokens}).json()["content"] == " banana"
    pieces = post(server, "/tokenize", {"content": " banana", "with_pieces": True}).json()["tokens"]
    assert "".join(p["piece"] for p in pieces) == " banana" and [p["id"] for p in pieces] == tokens
    forced = post(
        server,
        "/v1/chat/completions",
        {"model": "demo", "messages": HI, "temperature": 0, "max_tokens": 3, "logit_bias": {str(tokens[0]): 100}},
    )
    thrice = post(server, "/detokenize", {"tokens": tokens[:1] * 3}).json()["content"]
    assert forced.json()["choices"][0]["message"]["content"].strip() == thrice.strip()


def test_penalties_change_a_greedy_reply(client: openai.OpenAI) -> None:
    repeat = [{"role": "user", "content": "Write the word 'yes' thirty times."}]
    plain = client.chat.completions.create(model="demo", messages=repeat, temperature=0, max_tokens=30)
    penalised = client.chat.completions.create(
        model="demo", messages=repeat, temperature=0, max_tokens=30, frequency_penalty=2.0, presence_penalty=2.0
    )
    assert plain.choices[0].message.content != penalised.choices[0].message.content


def test_usage_reports_the_cached_prefix(client: openai.OpenAI) -> None:
    long = [{"role": "user", "content": "Here are some notes about the sea. " * 30 + "Summarise them."}]
    client.chat.completions.create(model="demo", messages=long, temperature=0, max_tokens=2)
    again = client.chat.completions.create(model="demo", messages=long, temperature=0, max_tokens=2)
    assert again.usage.prompt_tokens_details.cached_tokens > 100


def test_every_error_has_openai_shape(server: RunningServer) -> None:
    refused(httpx.get(server.url + "/v1/nothing", headers=AUTH), 404, "/v1/nothing", "/v1/chat/completions")
    refused(httpx.get(server.url + "/v1/chat/completions", headers=AUTH), 405, "GET")
    bad_utf8 = b'{"model": "demo", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
    refused(post(server, "/v1/chat/completions", bad_utf8), 400, "JSON")
    refused(post(server, "/v1/chat/completions", {"model": "demo", "messages": "hi"}), 400, "messages")


def test_a_chunked_body_over_the_limit_is_refused_unread(server: RunningServer) -> None:
    def chunks(total: int) -> Iterator[bytes]:  # no Content-Length: httpx sends it chunked
        yield b'{"model": "demo", "messages": [{"role": "user", "content": "'
        for _ in range(total // 1024):
            yield b"x" * 1024
        yield b'"}], "max_tokens": 2}'

    big = httpx.post(server.url + "/v1/chat/completions", content=chunks(5_000_000), headers=AUTH, timeout=60)
    refused(big, 413, "larger than")
    small = httpx.post(server.url + "/v1/chat/completions", content=chunks(2048), headers=AUTH, timeout=60)
    assert small.status_code == 200


def test_only_this_machines_names_and_allowed_origins_get_in(server: RunningServer) -> None:
    rebound = httpx.get(server.url + "/v1/models", headers={**AUTH, "Host": "evil.example:8080"})
    refused(rebound, 400, "evil.example")
    port = server.url.rsplit(":", 1)[1]
    assert httpx.get(server.url + "/v1/models", headers={**AUTH, "Host": f"localhost:{port}"}).status_code == 200
    stranger = httpx.get(server.url + "/v1/models", headers={**AUTH, "Origin": "http://evil.example"})
    assert stranger.status_code == 200 and "access-control-allow-origin" not in stranger.headers
    allowed = httpx.options(
        server.url + "/v1/chat/completions",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    assert allowed.status_code == 204 and allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
    refused(httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer requests-kex"}), 401, "API key")
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"bearer {KEY}"}).status_code == 200


def test_a_client_that_gives_up_on_a_whole_reply_stops_it(server: RunningServer, engine: EngineHost) -> None:
    end = engine.with_model(lambda loaded: loaded.vocab.eos_id)
    story = {
        "model": "demo",
        "messages": [{"role": "user", "content": "A very long story, please."}],
        "max_tokens": 3000,
        "logit_bias": {str(end): -100},  # it cannot finish early: only the client giving up ends it
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=story, headers=AUTH, timeout=httpx.Timeout(120, read=1.0))
    ticket = server.service.recent[-1]
    assert ticket.finished.wait(10)  # noticed within the reader's 0.2 s checks, not after 3000 tokens
    assert ticket.stats.stop_reason == "cancelled" and ticket.stats.generated_tokens < 3000


def test_any_model_name_when_asked(engine: EngineHost) -> None:
    running = start_in_background(engine, "demo", any_model_name=True)
    try:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="none", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=2)
        assert reply.model == "demo" and client.models.retrieve("gpt-4o-mini").id == "demo"
    finally:
        running.stop()


def test_n_choices_share_one_prompt_and_each_finishes(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Name a fruit."}]
    reply = client.chat.completions.create(model="demo", messages=ask, n=3, temperature=1.0, seed=4, max_tokens=12)
    assert [c.index for c in reply.choices] == [0, 1, 2] and len({c.message.content for c in reply.choices}) > 1
    one = client.chat.completions.create(model="demo", messages=ask, max_tokens=1)
    assert reply.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt is counted once
    assert reply.usage.completion_tokens > 12
    texts, reasons = {}, {}
    stream = client.chat.completions.create(model="demo", messages=ask, n=2, seed=4, max_tokens=12, stream=True)
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    assert set(texts) == set(reasons) == {0, 1} and all(texts.values())


def test_logprobs_come_with_each_token_streamed_or_not(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Say hello."}]
    reply = client.chat.completions.create(
        model="demo", messages=ask, logprobs=True, top_logprobs=3, temperature=0, max_tokens=8
    )
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    assert "".join(e.token for e in entries).strip() == reply.choices[0].message.content
    for entry in entries:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0 and bytes(entry.bytes).decode() == entry.token
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
    streamed = client.chat.completions.create(
        model="demo", messages=ask, logprobs=True, temperature=0, max_tokens=8, stream=True
    )
    tokens = [e.token for chunk in streamed for c in chunk.choices if c.logprobs for e in c.logprobs.content]
    assert tokens == [e.token for e in entries]
    legacy = client.completions.create(  # sampled, seeded, and never cut short by the end of text
        model="demo",
        prompt="The capital of France is",
        logprobs=2,
        max_tokens=5,
        seed=7,
        extra_body={"ignore_eos": True},
    )
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == legacy.usage.completion_tokens == 5
    assert "".join(lp.tokens) == legacy.choices[0].text and lp.text_offset[0] == 0
    assert all(len(alternatives) <= 2 for alternatives in lp.top_logprobs)


def test_ignore_eos_writes_every_token_asked_for(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Reply with the single word: yes"}]
    free = client.chat.completions.create(model="demo", messages=ask, temperature=0, max_tokens=60)
    assert free.choices[0].finish_reason == "stop" and free.usage.completion_tokens < 60
    forced = client.chat.completions.create(
        model="demo", messages=ask, temperature=0, max_tokens=60, extra_body={"ignore_eos": True}
    )
    assert forced.usage.completion_tokens == 60 and forced.choices[0].finish_reason == "length"


def test_langchain_openai_chats_streams_stops_and_structures(server: RunningServer) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    def chat(**options: object) -> ChatOpenAI:
        return ChatOpenAI(model="demo", base_url=server.url + "/v1", api_key=KEY, max_retries=0, **options)

    count = "Count from 1 to 20, separated by commas."
    full = chat(temperature=0, max_completion_tokens=40).invoke(count)
    assert "7" in full.content and full.usage_metadata["output_tokens"] <= 40
    streamed = "".join(str(piece.content) for piece in chat(temperature=0, max_completion_tokens=40).stream(count))
    assert streamed == full.content
    cut = chat(temperature=0, max_completion_tokens=40).invoke(count, stop=["7"])
    assert "7" not in cut.content and full.content.startswith(cut.content)
    seeded = [
        chat(temperature=1.0, seed=9, max_completion_tokens=12).invoke("Name a colour.").content for _ in range(2)
    ]
    assert seeded[0] == seeded[1]
    two = chat(n=2, temperature=1.0, seed=2, max_completion_tokens=8).generate([[HumanMessage("Name a colour.")]])
    assert len(two.generations[0]) == 2
    scored = chat(temperature=0, max_completion_tokens=6, logprobs=True).invoke("Say hello.")
    assert len(scored.response_metadata["logprobs"]["content"]) == scored.usage_metadata["output_tokens"]
    shaped = chat(temperature=0, max_completion_tokens=120).with_structured_output(
        {"title": "city", **CITY}, method="json_schema"
    )
    jsonschema.validate(shaped.invoke("What is the largest city in France, and how many people live there?"), CITY)
