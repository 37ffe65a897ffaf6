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
    settle(qtbot, window)
    return window


def new_window(qtbot) -> MainWindow:
    """A window with no model loaded, its conversations read and the first one on screen."""
    window = MainWindow(load_on_start=False)
    qtbot.addWidget(window)
    settle(qtbot, window)
    return window


def settle(qtbot, window: MainWindow) -> None:
    """Wait until what the window handed to its disk thread is done and on screen, as a person waits to see the
    result of a click (the window never waits for the disk itself)."""
    while window.disk.pending:
        with qtbot.waitSignal(window.disk.idle, timeout=10_000):
            pass


def send(qtbot, window: MainWindow, text: str):
    """Type ``text`` into the message box and click Send; returns the finished reply's ticket."""
    window.input.setFocus()
    window.input.clear()
    qtbot.keyClicks(window.input, text)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=REPLY_TIMEOUT) as blocker:
        qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
    settle(qtbot, window)
    return blocker.args[0]


def click(qtbot, button) -> None:
    """Click ``button``; in the main window, wait until what the click started on the disk shows."""
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    _settle_window_of(qtbot, button)


def click_conversation(qtbot, window: MainWindow, conversation_id: int) -> None:
    """Click a conversation in the list; returns once its messages are on screen."""
    model, view = window.list_model, window.list_view
    rect = view.visualRect(model.index(model.row_of(conversation_id)))
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    settle(qtbot, window)


def menu_action(window, menu: str, text: str):
    """The action called ``text`` in the window's menu called ``menu`` (as shown, "&" included)."""
    for top in window.menuBar().actions():
        if top.menu() is not None and top.text() == menu:
            found = [a for a in top.menu().actions() if a.text() == text]
            assert found, f"no {text!r} in {menu}: {[a.text() for a in top.menu().actions()]}"
            return found[0]
    raise AssertionError(f"no menu {menu!r}")


def trigger(qtbot, window: MainWindow, action) -> None:
    """Trigger a menu or toolbar action as its menu does, and wait for what it started on the disk."""
    action.trigger()
    settle(qtbot, window)


def press(qtbot, widget, key, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    """Press a key (with a modifier) in ``widget`` (its window made active first, as a person clicks back into
    it after a dialog), and wait for what it started on the disk."""
    if widget.isVisible() and not widget.window().isActiveWindow():
        widget.window().activateWindow()
        qtbot.waitUntil(widget.window().isActiveWindow)
    qtbot.keyClick(widget, key, modifier)
    _settle_window_of(qtbot, widget)


def type_text(qtbot, widget, text: str) -> None:
    """Type ``text`` into ``widget``, and wait for what it started on the disk (a search, a setting)."""
    qtbot.keyClicks(widget, text)
    _settle_window_of(qtbot, widget)


def answer_dialog(qtbot, window: MainWindow, name: str, text: str) -> None:
    """Type ``text`` into the open input dialog called ``name`` and press Enter."""
    from PySide6.QtWidgets import QInputDialog, QLineEdit

    dialog = next(d for d in window.findChildren(QInputDialog, name) if d.isVisible())  # closed ones await deletion
    field = dialog.findChild(QLineEdit)
    field.selectAll()
    qtbot.keyClicks(field, text)
    with qtbot.waitSignal(dialog.finished):
        qtbot.keyClick(field, Qt.Key.Key_Return)
    settle(qtbot, window)


def choose_file(qtbot, parent, path: Path) -> None:
    """In the file chooser open over ``parent``, paste ``path`` as the file name and click Open (or Save).
    (Typed key by key, the chooser's path completer opens a popup that takes the click.)"""
    from PySide6.QtWidgets import QDialogButtonBox, QFileDialog, QLineEdit

    qtbot.waitUntil(lambda: any(d.isVisible() for d in parent.findChildren(QFileDialog)))
    dialog = next(d for d in parent.findChildren(QFileDialog) if d.isVisible())
    field = dialog.findChild(QLineEdit, "fileNameEdit")
    field.setFocus()
    field.setText(str(path))
    buttons = dialog.findChild(QDialogButtonBox)
    accept = next(b for b in buttons.buttons() if buttons.buttonRole(b) == QDialogButtonBox.ButtonRole.AcceptRole)
    qtbot.waitUntil(accept.isEnabled)
    with qtbot.waitSignal(dialog.finished):
        qtbot.mouseClick(accept, Qt.MouseButton.LeftButton)
    _settle_window_of(qtbot, parent)


def _settle_window_of(qtbot, widget) -> None:
    window = widget.window()
    if isinstance(window, MainWindow):
        settle(qtbot, window)


def choose(qtbot, combo: QComboBox, text: str) -> None:
    """Open the combo box's list and click the item called ``text``."""
    index = combo.findText(text)
    assert index >= 0, f"{text!r} is not in {[combo.itemText(i) for i in range(combo.count())]}"
    combo.showPopup()
    view = combo.view()
    qtbot.waitUntil(view.isVisible)
    rect = view.visualRect(view.model().index(index, 0))
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    _settle_window_of(qtbot, combo)


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


def stored(qtbot, window: MainWindow) -> list[tuple[str, str]]:
    """The conversation on screen as the store has it, once what was queued for the disk is written."""
    settle(qtbot, window)
    assert window.conversation is not None
    return [(m.role, m.content) for m in window.store.messages(window.conversation.id)]
