"""The window's API-server toggle and a remote model as the window's model source."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from PySide6.QtCore import Qt

from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings
from app.gui.main_window import MainWindow
from app.server.run import start_in_background
from tests.gui.helpers import choose, new_window


@pytest.fixture
def window(qtbot, tiny_v1: dict[str, Path]) -> MainWindow:
    window = MainWindow(load_on_start=False)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.controller.model_loaded, timeout=60_000):
        window.load_model(str(tiny_v1["Q4_0"]))
    window.max_tokens.setValue(6)
    return window


def test_the_window_serves_its_model_to_other_apps(qtbot, window: MainWindow, demo_model: Path) -> None:
    window.server_port = 0  # any free port; a person gets 8080
    window.serve_action.trigger()  # Server ▸ Serve this model, as the menu triggers it
    assert window.serve_action.isChecked() and window.api_server is not None
    assert window.server_indicator.isVisibleTo(window)
    assert window.server_indicator.text().startswith("API on :")  # lasting, not a 10 s status message
    client = openai.OpenAI(base_url=window.api_server.url + "/v1", api_key="none", max_retries=0)
    model_id = client.models.list().data[0].id
    assert model_id == "mixtral-tiny-v1-Q4_0"
    reply = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.usage.completion_tokens == 4
    window.input.setPlainText("and the window still chats")
    with qtbot.waitSignal(window.controller.reply_finished, timeout=60_000):
        qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(window.controller.model_loaded, timeout=60_000):
        window.load_model(str(demo_model))  # the chat switches model: the server follows
    assert client.models.list().data[0].id == demo_model.stem
    switched = client.chat.completions.create(
        model=demo_model.stem, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert switched.model == demo_model.stem and demo_model.stem in window.server_indicator.toolTip()
    window.server_copy_action.trigger()  # the indicator's menu: Copy URL
    from PySide6.QtGui import QGuiApplication

    assert QGuiApplication.clipboard().text() == window.api_server.url + "/v1"
    window.server_stop_action.trigger()  # the indicator's menu: Stop the API server
    assert window.api_server is None and not window.serve_action.isChecked()
    assert not window.server_indicator.isVisibleTo(window)


def connect_to(qtbot, window: MainWindow, url: str, model: str, key: str) -> None:
    """Choose "Use a remote model…" in the model picker, fill in the form and click Connect."""
    from app.gui.dialogs import RemoteModelDialog

    choose(qtbot, window.model_picker, "Use a remote model…")
    dialog = next(d for d in window.findChildren(RemoteModelDialog) if d.isVisible())
    for field, text in ((dialog.url, url), (dialog.model, model), (dialog.key, key)):
        field.selectAll()
        qtbot.keyClicks(field, text)
    qtbot.mouseClick(dialog.ok_button, Qt.MouseButton.LeftButton)


def test_the_window_can_chat_with_a_remote_model(qtbot, tiny_v1: dict[str, Path]) -> None:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q2_K"]), n_ctx=1024))
    server = start_in_background(engine, "far-away", api_key="k")
    try:
        window = new_window(qtbot)
        with qtbot.waitSignal(window.controller.model_loaded, timeout=60_000):
            connect_to(qtbot, window, server.url + "/v1", "far-away", "k")
        assert window.status_backend.text() == "remote"
        window.max_tokens.setValue(5)
        window.input.setPlainText("Hello over there")
        with qtbot.waitSignal(window.controller.reply_finished, timeout=60_000) as blocker:
            qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
        generation = blocker.args[0]
        assert generation.text and generation.stats.generated_tokens == 5
        assert [m.role for m in window.store.messages(window.conversation.id)] == ["user", "assistant"]
        with qtbot.waitSignal(window.controller.model_load_failed, timeout=60_000) as failed:
            connect_to(qtbot, window, server.url + "/v1", "far-away", "wrong-key")
        assert "refused the API key" in str(failed.args[0])
    finally:
        server.stop()


def test_the_window_and_an_api_client_stream_at_the_same_time(qtbot, window: MainWindow) -> None:
    import threading

    window.toggle_server(True, port=0)
    assert window.api_server is not None
    client = openai.OpenAI(base_url=window.api_server.url + "/v1", api_key="none", max_retries=0, timeout=120)
    model_id = client.models.list().data[0].id
    api_started = threading.Event()
    api_text: list[str] = []

    def api_stream() -> None:
        stream = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "a long story"}], max_tokens=1500, stream=True
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                api_text.append(chunk.choices[0].delta.content)
                api_started.set()

    reader = threading.Thread(target=api_stream)
    reader.start()
    try:
        assert api_started.wait(60)
        api_ticket = window.api_server.service.recent[-1]
        qtbot.waitUntil(lambda: "answering" in window.status_engine.text(), timeout=5_000)  # the status bar shows it
        window.max_tokens.setValue(24)
        window.input.setPlainText("meanwhile, in the window")
        with qtbot.waitSignal(window.controller.reply_finished, timeout=60_000) as blocker:
            qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
        reply = blocker.args[0]
        assert reply.stats.generated_tokens > 0 and reply.error is None
        assert not api_ticket.finished.is_set()  # the window did not wait for the API request to end
    finally:
        reader.join(120)
    assert api_ticket.stats is not None and api_ticket.error is None
    assert "".join(api_text) == api_ticket.text
    window.toggle_server(False)
