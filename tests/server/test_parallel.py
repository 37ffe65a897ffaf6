"""Concurrent API requests are decoded together in one llama.cpp batch per step, each on its own sequence."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings
from app.server.run import RunningServer, start_in_background

QUESTIONS = [
    [{"role": "user", "content": f"Name {n} colours of the rainbow."}] for n in ("two", "three", "four", "five")
]


@pytest.fixture(scope="module")
def server(demo_model: Path) -> Iterator[RunningServer]:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(demo_model), n_ctx=1024, n_parallel=4))
    running = start_in_background(engine, "demo")
    yield running
    running.stop()
    engine.close()


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_concurrent_greedy_replies_equal_the_replies_each_gets_alone(server: RunningServer) -> None:
    def ask(question: list[dict[str, str]]) -> str:
        reply = client(server).chat.completions.create(model="demo", messages=question, temperature=0, max_tokens=16)
        return str(reply.choices[0].message.content)

    alone = [ask(q) for q in QUESTIONS]
    together: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: together.update({i: ask(QUESTIONS[i])})) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [together[i] for i in range(4)] == alone
    with urllib.request.urlopen(server.url + "/health", timeout=30) as response:
        health = json.loads(response.read())
    assert health["status"] == "ok" and health["active"] == 0
