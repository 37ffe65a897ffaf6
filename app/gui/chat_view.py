"""The chat transcript: messages as markdown with highlighted code blocks, a copy link per block, and a
streaming last message that follows the end unless the user scrolled up."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from markdown_it import MarkdownIt
from PySide6.QtCore import QEvent, QUrl, Signal
from PySide6.QtGui import QGuiApplication, QHelpEvent
from PySide6.QtWidgets import QTextBrowser, QToolTip, QWidget


def _highlight(code: str, language: str, dark: bool = False) -> str:
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


@dataclass
class RenderedMessage:
    role: str
    text: str
    stats: dict[str, Any] = field(default_factory=dict)
    #: (token text, tooltip) pairs: when set, the message is shown token by token and each token's tooltip
    #: tells its experts (the routing inspector)
    token_routes: list[tuple[str, str]] | None = None


_ENDINGS = {"cancelled": "stopped by you", "max_tokens": "reached the reply limit", "context_full": "context full"}


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


class MarkdownRenderer:
    """Markdown to HTML for QTextBrowser; code blocks are collected so each can be copied."""

    def __init__(self) -> None:
        self._md = MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")
        self.code_blocks: list[str] = []
        self.dark = False
        owner = self

        def fence(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
            return owner._fence(tokens, idx)

        self._md.add_render_rule("fence", fence)
        self._md.add_render_rule("code_block", fence)

    def _fence(self, tokens: Any, idx: int) -> str:
        token = tokens[idx]
        language = (token.info or "").strip().split(" ")[0]
        index = len(self.code_blocks)
        self.code_blocks.append(token.content)
        label = html.escape(language or "code")
        background, foreground = ("#272822", "#f8f8f2") if self.dark else ("#f6f8fa", "#24292f")
        return (
            f'<table width="100%" cellspacing="0" cellpadding="6" style="background:{background};">'
            f'<tr><td style="color:#8b949e;font-size:small;">{label}</td>'
            f'<td align="right"><a href="copy:{index}">Copy</a></td></tr>'
            f'<tr><td colspan="2"><pre style="margin:0;color:{foreground};">'
            f"{_highlight(token.content, language, self.dark)}</pre></td></tr></table>"
        )

    def render(self, text: str) -> str:
        return str(self._md.render(text))


class ChatView(QTextBrowser):
    """Read-only transcript. Emits ``edit_requested(position)`` when a user message's edit link is clicked."""

    edit_requested = Signal(int)
    copied = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setOpenLinks(False)
        self.setAccessibleName("Conversation")
        self.anchorClicked.connect(self._on_anchor)
        self.messages: list[RenderedMessage] = []
        self._renderer = MarkdownRenderer()

    def set_dark(self, dark: bool) -> None:
        """Code blocks in dark or light colours."""
        self._renderer.dark = dark
        self._render(follow=None)

    def set_messages(self, messages: list[RenderedMessage]) -> None:
        self.messages = list(messages)
        self._render(follow=True)

    def add_message(self, message: RenderedMessage) -> None:
        self.messages.append(message)
        self._render(follow=True)

    def append_to_last(self, text: str) -> None:
        """Streamed text for the last message; keeps the user's scroll position if they scrolled up."""
        if self.messages:
            self.messages[-1].text += text
            self._render(follow=None)

    def last_text(self, role: str = "assistant") -> str:
        for message in reversed(self.messages):
            if message.role == role:
                return message.text
        return ""

    def _render(self, follow: bool | None) -> None:
        bar = self.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        position = bar.value()
        self._renderer.code_blocks.clear()
        parts = []
        for index, message in enumerate(self.messages):
            who = {"user": "You", "assistant": "Assistant", "system": "System"}.get(message.role, message.role)
            tip = html.escape(reply_summary(message.stats)) if message.stats else ""
            edit = f' · <a href="edit:{index}">Edit</a>' if message.role == "user" else ""
            copy = f' · <a href="copymsg:{index}">Copy</a>'
            if message.token_routes:
                spans = "".join(
                    f'<a href="route:{index}:{i}" style="text-decoration:none;color:inherit;'
                    f'background:{"#fff1e0" if i % 2 else "#ffe0c2"};">{html.escape(text)}</a>'
                    for i, (text, _tip) in enumerate(message.token_routes)
                )
                body = f"<p>{spans}</p><p style='color:#8b949e;font-size:small;'>Hover a token to see its experts.</p>"
            else:
                body = self._renderer.render(message.text) if message.text else "<p><i>…</i></p>"
            parts.append(
                f'<div title="{tip}"><p style="color:#57606a;"><b>{who}</b>{copy}{edit}'
                f"{'<span> · ' + tip + '</span>' if tip else ''}</p>{body}</div><hr/>"
            )
        self.setHtml("".join(parts))
        if follow or (follow is None and at_end):
            bar.setValue(bar.maximum())
        else:
            bar.setValue(position)

    def viewportEvent(self, event: QEvent) -> bool:
        """Tooltips for routed tokens: the experts of the token under the mouse (help events reach the viewport)."""
        if event.type() == QEvent.Type.ToolTip and isinstance(event, QHelpEvent):
            tip = self.route_tip(self.anchorAt(event.pos()))
            if tip:
                QToolTip.showText(event.globalPos(), tip, self.viewport())
                return True
        return super().viewportEvent(event)

    def route_tip(self, anchor: str) -> str:
        """The tooltip text for a ``route:message:token`` anchor, or an empty string."""
        parts = anchor.split(":")
        if len(parts) != 3 or parts[0] != "route" or not parts[1].isdigit() or not parts[2].isdigit():
            return ""
        message, token = int(parts[1]), int(parts[2])
        routes = self.messages[message].token_routes if message < len(self.messages) else None
        return routes[token][1] if routes and token < len(routes) else ""

    def _on_anchor(self, url: QUrl) -> None:
        target = url.toString()
        kind, _, number = target.partition(":")
        if not number.isdigit():
            return
        index = int(number)
        if kind == "copy" and index < len(self._renderer.code_blocks):
            self._copy(self._renderer.code_blocks[index])
        elif kind == "copymsg" and index < len(self.messages):
            self._copy(self.messages[index].text)
        elif kind == "edit":
            self.edit_requested.emit(index)

    def _copy(self, text: str) -> None:
        QGuiApplication.clipboard().setText(text)
        self.copied.emit(text)
