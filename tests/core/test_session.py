"""ChatSession: history, system prompt and partial replies, as the console chat uses them."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.errors import ContextOverflowError
from app.core.prompts import Message
from app.core.runtime.host import EngineHost
from app.core.runtime.session import ChatSession
from app.core.runtime.types import LoadSettings, SamplingSettings


@pytest.fixture(scope="module")
def engine(tiny_v1: dict[str, Path]) -> EngineHost:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=512))
    return engine


def test_replies_join_the_history_and_the_system_prompt_leads(engine: EngineHost) -> None:
    session = ChatSession(engine, system="Be brief.", sampling=SamplingSettings(max_new_tokens=4))
    reply = "".join(session.stream("Hi"))
    assert session.messages() == (Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", reply))
    session.reset()
    assert session.messages() == (Message("system", "Be brief."),)
    session.set_system("")
    assert session.messages() == ()


def test_a_cancelled_reply_keeps_what_was_shown(engine: EngineHost) -> None:
    session = ChatSession(engine, sampling=SamplingSettings(max_new_tokens=50))
    shown = ""
    for delta in session.stream("Talk"):
        shown += delta
        if len(shown) > 3:
            session.cancel()
    assert session.last is not None and session.last.stats is not None
    assert session.last.stats.stop_reason == "cancelled"
    assert session.history[-1] == Message("assistant", shown)


def test_a_message_that_cannot_fit_is_not_kept(engine: EngineHost) -> None:
    session = ChatSession(engine, sampling=SamplingSettings(max_new_tokens=8))
    with pytest.raises(ContextOverflowError):
        list(session.stream("word " * 2000))
    assert session.history == []
