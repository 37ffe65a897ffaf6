"""A remote OpenAI-compatible endpoint as the model source, tested against our own server on loopback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.errors import DeskError
from app.core.prompts import Message
from app.core.runtime.host import EngineHost
from app.core.runtime.remote import RemoteEngine, RemoteError, RemoteSettings
from app.core.runtime.session import ChatSession
from app.core.runtime.types import GenerationRequest, LoadSettings, SamplingSettings
from app.server.run import RunningServer, start_in_background

KEY = "remote-key"


@pytest.fixture(scope="module")
def server(tiny_v1: dict[str, Path]):
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=2048))
    running = start_in_background(engine, "tiny", api_key=KEY)
    yield running
    running.stop()


def remote(server: RunningServer, **changes: str) -> RemoteEngine:
    settings = {"base_url": server.url + "/v1", "model": "tiny", "api_key": KEY, **changes}
    return RemoteEngine(RemoteSettings(**settings))  # type: ignore[arg-type]


def test_a_remote_model_chats_like_a_local_one(server: RunningServer) -> None:
    engine = remote(server)
    assert engine.load().name == "tiny"
    session = ChatSession(engine, system="Be brief.", sampling=SamplingSettings(max_new_tokens=6, temperature=0))  # type: ignore[arg-type]
    reply = "".join(session.stream("Hello"))
    assert reply and session.history[-1] == Message("assistant", reply)
    stats = session.last.stats
    assert stats.generated_tokens == 6 and stats.stop_reason == "max_tokens" and stats.prompt_tokens > 5


def test_stopping_a_remote_reply_stops_the_server_too(server: RunningServer) -> None:
    engine = remote(server)
    engine.load()
    generation = engine.generate(GenerationRequest((Message("user", "Go"),), SamplingSettings(max_new_tokens=1500)))
    for _ in generation:
        generation.cancel()
    assert generation.stats.stop_reason == "cancelled"
    ticket = server.service.recent[-1]
    assert ticket.finished.wait(30) and ticket.stats.stop_reason == "cancelled"


@pytest.mark.parametrize(
    ("sampling", "tools", "named"),
    [
        (SamplingSettings(top_logprobs=2), (), "logprobs"),
        (SamplingSettings(grammar='root ::= "{}"'), (), "JSON output (response_format)"),
        (SamplingSettings(), ({"type": "function", "function": {"name": "f"}},), "Tool calling"),
    ],
    ids=["logprobs", "grammar", "tools"],
)
def test_what_a_remote_model_is_not_sent_is_refused_not_dropped(
    server: RunningServer, sampling: SamplingSettings, tools: tuple, named: str
) -> None:
    engine = remote(server)
    engine.load()
    ticket = engine.generate(GenerationRequest((Message("user", "Hi"),), sampling, tools=tools))
    engine.close()
    with pytest.raises(DeskError, match=re.escape(f"{named} is not relayed")):
        ticket.run_to_end()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"api_key": "wrong"}, "refused the API key"),
        ({"model": "gpt-9"}, "not 'gpt-9'"),
        ({"base_url": "http://127.0.0.1:9/v1"}, "Cannot connect"),
    ],
)
def test_remote_problems_are_explained(server: RunningServer, changes: dict[str, str], message: str) -> None:
    with pytest.raises(RemoteError, match=message):
        remote(server, **changes).load()


def test_console_chat_with_a_remote_model(server: RunningServer, isolated_home: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "chat",
            "--remote",
            server.url + "/v1",
            "--remote-model",
            "tiny",
            "--api-key",
            KEY,
            "--prompt",
            "Hi",
            "--max-tokens",
            "4",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MIXTRAL_DESK_HOME": str(isolated_home)},
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["model"]["architecture"] == "remote" and payload["stats"]["generated_tokens"] == 4


def test_llama_cpp_pythons_own_server_as_the_remote(tiny_v1: dict[str, Path], tmp_path: Path) -> None:
    """The remote backend against llama-cpp-python's server module (a different OpenAI-compatible server)."""
    import socket

    pytest.importorskip("llama_cpp.server.app")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(tiny_v1["Q4_0"]),
            "--model_alias",
            "tiny-lcp",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "1024",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # uvicorn announces when it is listening
            if "Uvicorn running" in line or "Application startup complete" in line:
                break
        engine = RemoteEngine(RemoteSettings(f"http://127.0.0.1:{port}/v1", "tiny-lcp"))
        assert engine.load().name == "tiny-lcp"
        generation = engine.generate(GenerationRequest((Message("user", "Hi"),), SamplingSettings(max_new_tokens=5)))
        text = generation.run_to_end()
        assert text and generation.stats is not None and generation.stats.generated_tokens > 0
    finally:
        process.terminate()
        process.wait(30)
