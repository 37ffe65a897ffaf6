"""The transcript model and view: rows, streaming, code blocks and per-message actions, driven by clicks."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QLabel

from app.gui.main_window import MainWindow
from app.gui.transcript import CodeBlock, MarkdownSplitter, TranscriptModel, TranscriptRow
from tests.gui.helpers import REPLY_TIMEOUT, click, open_window, send, shown_transcript, stored

LONG_LINE = "x = [" + ", ".join(str(i) for i in range(200)) + "]"


def test_the_transcript_model_is_well_behaved_and_streaming_changes_one_row(qtmodeltester) -> None:
    model = TranscriptModel()
    model.set_rows([TranscriptRow("user", "hi"), TranscriptRow("assistant", "")])
    changed: list[tuple[int, int]] = []
    model.dataChanged.connect(lambda top, bottom, _roles=(): changed.append((top.row(), bottom.row())))
    model.append_text("Hel")
    model.append_text("lo")
    assert changed == [(1, 1), (1, 1)] and model.row(1).text == "Hello" and model.row(1).state == "streaming"
    qtmodeltester.check(model)


def test_markdown_is_split_at_top_level_code_blocks() -> None:
    segments = MarkdownSplitter().split(
        "Intro *text*\n\n```python\nprint(1)\n```\n\n- a list\n\nText.\n\n    indented code\n"
    )
    assert [(s.kind, s.language) for s in segments] == [("html", ""), ("code", "python"), ("html", ""), ("code", "")]
    assert "<em>text</em>" in segments[0].content and segments[1].content == "print(1)"


def test_a_code_block_scrolls_by_itself_and_copies_with_feedback(qtbot) -> None:
    model, view = shown_transcript(qtbot)
    model.set_rows([TranscriptRow("assistant", f"Here:\n\n```python\n{LONG_LINE}\n```\n")])
    block = view.message_widgets[0].findChild(CodeBlock)
    assert block.language_label.text() == "python"
    qtbot.waitUntil(lambda: block.text.horizontalScrollBar().maximum() > 0)  # its own scroll bar...
    assert view.horizontalScrollBar().maximum() == 0  # ...never the transcript's
    assert view.widget().width() <= view.viewport().width()
    click(qtbot, block.copy_button)
    assert QGuiApplication.clipboard().text() == LONG_LINE and block.copy_button.text() == "Copied ✓"
    qtbot.waitUntil(lambda: block.copy_button.text() == "Copy", timeout=3000)


def test_message_buttons_copy_and_delete(qtbot, tiny_window: MainWindow) -> None:
    window = tiny_window
    first = send(qtbot, window, "one")
    send(qtbot, window, "two")
    widgets = window.chat_view.message_widgets
    click(qtbot, widgets[1].copy_button)
    assert QGuiApplication.clipboard().text() == first.text and widgets[1].copy_button.text() == "Copied ✓"
    click(qtbot, widgets[0].delete_button)  # the first question goes; the rest moves up
    assert [text for _, text in stored(qtbot, window)] == [first.text, "two", stored(qtbot, window)[2][1]]
    assert [w.row.text for w in window.chat_view.message_widgets] == [text for _, text in stored(qtbot, window)]
    assert window.statusBar().currentMessage() == "Message deleted."


def test_prompt_processing_is_shown_before_the_first_token(qtbot, demo_model: Path) -> None:
    window = open_window(qtbot, demo_model)
    window.max_tokens.setValue(4)
    seen: list[str] = []

    def on_progress(done: int, total: int) -> None:
        label = window.chat_view.message_widgets[-1].status
        seen.append(label.text())

    window.controller.prompt_progressed.connect(on_progress)
    window.input.setPlainText("Summarise this. " + "The tide comes in and the tide goes out. " * 250)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=REPLY_TIMEOUT):
        click(qtbot, window.send_button)
    reading = [text for text in seen if text.startswith("reading the prompt…")]
    assert reading and reading[-1].endswith("tokens")
    last = window.chat_view.message_widgets[-1]
    assert "tok/s" in last.status.text() and "first token" in last.status.text()
    assert not window.chat_view.message_widgets[-1].findChild(QLabel, "messageText").text().startswith("<p>…")
