"""The chat transcript: a Qt list model with one row per message, and the view that shows it.

The model is the window's picture of the conversation on screen (the store's messages, plus the reply being
written). A streaming reply changes only its own row (``dataChanged`` for that row); the view keeps one
:class:`MessageWidget` per row and updates only the widgets of rows that changed. Markdown is split at
top-level code blocks: prose is a word-wrapped rich-text label, each code block its own widget with a
language label, a Copy button and its own horizontal scroll bar, so a long line never widens the transcript.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field, replace
from typing import Any

from markdown_it import MarkdownIt
from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QCursor, QGuiApplication, QPalette
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QTextBrowser,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

COPIED_FEEDBACK_MS = 1500
MAX_COLUMN_WIDTH = 960  # px: lines longer than this are hard to read
STATE_WAITING = "waiting"  # sent; the prompt is queued or being evaluated
STATE_STREAMING = "streaming"

_ENDINGS = {"cancelled": "stopped by you", "max_tokens": "reached the reply limit", "context_full": "context full"}
_ROLE_NAMES = {"user": "You", "assistant": "Assistant", "system": "System"}


def reply_summary(stats: dict[str, Any]) -> str:
    """``9 tokens · 107.4 tok/s · first token 0.12 s`` and, when the reply did not end by itself, why."""
    parts = [
        f"{stats.get('generated_tokens', 0)} tokens",
        f"{stats.get('generation_tokens_per_s', 0):.1f} tok/s",
    ]
    if stats.get("time_to_first_token_s"):
        parts.append(f"first token {stats['time_to_first_token_s']:.2f} s")
    ending = _ENDINGS.get(str(stats.get("stop_reason", "")))
    if ending:
        parts.append(ending)
    return " · ".join(parts)


@dataclass(frozen=True)
class TranscriptRow:
    """One message as shown. ``version`` is 0-based; ``state`` is empty once the message is complete."""

    role: str
    text: str
    stats: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    version_count: int = 1
    state: str = ""
    prompt_done: int = 0
    prompt_total: int = 0
    #: (token text, experts tooltip) per token: shown token by token by the routing inspector
    token_routes: tuple[tuple[str, str], ...] | None = None

    def status_line(self) -> str:
        """What the header says next to the role: progress while it is being written, figures after."""
        if self.state == STATE_WAITING:
            if self.prompt_total:
                return f"reading the prompt… {self.prompt_done:,}/{self.prompt_total:,} tokens"
            return "waiting for the model…"
        if self.state == STATE_STREAMING:
            return "writing…"
        return reply_summary(self.stats) if self.stats else ""


class TranscriptModel(QAbstractListModel):
    """The messages on screen, one row each; ``ROW_ROLE`` gives the :class:`TranscriptRow`."""

    ROW_ROLE = Qt.ItemDataRole.UserRole + 1

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._rows: list[TranscriptRow] = []

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return row.text
        if role == Qt.ItemDataRole.ToolTipRole:
            return row.status_line() or None
        if role == self.ROW_ROLE:
            return row
        return None

    def rows(self) -> list[TranscriptRow]:
        return list(self._rows)

    def row(self, index: int) -> TranscriptRow:
        return self._rows[index]

    def set_rows(self, rows: list[TranscriptRow]) -> None:
        """Show these rows; with as many rows as before, only the ones that differ are reported changed."""
        rows = list(rows)
        if rows and len(rows) == len(self._rows):
            for index, (old, new) in enumerate(zip(self._rows, rows, strict=True)):
                if old != new:
                    self.set_row(index, new)
            return
        self.beginResetModel()
        self._rows = rows
        self.endResetModel()

    def append(self, row: TranscriptRow) -> None:
        self.beginInsertRows(QModelIndex(), len(self._rows), len(self._rows))
        self._rows.append(row)
        self.endInsertRows()

    def remove_last(self) -> None:
        if self._rows:
            self.beginRemoveRows(QModelIndex(), len(self._rows) - 1, len(self._rows) - 1)
            self._rows.pop()
            self.endRemoveRows()

    def update(self, index: int, **changes: Any) -> None:
        """Change fields of one row (only that row is reported changed)."""
        self.set_row(index, replace(self._rows[index], **changes))

    def set_row(self, index: int, row: TranscriptRow) -> None:
        """Replace one row (only that row is reported changed)."""
        self._rows[index] = row
        model_index = self.index(index)
        self.dataChanged.emit(model_index, model_index)

    def append_text(self, text: str) -> None:
        """Streamed text for the last row (which then counts as streaming)."""
        if self._rows:
            last = self._rows[-1]
            self.update(len(self._rows) - 1, text=last.text + text, state=STATE_STREAMING)


# -- markdown ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A run of a message: ``html`` prose, or a ``code`` block with its language."""

    kind: str
    content: str
    language: str = ""


