"""The conversation list as a Qt model over the store."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt

from app.core.storage.conversations import Conversation, ConversationStore

ConversationRole = Qt.ItemDataRole.UserRole + 1
Index = QModelIndex | QPersistentModelIndex


class ConversationListModel(QAbstractListModel):
    """Conversations, newest first, filtered by a search text (titles and message text)."""

    def __init__(self, store: ConversationStore) -> None:
        super().__init__()
        self._store = store
        self._items: list[Conversation] = []
        self._search = ""
        self.refresh()

    def refresh(self, search: str | None = None) -> None:
        if search is not None:
            self._search = search
        self.beginResetModel()
        self._items = self._store.conversations(self._search)
        self.endResetModel()

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
        self._items[index.row()] = self._store.update(item.id, title=str(value).strip())
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.DisplayRole])
        return True

    def row_of(self, conversation_id: int) -> int:
        return next((row for row, item in enumerate(self._items) if item.id == conversation_id), -1)

    def conversation(self, row: int) -> Conversation | None:
        return self._items[row] if 0 <= row < len(self._items) else None
