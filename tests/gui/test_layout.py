"""Nothing is cut off: at 800×600, with the smallest and the largest font Settings offers, every button and
label of the main window and the model manager shows its whole text (or ends it in "…" and has a tooltip),
and the model manager's table fits its width without a sideways scroll bar."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QRect, Qt
from PySide6.QtWidgets import QAbstractButton, QComboBox, QLabel, QWidget

from app.gui.elided_label import ElidedLabel
from app.gui.theme import apply_theme
from tests.gui.helpers import open_window, press


def cut_off(window: QWidget) -> list[str]:
    """The visible buttons and one-line labels of ``window`` narrower than their text, or outside the window."""
    found = []
    frame = QRect(0, 0, window.width(), window.height())
    for widget in window.findChildren(QWidget):
        if not widget.isVisibleTo(window) or isinstance(widget, ElidedLabel):
            continue
        one_line = isinstance(widget, QAbstractButton) or (isinstance(widget, QLabel) and not widget.wordWrap())
        if not one_line or not widget.text() or isinstance(widget.parent(), QComboBox):
            continue
        text = widget.text()
        where = QRect(widget.mapTo(window, widget.rect().topLeft()), widget.size())
        if widget.width() < widget.minimumSizeHint().width() or not frame.contains(where):
            found.append(f"{type(widget).__name__} {text!r}: {widget.width()} of {widget.minimumSizeHint().width()} px")
    return found


def settled(qtbot, window: QWidget) -> None:
    """Nothing of ``window`` is cut off once its layouts have settled (they settle over a few event rounds)."""
    try:
        qtbot.waitUntil(lambda: cut_off(window) == [], timeout=2_000)
    except qtbot.TimeoutError:
        assert cut_off(window) == []  # names what is cut off
    assert window.width() <= 800  # the window did not grow past the screen to make room


@pytest.fixture
def font_size(request):
    apply_theme("light", request.param)
    yield request.param
    apply_theme("light", 11)


@pytest.mark.parametrize("font_size", [9, 16], indirect=True)
def test_nothing_is_cut_off_at_800x600(qtbot, demo_model: Path, font_size: int) -> None:
    window = open_window(qtbot, demo_model)
    window.resize(800, 600)
    window.show()
    qtbot.waitExposed(window)
    settled(qtbot, window)
    assert window.status_model.text() == Path(window.controller.info.path).stem  # shortened on screen only
    if not window.settings_panel.isVisible():  # collapsed in a narrow window: open it as a person does
        qtbot.mouseClick(window.settings_toggle, Qt.MouseButton.LeftButton)
    assert window.settings_panel.isVisible()
    settled(qtbot, window)

    press(qtbot, window.input, Qt.Key.Key_M, Qt.KeyboardModifier.ControlModifier)
    manager = window.model_manager
    assert manager is not None and manager.isVisible()
    qtbot.waitUntil(lambda: bool(manager.model.rows) and all(row.plan for row in manager.model.rows), timeout=30_000)
    manager.resize(800, 600)
    settled(qtbot, manager)
    assert manager.table.horizontalScrollBar().maximum() == 0  # every column on screen
