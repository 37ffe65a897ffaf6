"""The conversation list as a Qt model over the store (read and written on the store's own thread)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt, Signal

from app.core.storage.conversations import Conversation, ConversationStore
from app.gui.background import SerialRunner

ConversationRole = Qt.ItemDataRole.UserRole + 1
Index = QModelIndex | QPersistentModelIndex


class ConversationListModel(QAbstractListModel):
    """Conversations, newest first, filtered by a search text (titles and message text). The store is read on
    ``disk``'s thread, after every write queued before; the list changes when the read comes back.

    Signals:
        refreshed(): the list was read again
    """

    refreshed = Signal()

    def __init__(self, store: ConversationStore, disk: SerialRunner) -> None:
        super().__init__()
        self._store = store
        self._disk = disk
        self._items: list[Conversation] = []
        self._search = ""

    def refresh(self, search: str | None = None, then: Callable[[], None] | None = None) -> None:
        """Read the list again (with a new search text, when given); ``then()`` runs once it shows."""
        if search is not None:
            self._search = search
        wanted = self._search
        self._disk.run(lambda: self._store.conversations(wanted), lambda items: self._show(wanted, items, then))

    def _show(self, search: str, items: list[Conversation], then: Callable[[], None] | None) -> None:
        if search == self._search:  # a read for an older search text is out of date
            self.beginResetModel()
            self._items = items
            self.endResetModel()
            self.refreshed.emit()
        if then is not None:
            then()

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._items)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._items):
            return None
        item = self._items[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            return item.title or "New chat"
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{item.title or 'New chat'} ({'story' if item.mode == 'plain' else 'chat'})"
        if role == ConversationRole:
            return item
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        base = super().flags(index)
        return base | Qt.ItemFlag.ItemIsEditable if index.isValid() else base

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if role != Qt.ItemDataRole.EditRole or not index.isValid() or not str(value).strip():
            return False
        item = self._items[index.row()]
        title = str(value).strip()
        self._items[index.row()] = replace(item, title=title)
        self._disk.run(lambda: self._store.update(item.id, title=title))
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.DisplayRole])
        return True

    def row_of(self, conversation_id: int) -> int:
        return next((row for row, item in enumerate(self._items) if item.id == conversation_id), -1)

    def conversation(self, row: int) -> Conversation | None:
        return self._items[row] if 0 <= row < len(self._items) else None