def _highlight(code: str, language: str, dark: bool) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import TextLexer, get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(language) if language else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    style = "monokai" if dark else "friendly"
    return str(highlight(code, lexer, HtmlFormatter(noclasses=True, nowrap=True, style=style)))


class MarkdownSplitter:
    """Markdown to segments: top-level code blocks become their own segments, the rest rich-text HTML."""

    def __init__(self) -> None:
        self._md = MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")

        def nested_code(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
            return f"<pre>{html.escape(tokens[idx].content)}</pre>"  # a code block inside a list or quote

        self._md.add_render_rule("fence", nested_code)
        self._md.add_render_rule("code_block", nested_code)

    def split(self, text: str) -> list[Segment]:
        tokens = self._md.parse(text)
        segments: list[Segment] = []
        start = 0
        for i, token in enumerate(tokens):
            if token.type in ("fence", "code_block") and token.level == 0:
                if i > start:
                    segments.append(Segment("html", self._render(tokens[start:i])))
                language = (token.info or "").strip().split(" ")[0]
                segments.append(Segment("code", token.content.rstrip("\n"), language))
                start = i + 1
        if start < len(tokens):
            segments.append(Segment("html", self._render(tokens[start:])))
        return segments

    def _render(self, tokens: list[Any]) -> str:
        return str(self._md.renderer.render(tokens, self._md.options, {}))


# -- widgets -------------------------------------------------------------------------------------------


def _copy_with_feedback(button: QToolButton, text: str) -> None:
    """Copy ``text`` and say so on the button for a moment."""
    QGuiApplication.clipboard().setText(text)
    label = button.property("idle_text") or button.text()
    button.setProperty("idle_text", label)
    button.setText("Copied ✓")
    QTimer.singleShot(COPIED_FEEDBACK_MS, button, lambda: button.setText(label))


def _tool_button(text: str, tip: str, name: str) -> QToolButton:
    button = QToolButton()
    button.setText(text)
    button.setToolTip(tip)
    button.setObjectName(name)
    button.setAccessibleName(tip)
    button.setAutoRaise(True)
    button.setCursor(Qt.CursorShape.PointingHandCursor)
    return button


class CodeBlock(QFrame):
    """A code block: language label and Copy above, the code with its own horizontal scroll bar below."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("codeBlock")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.code = ""
        self.language_label = QLabel()
        self.copy_button = _tool_button("Copy", "Copy this code", "copyCode")
        self.copy_button.clicked.connect(lambda: _copy_with_feedback(self.copy_button, self.code))
        self.text = QTextBrowser()
        self.text.setLineWrapMode(QTextBrowser.LineWrapMode.NoWrap)
        self.text.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.text.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.text.setFrameShape(QFrame.Shape.NoFrame)
        self.text.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.text.horizontalScrollBar().rangeChanged.connect(lambda *_: self._fit_height())
        head = QHBoxLayout()
        head.setContentsMargins(8, 2, 2, 0)
        head.addWidget(self.language_label)
        head.addStretch(1)
        head.addWidget(self.copy_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(1, 1, 1, 1)
        layout.setSpacing(0)
        layout.addLayout(head)
        layout.addWidget(self.text)
        self._shown: tuple[str, str, bool] | None = None

    def show_code(self, code: str, language: str, dark: bool) -> None:
        if self._shown == (code, language, dark):
            return
        self._shown = (code, language, dark)
        self.code = code
        self.language_label.setText(language or "code")
        self.text.setHtml(f"<pre style='margin:0'>{_highlight(code, language, dark)}</pre>")
        self._fit_height()

    def _fit_height(self) -> None:
        document = self.text.document()
        height = int(document.size().height()) + 2 * self.text.frameWidth() + 2
        bar = self.text.horizontalScrollBar()
        if bar.maximum() > 0:
            height += bar.sizeHint().height()
        self.text.setFixedHeight(height)


class MessageWidget(QFrame):
    """One message: who and how (figures or progress), the text, and its actions."""

    def __init__(self, splitter: MarkdownSplitter, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._splitter = splitter
        self.row: TranscriptRow | None = None
        self.dark = False
        self.title = QLabel()
        self.status = QLabel()
        self.status.setObjectName("messageStatus")
        self.status.setWordWrap(True)
        self.copy_button = _tool_button("Copy", "Copy this message", "copyMessage")
        self.edit_button = _tool_button("Edit", "Edit this message and send it again", "editMessage")
        self.regenerate_button = _tool_button("Regenerate", "Write this reply again (this one is kept)", "regenerate")
        self.delete_button = _tool_button("Delete", "Delete this message", "deleteMessage")
        self.previous_button = _tool_button("‹", "Previous version", "previousVersion")
        self.version_label = QLabel()
        self.version_label.setObjectName("versionLabel")
        self.next_button = _tool_button("›", "Next version", "nextVersion")
        self.copy_button.clicked.connect(
            lambda: _copy_with_feedback(self.copy_button, self.row.text if self.row else "")
        )
        head = QHBoxLayout()
        head.setContentsMargins(0, 0, 0, 0)
        head.addWidget(self.title)
        head.addWidget(self.status, 1)
        actions = QHBoxLayout()
        actions.setContentsMargins(0, 0, 0, 0)
        actions.setSpacing(2)
        for widget in (self.previous_button, self.version_label, self.next_button):
            actions.addWidget(widget)
        actions.addStretch(1)
        for button in (self.copy_button, self.edit_button, self.regenerate_button, self.delete_button):
            actions.addWidget(button)
        self.body = QVBoxLayout()
        self.body.setContentsMargins(0, 0, 0, 0)
        self.body.setSpacing(6)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 4)
        layout.setSpacing(4)
        layout.addLayout(head)
        layout.addLayout(self.body)
        layout.addLayout(actions)
        self._segments: list[QWidget] = []

    def show_row(self, row: TranscriptRow, *, last: bool, busy: bool, dark: bool) -> None:
        """Show ``row``; widgets whose content did not change are left alone."""
        previous, self.row = self.row, row
        restyle = dark != self.dark
        self.dark = dark
        self.setObjectName("userMessage" if row.role == "user" else "message")
        if previous is None or previous.role != row.role or restyle:
            self.title.setText(f"<b>{html.escape(_ROLE_NAMES.get(row.role, row.role))}</b>")
            self._style()
        self.status.setText(row.status_line())
        if previous is None or previous.text != row.text or previous.token_routes != row.token_routes or restyle:
            self._show_body(row)
        complete = not row.state
        self.copy_button.setVisible(bool(row.text))
        self.edit_button.setVisible(row.role == "user")
        self.edit_button.setEnabled(not busy)
        self.regenerate_button.setVisible(row.role == "assistant" and last)
        self.regenerate_button.setEnabled(not busy)
        self.delete_button.setEnabled(not busy and complete)
        versions = row.version_count > 1
        for widget in (self.previous_button, self.version_label, self.next_button):
            widget.setVisible(versions)
        self.version_label.setText(f"{row.version + 1}/{row.version_count}")
        switchable = last and not busy and complete
        self.previous_button.setEnabled(switchable and row.version > 0)
        self.next_button.setEnabled(switchable and row.version < row.version_count - 1)
        tip = "" if switchable else "Only the latest reply's versions can be switched, when no reply is being written"
        self.version_label.setToolTip(tip)

    def _style(self) -> None:
        palette = self.palette()
        muted = palette.color(QPalette.ColorRole.PlaceholderText).name()
        self.status.setStyleSheet(f"color:{muted};")
        self.version_label.setStyleSheet(f"color:{muted};")
        if self.objectName() == "userMessage":
            shade = palette.color(QPalette.ColorRole.AlternateBase).name()
            self.setStyleSheet(f"#userMessage {{ background:{shade}; border-radius:8px; }}")
        else:
            self.setStyleSheet("")

    def _show_body(self, row: TranscriptRow) -> None:
        if row.token_routes:
            segments = [Segment("routes", "")]
        elif not row.text:
            segments = [Segment("html", "<p>…</p>")]
        else:
            segments = self._splitter.split(row.text)
        while len(self._segments) > len(segments):
            self._segments.pop().deleteLater()
        for i, segment in enumerate(segments):
            kind = "code" if segment.kind == "code" else "label"
            widget = self._segments[i] if i < len(self._segments) else None
            if widget is None or widget.property("segment_kind") != kind:
                fresh = self._new_segment(kind)
                if widget is not None:
                    self.body.replaceWidget(widget, fresh)
                    widget.deleteLater()
                    self._segments[i] = fresh
                else:
                    self.body.addWidget(fresh)
                    self._segments.append(fresh)
                widget = fresh
            if isinstance(widget, CodeBlock):
                widget.show_code(segment.content, segment.language, self.dark)
            elif isinstance(widget, QLabel):
                text = self._routes_html(row) if segment.kind == "routes" else segment.content
                if widget.text() != text:
                    widget.setText(text)

    def _new_segment(self, kind: str) -> QWidget:
        widget: QWidget
        if kind == "code":
            widget = CodeBlock()
        else:
            label = QLabel()
            label.setObjectName("messageText")
            label.setTextFormat(Qt.TextFormat.RichText)
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
            label.setOpenExternalLinks(True)
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            label.linkHovered.connect(self._show_route)
            widget = label
        widget.setProperty("segment_kind", kind)
        return widget

    def _routes_html(self, row: TranscriptRow) -> str:
        shades = ("#ffe0c2", "#fff1e0") if not self.dark else ("#5a3b1c", "#3d2914")
        spans = "".join(
            f'<a href="route:{i}" style="text-decoration:none;color:{"#f0f0f0" if self.dark else "#1f1f1f"};'
            f'background:{shades[i % 2]};">{html.escape(text)}</a>'
            for i, (text, _tip) in enumerate(row.token_routes or ())
        )
        return f"<p>{spans}</p><p><small>Hover a token to see its experts.</small></p>"

    def route_tip(self, anchor: str) -> str:
        """The experts of the token behind a ``route:N`` link, or an empty string."""
        kind, _, number = anchor.partition(":")
        routes = self.row.token_routes if self.row else None
        if kind != "route" or not number.isdigit() or not routes or int(number) >= len(routes):
            return ""
        return routes[int(number)][1]

    def _show_route(self, anchor: str) -> None:
        tip = self.route_tip(anchor)
        if tip:
            QToolTip.showText(QCursor.pos(), tip, self)
        else:
            QToolTip.hideText()


class TranscriptView(QScrollArea):
    """Shows a :class:`TranscriptModel`: one :class:`MessageWidget` per row, following the end while a reply
    streams unless the reader scrolled up.

    Signals:
        edit_requested(int), regenerate_requested(int), delete_requested(int): a message's button, by row
        version_requested(int, int): (row, version) from a message's ‹ › buttons
    """

    edit_requested = Signal(int)
    regenerate_requested = Signal(int)
    delete_requested = Signal(int)
    version_requested = Signal(int, int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Conversation")
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self._content = QWidget()
        self._content.setObjectName("transcript")
        self._column = QWidget()  # the messages, in a column of readable width centred in a wide window
        self._column.setMaximumWidth(MAX_COLUMN_WIDTH)
        centred = QHBoxLayout(self._content)
        centred.setContentsMargins(0, 0, 0, 0)
        centred.addWidget(self._column)
        self._layout = QVBoxLayout(self._column)
        self._layout.setContentsMargins(12, 8, 12, 8)
        self._layout.setSpacing(8)
        self._layout.addStretch(1)
        self.setWidget(self._content)
        self._splitter = MarkdownSplitter()
        self.message_widgets: list[MessageWidget] = []
        self.model: TranscriptModel | None = None
        self.dark = False
        self.busy = False
        self._follow = True
        bar = self.verticalScrollBar()
        bar.rangeChanged.connect(self._on_range_changed)
        bar.valueChanged.connect(lambda value: setattr(self, "_follow", value >= bar.maximum() - 4))

    def set_model(self, model: TranscriptModel) -> None:
        self.model = model
        model.modelReset.connect(self._rebuild)
        model.rowsInserted.connect(lambda _parent, first, last: self._insert(first, last))
        model.rowsRemoved.connect(lambda _parent, first, last: self._remove(first, last))
        model.dataChanged.connect(lambda top, bottom, _roles=(): self._refresh(top.row(), bottom.row()))
        self._rebuild()

    def set_dark(self, dark: bool) -> None:
        self.dark = dark
        self._refresh(0, len(self.message_widgets) - 1)

    def set_busy(self, busy: bool) -> None:
        """While a reply is written, the messages' edit/delete/version actions wait."""
        self.busy = busy
        self._refresh(0, len(self.message_widgets) - 1)

    def plain_text(self) -> str:
        """Everything the transcript shows, as text (headers, figures and messages)."""
        lines = []
        for widget in self.message_widgets:
            if widget.row is not None:
                head = _ROLE_NAMES.get(widget.row.role, widget.row.role)
                status = widget.row.status_line()
                lines.append(f"{head}{' · ' + status if status else ''}\n{widget.row.text}")
        return "\n\n".join(lines)

    def _rebuild(self) -> None:
        for widget in self.message_widgets:
            self._layout.removeWidget(widget)
            widget.deleteLater()
        self.message_widgets = []
        self._follow = True
        if self.model is not None and self.model.rowCount():
            self._insert(0, self.model.rowCount() - 1)

    def _insert(self, first: int, last: int) -> None:
        for row in range(first, last + 1):
            widget = MessageWidget(self._splitter)
            self._connect(widget)
            self.message_widgets.insert(row, widget)
            self._layout.insertWidget(row, widget)
        self._refresh(max(0, first - 1), len(self.message_widgets) - 1)  # the row before may lose "last"

    def _remove(self, first: int, last: int) -> None:
        for _ in range(first, last + 1):
            widget = self.message_widgets.pop(first)
            self._layout.removeWidget(widget)
            widget.deleteLater()
        self._refresh(max(0, first - 1), len(self.message_widgets) - 1)

    def _refresh(self, first: int, last: int) -> None:
        if self.model is None:
            return
        count = len(self.message_widgets)
        for row in range(max(0, first), min(last, count - 1) + 1):
            self.message_widgets[row].show_row(
                self.model.row(row), last=row == count - 1, busy=self.busy, dark=self.dark
            )

    def _connect(self, widget: MessageWidget) -> None:
        def row_of() -> int:
            return self.message_widgets.index(widget)

        widget.edit_button.clicked.connect(lambda: self.edit_requested.emit(row_of()))
        widget.regenerate_button.clicked.connect(lambda: self.regenerate_requested.emit(row_of()))
        widget.delete_button.clicked.connect(lambda: self.delete_requested.emit(row_of()))
        widget.previous_button.clicked.connect(
            lambda: self.version_requested.emit(row_of(), widget.row.version - 1 if widget.row else 0)
        )
        widget.next_button.clicked.connect(
            lambda: self.version_requested.emit(row_of(), widget.row.version + 1 if widget.row else 0)
        )

    def _on_range_changed(self, _minimum: int, maximum: int) -> None:
        if self._follow:
            self.verticalScrollBar().setValue(maximum)
