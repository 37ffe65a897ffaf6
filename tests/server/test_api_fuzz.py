"""Fuzzing the API: the bad inputs found by hand, then seeded random mutations of valid requests (bounded in
count and time). Never a 500, always OpenAI's error shape, and after each one the server still answers a
normal request."""

from __future__ import annotations

import copy
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings
from app.server.run import RunningServer, start_in_background

MUTATIONS = 150
BUDGET_S = 120.0
SEED = int(os.environ.get("MIXTRAL_DESK_FUZZ_SEED", "20261124"))  # another seed explores other mutations
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    10**30,
    1.5,
    -1e308,
    "",
    "7",
    "yes",
    "\ud800 lone surrogate",
    "\x00\x01 control",
    "x" * 5000,
    [],
    [None],
    {},
    {"nested": {"deeper": [1, 2, 3]}},
    ["a", 1, None],
]
VALID: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}),
    (
        "/v1/chat/completions",
        {
            "model": "demo",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "max_tokens": 3,
            "stream": True,
            "stop": ["\n"],
            "temperature": 0.5,
        },
    ),
    ("/v1/completions", {"model": "demo", "prompt": "Once upon a time", "max_tokens": 3, "seed": 4}),
    ("/tokenize", {"content": "hello there"}),
    ("/detokenize", {"tokens": [1, 2, 3]}),
]
HAND_FOUND: list[tuple[str, bytes]] = [
    ("/v1/chat/completions", b'{"model":"demo","messages":[{"role":"user","content":"\\ud800 hi"}],"max_tokens":3}'),
    ("/v1/completions", b'{"model":"demo","prompt":"","max_tokens":3}'),
    ("/v1/chat/completions", b'{"model":"demo","messages":[{"role":"user","content":"hi"}],"max_tokens":"7"}'),
    ("/v1/chat/completions", b'{"model":"demo","messages":[{"role":"user","content":"hi"}],"stream":"yes"}'),
    ("/v1/chat/completions", b'{"model":"demo","messages":[{"role":"user","content":"\xff\xfe"}]}'),
    ("/v1/chat/completions", b'{"model":"demo","messages":[{"role":"user","content":"hi"}],"max_tokens":NaN}'),
    ("/v1/chat/completions", b'{"model":"demo","messages":[{"role":"user","content":"hi"}],"temperature":Infinity}'),
    ("/v1/chat/completions", b"[1, 2, 3]"),
    ("/v1/chat/completions", b'{"model":"demo","messages":[{"role":"user","content":"hi"}'),
    ("/detokenize", b'{"tokens":[-5, 99999999999]}'),
    ("/v1/chat/completions", b'{"model":"demo","messages":[{"role":"user","content":"hi"}],"logit_bias":{"-1":5}}'),
]


@pytest.fixture(scope="module")
def server(demo_model: Path) -> Iterator[RunningServer]:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(demo_model), n_ctx=1024, n_parallel=2))
    running = start_in_background(engine, "demo", max_body_bytes=256 * 1024)
    yield running
    running.stop()
    engine.close()


def mutate(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One random change somewhere in ``body``: a value of another type, a key gone, a key added."""
    body = copy.deepcopy(body)
    holders: list[dict[str, Any] | list[Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict | list):
            holders.append(node)
            for child in node.values() if isinstance(node, dict) else node:
                walk(child)

    walk(body)
    holder = rng.choice(holders)
    if isinstance(holder, dict) and holder:
        key = rng.choice(list(holder))
        action = rng.random()
        if action < 0.6:
            holder[key] = rng.choice(ODD_VALUES)
        elif action < 0.8:
            del holder[key]
        else:
            holder[rng.choice(["n", "logprobs", "tools", "response_format", "stop", "max_completion_tokens"])] = (
                rng.choice(ODD_VALUES)
            )
    elif isinstance(holder, list) and holder:
        holder[rng.randrange(len(holder))] = rng.choice(ODD_VALUES)
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 8:
        body["max_tokens"] = 8  # keep what does generate short
    return body


def send(server: RunningServer, path: str, content: bytes) -> httpx.Response:
    with httpx.stream(
        "POST", server.url + path, content=content, headers={"Content-Type": "application/json"}, timeout=60
    ) as response:
        response.read()  # a stream is read to its end
        return response


def check(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what} -> {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        problem = response.json()["error"]
        assert set(problem) == {"message", "type", "param", "code"} and problem["message"], what


def still_serving(server: RunningServer, what: str) -> None:
    normal = json.dumps(VALID[0][1]).encode()
    response = send(server, "/v1/chat/completions", normal)
    assert response.status_code == 200 and response.json()["choices"], f"after {what}: {response.text[:300]}"


def test_inputs_found_by_hand_are_refused_cleanly(server: RunningServer) -> None:
    for path, content in HAND_FOUND:
        what = content.decode("utf-8", "replace")
        response = send(server, path, content)
        check(response, what)
        assert 400 <= response.status_code < 500, f"{what} was not refused: {response.status_code}"
        still_serving(server, what)


def test_random_mutations_of_valid_requests_never_break_the_server(server: RunningServer) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    statuses: dict[int, int] = {}
    for index in range(MUTATIONS):
        if time.monotonic() - started > BUDGET_S:
            break
        path, valid = rng.choice(VALID)
        body = mutate(valid, rng)
        content = json.dumps(body).encode("utf-8", "surrogatepass")
        if rng.random() < 0.1:  # now and then a broken byte stream instead
            content = content[: rng.randrange(len(content))]
        response = send(server, path, content)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        what = f"#{index} {path} {content[:200]!r}"
        check(response, what)
        still_serving(server, what)
    assert sum(statuses.values()) >= 40, statuses  # enough of them ran in the time allowed
    assert statuses.get(200, 0) and sum(n for s, n in statuses.items() if 400 <= s < 500), statuses
    health = httpx.get(server.url + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["active"] == 0
