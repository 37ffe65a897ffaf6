"""--parallel: several requests decoded together in one llama.cpp batch per step."""

from __future__ import annotations

import threading
from pathlib import Path

import openai
import pytest

from app.core.engine import Engine, LoadSettings
from app.server.run import start_in_background

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def engine(demo_model: Path) -> Engine:
    engine = Engine()  # a real model: greedy choices have clear margins, unlike random test weights
    engine.load(LoadSettings(model_path=str(demo_model), n_ctx=1024))
    return engine


@pytest.fixture(scope="module")
def servers(engine: Engine):
    single = start_in_background(engine, "tiny")
    batched = start_in_background(engine, "tiny", parallel=4)
    yield single, batched
    batched.stop()
    single.stop()


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_batched_greedy_replies_equal_one_at_a_time_replies(servers) -> None:
    single, batched = servers
    one = client(single).chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=12)
    alone_in_batch = client(batched).chat.completions.create(
        model="tiny", messages=QUESTION, temperature=0, max_tokens=12
    )
    assert alone_in_batch.choices[0].message.content == one.choices[0].message.content
    replies: dict[int, str] = {}

    def ask(i: int) -> None:
        reply = client(batched).chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=12)
        replies[i] = reply.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # four identical requests decoded together give four identical greedy replies (the batch shape changes the
    # float rounding, so they are compared with each other, not with the one-at-a-time reply)
    assert len(set(replies.values())) == 1 and len(replies) == 4


def test_batched_streaming_and_usage(servers) -> None:
    _, batched = servers
    chunks = list(
        client(batched).chat.completions.create(
            model="tiny", messages=QUESTION, max_tokens=7, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens <= 7


def test_batched_disconnect_frees_the_slot(servers) -> None:
    import httpx2 as httpx

    _, batched = servers
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 900, "stream": True}
    with httpx.stream("POST", batched.url + "/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break
    ticket = batched.service.recent[-1]
    assert ticket.finished.wait(30) and ticket.stats.stop_reason == "cancelled"
    again = client(batched).chat.completions.create(model="tiny", messages=QUESTION, max_tokens=3)
    assert again.usage.completion_tokens <= 3
