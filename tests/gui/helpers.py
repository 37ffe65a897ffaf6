"""What a person does with the window, as test steps: open it on a model, type and send, click, pick."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox

from app.gui.main_window import MainWindow

LOAD_TIMEOUT = 60_000
REPLY_TIMEOUT = 120_000


def open_window(qtbot, model: Path) -> MainWindow:
    window = MainWindow(load_on_start=False)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.controller.model_loaded, timeout=LOAD_TIMEOUT):
        window.load_model(str(model))
    return window


def send(qtbot, window: MainWindow, text: str):
    """Type ``text`` into the message box and click Send; returns the finished reply's ticket."""
    window.input.setFocus()
    window.input.clear()
    qtbot.keyClicks(window.input, text)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=REPLY_TIMEOUT) as blocker:
        qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
    return blocker.args[0]


def click(qtbot, button) -> None:
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def choose(qtbot, combo: QComboBox, text: str) -> None:
    """Open the combo box's list and click the item called ``text``."""
    index = combo.findText(text)
    assert index >= 0, f"{text!r} is not in {[combo.itemText(i) for i in range(combo.count())]}"
    combo.showPopup()
    view = combo.view()
    qtbot.waitUntil(view.isVisible)
    rect = view.visualRect(view.model().index(index, 0))
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def shown_transcript(qtbot, width: int = 500, height: int = 400):
    """A transcript view on its own, shown at ``width`` x ``height``; returns ``(model, view)``."""
    from app.gui.transcript import TranscriptModel, TranscriptView

    model = TranscriptModel()
    view = TranscriptView()
    view.set_model(model)
    qtbot.addWidget(view)
    view.resize(width, height)
    view.show()
    qtbot.waitExposed(view)
    return model, view


def stored(window: MainWindow) -> list[tuple[str, str]]:
    assert window.conversation is not None
    return [(m.role, m.content) for m in window.store.messages(window.conversation.id)]
