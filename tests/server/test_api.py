"""The OpenAI-compatible server on loopback, driven by the official openai client and raw HTTP."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings
from app.server.run import RunningServer, start_in_background

KEY = "test-key"


@pytest.fixture(scope="module")
def server(demo_model: Path):
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(demo_model), n_ctx=2048))
    running = start_in_background(engine, "demo", api_key=KEY, max_body_bytes=64 * 1024)
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


QUESTION = [{"role": "user", "content": "What is the capital city of France? Answer in one word."}]


def test_models_and_health(client: openai.OpenAI, server: RunningServer) -> None:
    assert [m.id for m in client.models.list().data] == ["demo"]
    assert client.models.retrieve("demo").id == "demo"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o-mini")
    health = httpx.get(server.url + "/health")  # open without the key
    assert health.status_code == 200
    assert (health.json()["status"], health.json()["model"]) == ("ok", "demo")
    assert health.json()["active"] == 0 and health.json()["queued"] == 0
    assert "/" not in health.text  # no file paths for whoever asks


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="demo", messages=QUESTION, temperature=0, max_tokens=16)
    assert "Paris" in reply.choices[0].message.content and reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_gives_the_same_text(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="demo", messages=QUESTION, temperature=0, max_tokens=16)
    chunks = list(
        client.chat.completions.create(
            model="demo",
            messages=QUESTION,
            temperature=0,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_length_limit_and_plain_completions(client: openai.OpenAI) -> None:
    cut = client.chat.completions.create(model="demo", messages=QUESTION, max_tokens=2, temperature=0)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 2
    completion = client.completions.create(model="demo", prompt="Once upon a time", max_tokens=5, temperature=0)
    assert completion.choices[0].text and completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens <= 6  # the text itself, no chat template around it


def test_parallel_clients_are_all_answered(client: openai.OpenAI) -> None:
    answers: list[str] = []
    errors: list[BaseException] = []

    def ask(n: int) -> None:
        try:
            reply = client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": f"Count to {n}."}], max_tokens=8
            )
            answers.append(reply.choices[0].message.content)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and len(answers) == 3


def test_a_client_that_disconnects_stops_its_generation(server: RunningServer) -> None:
    body = {
        "model": "demo",
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 2000,
        "stream": True,
        "temperature": 0.8,
    }
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    ) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data:") and '"content": "' in line and '"content": ""' not in line:
                break
    # the server notices, stops generating and is free for the next request
    ticket = server.service.recent[-1]
    assert ticket.finished.wait(30)
    stats = ticket.stats
    assert stats.stop_reason == "cancelled" and stats.generated_tokens < 2000


@pytest.mark.parametrize(
    ("headers", "content", "status", "code"),
    [
        (
            {"Authorization": "Bearer wrong"},
            json.dumps({"model": "demo", "messages": QUESTION}),
            401,
            "invalid_api_key",
        ),
        ({}, "{not json", 400, "invalid_json"),
        ({}, json.dumps({"model": "nope", "messages": QUESTION}), 404, "model_not_found"),
        ({}, json.dumps({"model": "demo", "messages": QUESTION, "temperature": -1}), 400, None),
        ({}, json.dumps({"model": "demo", "messages": []}), 400, None),
        (
            {},
            json.dumps({"model": "demo", "messages": [{"role": "user", "content": "x" * 70_000}]}),
            413,
            "body_too_large",
        ),
    ],
    ids=["bad-key", "malformed-json", "unknown-model", "bad-temperature", "no-messages", "oversized-body"],
)
def test_bad_requests_get_openai_style_errors(server: RunningServer, headers, content: str, status: int, code) -> None:
    all_headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **headers}
    response = httpx.post(server.url + "/v1/chat/completions", content=content, headers=all_headers, timeout=60)
    assert response.status_code == status
    payload = response.json()["error"]
    assert payload["message"] and (code is None or payload["code"] == code)
    assert httpx.get(server.url + "/health").status_code == 200  # still serving


def test_the_official_client_raises_the_right_errors(server: RunningServer) -> None:
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    right = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        right.chat.completions.create(model="gpt-4", messages=QUESTION)
