"""The README's tour of the app, walked as a new user does on a fresh data folder: every step is a click, a key,
a menu action or typing, and each step checks what the person would see."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QContextMenuEvent, QGuiApplication
from PySide6.QtWidgets import QApplication, QDialogButtonBox, QMenu

from app.core.models import catalog
from app.gui.main_window import MainWindow
from app.gui.settings_dialog import SettingsDialog
from tests.gui.helpers import (
    LOAD_TIMEOUT,
    REPLY_TIMEOUT,
    answer_dialog,
    choose,
    click,
    click_conversation,
    press,
    settle,
    stored,
    trigger,
    type_text,
)

DOWNLOADED = "mixtral-8x7b-instruct:Q2_K"
UNREACHABLE = "mixtral-8x7b:Q2_K"


def launch(qtbot) -> MainWindow:
    """Start the app as its command does: the window opens and loads the last model (or the demo)."""
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    with qtbot.waitSignal(window.controller.model_loaded, timeout=LOAD_TIMEOUT):
        pass
    settle(qtbot, window)
    return window


def enter(qtbot, window: MainWindow, text: str):
    """Type a message and press Enter; returns the finished reply."""
    qtbot.keyClicks(window.input, text)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=REPLY_TIMEOUT) as finished:
        qtbot.keyClick(window.input, Qt.Key.Key_Return)
    settle(qtbot, window)
    return finished.args[0]


def right_click_conversation(window: MainWindow, row: int) -> QMenu:
    viewport = window.list_view.viewport()
    spot = window.list_view.visualRect(window.list_model.index(row)).center()
    QApplication.sendEvent(
        viewport, QContextMenuEvent(QContextMenuEvent.Reason.Mouse, spot, viewport.mapToGlobal(spot))
    )
    return next(m for m in window.list_view.findChildren(QMenu, "conversationMenu") if m.isVisible())


def click_row(qtbot, manager, entry_id: str) -> None:
    row = manager.model.row_of(entry_id)
    manager.table.scrollTo(manager.model.index(row, 0))
    spot = manager.table.visualRect(manager.model.index(row, 0)).center()
    qtbot.mouseClick(manager.table.viewport(), Qt.MouseButton.LeftButton, pos=spot)
    assert manager.selected().entry.id == entry_id


def models_served(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as response:
        return [item["id"] for item in json.load(response)["data"]]


def test_the_readme_tour(qtbot, demo_model: Path, fake_hub, tiny_v1: dict[str, Path], monkeypatch) -> None:
    entry = catalog.entry("mixtral-8x7b-instruct", "Q2_K")
    fake_hub.add(entry.model.repo, tiny_v1["Q4_0"], entry.quant.files[0].name)

    # first launch on a fresh data folder: the demo model loads by itself, an empty chat is ready
    window = launch(qtbot)
    assert window.controller.info.path == str(demo_model)
    assert window.list_model.rowCount() == 1 and window.transcript.rowCount() == 0
    assert demo_model.stem in window.input.placeholderText()
    window.temperature.setValue(0.0)
    window.max_tokens.setValue(24)

    # send, and the reply streams in
    streamed: list[str] = []
    window.controller.text_streamed.connect(streamed.append)
    first = enter(qtbot, window, "What is the capital of France?")
    assert len(streamed) >= 1 and "".join(streamed) == first.text
    assert window.chat_view.message_widgets[-1].row.text == first.text
    assert window.status_speed.text().endswith("tok/s")

    # stop a long reply with Esc: what came is kept and marked
    window.max_tokens.setValue(400)
    qtbot.keyClicks(window.input, "Write a long poem about the sea.")
    with qtbot.waitSignal(window.controller.reply_finished, timeout=REPLY_TIMEOUT) as stopped:
        with qtbot.waitSignal(window.controller.text_streamed, timeout=REPLY_TIMEOUT):
            qtbot.keyClick(window.input, Qt.Key.Key_Return)
        qtbot.keyClick(window.input, Qt.Key.Key_Escape)
    settle(qtbot, window)
    assert stopped.args[0].stats.generated_tokens < 400
    assert "stopped by you" in window.chat_view.message_widgets[-1].status.text()

    # regenerate: the earlier version is kept and can be stepped back to
    window.max_tokens.setValue(16)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=REPLY_TIMEOUT) as again:
        click(qtbot, window.chat_view.message_widgets[-1].regenerate_button)
    settle(qtbot, window)
    reply = window.chat_view.message_widgets[-1]
    assert reply.version_label.text() == "2/2" and reply.row.text == again.args[0].text
    click(qtbot, reply.previous_button)
    assert reply.version_label.text() == "1/2" and reply.row.text == stopped.args[0].text

    # edit the first question and send it again: what answered the old text goes
    click(qtbot, window.chat_view.message_widgets[0].edit_button)
    assert window.input.toPlainText() == "What is the capital of France?"
    window.input.selectAll()
    edited = enter(qtbot, window, "What is the capital of Italy?")
    assert stored(qtbot, window) == [("user", "What is the capital of Italy?"), ("assistant", edited.text)]
    tour_chat = window.conversation.id

    # new chat: the button, File ▸ New chat and Ctrl+N
    count = window.list_model.rowCount()
    click(qtbot, window.new_button)
    trigger(qtbot, window, window.new_action)
    press(qtbot, window.input, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert window.list_model.rowCount() == count + 3 and window.transcript.rowCount() == 0

    # search finds the chat by its text; clearing shows them all
    press(qtbot, window.input, Qt.Key.Key_K, Qt.KeyboardModifier.ControlModifier)
    assert window.search.hasFocus()
    type_text(qtbot, window.search, "Italy")
    assert window.list_model.rowCount() == 1
    window.search.clear()
    settle(qtbot, window)
    assert window.list_model.rowCount() == count + 3

    # rename from the context menu
    click_conversation(qtbot, window, tour_chat)
    menu = right_click_conversation(window, window.list_model.row_of(tour_chat))
    next(a for a in menu.actions() if a.text() == "Rename…").trigger()
    answer_dialog(qtbot, window, "renameConversation", "Capitals")
    assert window.list_model.data(window.list_model.index(window.list_model.row_of(tour_chat))) == "Capitals"

    # delete, and undo
    click(qtbot, window.delete_button)
    assert window.list_model.row_of(tour_chat) == -1 and window.undo_button.isVisible()
    click(qtbot, window.undo_button)
    assert window.conversation.id == tour_chat and window.transcript.rowCount() == 2

    # restart: everything is back
    window.close()
    window = launch(qtbot)
    assert window.controller.info.path == str(demo_model)
    assert window.list_model.row_of(tour_chat) >= 0
    click_conversation(qtbot, window, tour_chat)
    assert window.conversation.title == "Capitals"
    assert [row.text for row in window.transcript.rows()] == ["What is the capital of Italy?", edited.text]

    # a system prompt saved as a named preset
    window.system_edit.selectAll()
    type_text(qtbot, window.system_edit, "Answer like a tour guide.")
    trigger(qtbot, window, window.settings_panel.preset_new_action)
    answer_dialog(qtbot, window, "presetName", "Tour guide")
    assert window.preset_combo.currentText() == "Tour guide ★"

    # Settings (Ctrl+,): dark theme
    press(qtbot, window.input, Qt.Key.Key_Comma, Qt.KeyboardModifier.ControlModifier)
    dialog = next(d for d in window.findChildren(SettingsDialog) if d.isVisible())
    choose(qtbot, dialog.theme, "dark")
    ok = dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok)
    with qtbot.waitSignal(dialog.accepted):
        click(qtbot, ok)
    settle(qtbot, window)
    assert window.settings.theme == "dark" and QGuiApplication.palette().window().color().lightness() < 128

    # the model manager (Ctrl+M): a download from the hub, then the hub unreachable
    press(qtbot, window.input, Qt.Key.Key_M, Qt.KeyboardModifier.ControlModifier)
    manager = window.model_manager
    assert manager is not None and manager.isVisible()
    qtbot.waitUntil(lambda: manager.model.row_of(DOWNLOADED) >= 0, timeout=30_000)
    click_row(qtbot, manager, DOWNLOADED)
    done = qtbot.waitSignal(
        window.downloads.progressed, timeout=LOAD_TIMEOUT, check_params_cb=lambda p: p.state == "done"
    )
    with qtbot.waitSignal(window.models_listed, timeout=LOAD_TIMEOUT), done:  # and the picker lists the new model
        click(qtbot, manager.buttons["Download"])
    stem = Path(entry.quant.files[0].name).stem
    assert window.model_picker.findText(stem) >= 0

    silent = socket.socket()  # nothing answers on this port: connections are refused
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    silent.close()
    import huggingface_hub.constants

    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    click_row(qtbot, manager, UNREACHABLE)
    with qtbot.waitSignal(
        window.downloads.progressed, timeout=20_000, check_params_cb=lambda p: p.state == "failed"
    ) as failed:
        click(qtbot, manager.buttons["Download"])
    assert "Could not reach the hub" in failed.args[0].message
    qtbot.keyClick(manager.table, Qt.Key.Key_Escape)
    assert not manager.isVisible()

    # serve the chat's model, then switch the chat to the downloaded one: the API follows
    window.server_port = 0  # any free port; a person gets 8080
    trigger(qtbot, window, window.serve_action)
    assert window.server_indicator.isVisibleTo(window)
    assert models_served(window.api_server.url) == [demo_model.stem]
    with qtbot.waitSignal(window.controller.model_loaded, timeout=LOAD_TIMEOUT):
        choose(qtbot, window.model_picker, stem)
    assert models_served(window.api_server.url) == [stem]
    assert stem in window.server_indicator.toolTip()
