"""Conversations in SQLite (WAL) under the user's data dir.

Every finished message is committed at once, so closing or killing the app never loses it. A database that
cannot be opened or fails its integrity check is moved aside (``conversations.db.bad-<time>``) and a fresh
one is created, with a notice for the user.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.errors import DeskError
from app.core.prompts import Message
from app.core.storage import paths

SCHEMA_VERSION = 2  # 2: a message keeps its regenerated versions
DB_FILE = "conversations.db"
MODES = ("chat", "plain")
UNDO_WINDOW_S = 7 * 24 * 3600  # deleted conversations are purged after a week

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    mode TEXT NOT NULL DEFAULT 'chat',
    preset_id TEXT,
    system_prompt TEXT NOT NULL DEFAULT '',
    settings TEXT NOT NULL DEFAULT '{}',
    model TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    deleted REAL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    stats TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    versions TEXT NOT NULL DEFAULT '[]',
    version INTEGER NOT NULL DEFAULT 0,
    UNIQUE (conversation_id, position)
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, position);
"""


class StoreError(DeskError):
    """A conversation could not be read or written."""


@dataclass(frozen=True)
class StoredMessage:
    """One message; ``content`` and ``stats`` are those of the chosen ``version`` of ``versions``
    (``versions`` is empty while there is only one)."""

    id: int
    position: int
    role: str
    content: str
    stats: dict[str, Any] = field(default_factory=dict)
    versions: tuple[dict[str, Any], ...] = ()
    version: int = 0

    @property
    def version_count(self) -> int:
        return max(1, len(self.versions))

    def as_message(self) -> Message:
        return Message(self.role, self.content)


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    mode: str
    preset_id: str | None
    system_prompt: str
    settings: dict[str, Any]
    model: str
    created: float
    updated: float


def title_from(text: str, limit: int = 60) -> str:
    """A conversation title from its first message: the first line, shortened at a word."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if len(line) <= limit:
        return line or "New chat"
    cut = line[:limit].rsplit(" ", 1)[0] or line[:limit]
    return cut.rstrip(" ,.;:") + "…"


class ConversationStore:
    """All conversations. Safe to use from several threads (one connection behind a lock)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.data_dir() / DB_FILE
        self.notice = ""
        self._lock = threading.RLock()
        self._db = self._open()

    # -- opening ----------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA synchronous=NORMAL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            db.close()
            raise sqlite3.DatabaseError(f"the database was written by a newer version (schema {version})")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            db.close()
            raise sqlite3.DatabaseError("integrity check failed")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
        if "versions" not in columns:  # schema 1
            db.execute("ALTER TABLE messages ADD COLUMN versions TEXT NOT NULL DEFAULT '[]'")
            db.execute("ALTER TABLE messages ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return db

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as err:
            backup = self.path.with_name(f"{self.path.name}.bad-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                source = Path(str(self.path) + suffix)
                if source.exists():
                    source.replace(Path(str(backup) + suffix))
            self.notice = (
                f"Your conversation database could not be opened ({err}). It was kept as {backup.name} and a new, "
                "empty one was started."
            )
            return self._connect()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._db.execute("ROLLBACK")
                raise StoreError(f"Could not save the conversation: {err}.") from err
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- conversations ----------------------------------------------------------------------------

    def create(
        self,
        *,
        mode: str = "chat",
        preset_id: str | None = None,
        system_prompt: str = "",
        settings: dict[str, Any] | None = None,
        model: str = "",
        title: str = "",
    ) -> Conversation:
        if mode not in MODES:
            raise StoreError(f"Unknown conversation mode {mode!r}.")
        now = time.time()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO conversations (title, mode, preset_id, system_prompt, settings, model, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (title, mode, preset_id, system_prompt, json.dumps(settings or {}), model, now, now),
            )
            conversation_id = int(cursor.lastrowid or 0)
        return self.get(conversation_id)

    def get(self, conversation_id: int) -> Conversation:
        with self._lock:
            row = self._db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise StoreError(f"Conversation {conversation_id} does not exist.")
        return _conversation(row)

    def conversations(self, search: str = "") -> list[Conversation]:
        """Conversations, newest first; ``search`` matches titles and message text (case-insensitive)."""
        query = "SELECT * FROM conversations WHERE deleted IS NULL"
        params: list[Any] = []
        if search.strip():
            like = f"%{search.strip()}%"
            query += " AND (title LIKE ? OR id IN (SELECT conversation_id FROM messages WHERE content LIKE ?))"
            params += [like, like]
        query += " ORDER BY updated DESC, id DESC"
        with self._lock:
            return [_conversation(r) for r in self._db.execute(query, params).fetchall()]

    def update(self, conversation_id: int, **changes: Any) -> Conversation:
        allowed = {"title", "mode", "preset_id", "system_prompt", "settings", "model"}
        unknown = set(changes) - allowed
        if unknown:
            raise StoreError(f"Cannot change {', '.join(sorted(unknown))} of a conversation.")
        if "settings" in changes:
            changes["settings"] = json.dumps(changes["settings"])
        if changes.get("mode", "chat") not in MODES:
            raise StoreError(f"Unknown conversation mode {changes['mode']!r}.")
        columns = ", ".join(f"{k} = ?" for k in changes)
        with self._transaction() as db:
            db.execute(
                f"UPDATE conversations SET {columns}, updated = ? WHERE id = ?",
                (*changes.values(), time.time(), conversation_id),
            )
        return self.get(conversation_id)

    def delete(self, conversation_id: int) -> None:
        """Hide a conversation; :meth:`undelete` brings it back (until it is purged a week later)."""
        with self._transaction() as db:
            db.execute("UPDATE conversations SET deleted = ? WHERE id = ?", (time.time(), conversation_id))

    def undelete(self, conversation_id: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE conversations SET deleted = NULL WHERE id = ?", (conversation_id,))

    def purge_deleted(self, older_than_s: float = UNDO_WINDOW_S) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM conversations WHERE deleted IS NOT NULL AND deleted < ?", (time.time() - older_than_s,)
            )
            return int(cursor.rowcount)

    # -- messages ---------------------------------------------------------------------------------

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY position", (conversation_id,)
            ).fetchall()
        return [_message(r) for r in rows]

    def _message_at(self, db: sqlite3.Connection, conversation_id: int, position: int) -> StoredMessage:
        row = db.execute(
            "SELECT * FROM messages WHERE conversation_id = ? AND position = ?", (conversation_id, position)
        ).fetchone()
        if row is None:
            raise StoreError(f"Conversation {conversation_id} has no message {position}.")
        return _message(row)

    def append(
        self, conversation_id: int, role: str, content: str, stats: dict[str, Any] | None = None
    ) -> StoredMessage:
        """Add a message at the end (committed at once); the first user message names the conversation."""
        now = time.time()
        with self._transaction() as db:
            position = db.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM messages WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()[0]
            cursor = db.execute(
                "INSERT INTO messages (conversation_id, position, role, content, stats, created) VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, position, role, content, json.dumps(stats or {}), now),
            )
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
            if role == "user":
                db.execute(
                    "UPDATE conversations SET title = ? WHERE id = ? AND title = ''",
                    (title_from(content), conversation_id),
                )
        return StoredMessage(int(cursor.lastrowid or 0), int(position), role, content, stats or {})

    def edit(self, conversation_id: int, position: int, content: str) -> None:
        """Change a message and drop every message after it (they answered the old text)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE messages SET content = ?, stats = '{}', versions = '[]', version = 0"
                " WHERE conversation_id = ? AND position = ?",
                (content, conversation_id, position),
            )
            db.execute("DELETE FROM messages WHERE conversation_id = ? AND position > ?", (conversation_id, position))
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conversation_id))

    def add_version(
        self, conversation_id: int, position: int, content: str, stats: dict[str, Any] | None = None
    ) -> None:
        """A new version of a message (a regenerated reply); it becomes the chosen one, the others are kept."""
        with self._transaction() as db:
            message = self._message_at(db, conversation_id, position)
            versions = list(message.versions) or [{"content": message.content, "stats": message.stats}]
            versions.append({"content": content, "stats": stats or {}})
            self._set_versions(db, message, versions, len(versions) - 1)

    def choose_version(self, conversation_id: int, position: int, version: int) -> None:
        """Show and use another kept version of a message."""
        with self._transaction() as db:
            message = self._message_at(db, conversation_id, position)
            if not 0 <= version < message.version_count:
                raise StoreError(f"Message {position} has no version {version + 1}.")
            if message.versions:
                self._set_versions(db, message, list(message.versions), version)

    @staticmethod
    def _set_versions(
        db: sqlite3.Connection, message: StoredMessage, versions: list[dict[str, Any]], chosen: int
    ) -> None:
        db.execute(
            "UPDATE messages SET content = ?, stats = ?, versions = ?, version = ? WHERE id = ?",
            (
                versions[chosen]["content"],
                json.dumps(versions[chosen].get("stats") or {}),
                json.dumps(versions),
                chosen,
                message.id,
            ),
        )

    def delete_message(self, conversation_id: int, position: int) -> None:
        """Remove one message; the ones after it move up."""
        with self._transaction() as db:
            db.execute("DELETE FROM messages WHERE conversation_id = ? AND position = ?", (conversation_id, position))
            # two steps, so no moment has two messages at one position (the pair is unique)
            db.execute(
                "UPDATE messages SET position = -position WHERE conversation_id = ? AND position > ?",
                (conversation_id, position),
            )
            db.execute(
                "UPDATE messages SET position = -position - 1 WHERE conversation_id = ? AND position < 0",
                (conversation_id,),
            )
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conversation_id))

    def truncate(self, conversation_id: int, keep: int) -> None:
        """Keep only the first ``keep`` messages (regenerate drops the last reply this way)."""
        with self._transaction() as db:
            db.execute("DELETE FROM messages WHERE conversation_id = ? AND position >= ?", (conversation_id, keep))

    # -- export / import --------------------------------------------------------------------------

    def export_json(self, conversation_id: int) -> dict[str, Any]:
        conversation = self.get(conversation_id)
        return {
            "format": "mixtral-desk-conversation",
            "version": 1,
            "title": conversation.title,
            "mode": conversation.mode,
            "preset_id": conversation.preset_id,
            "system_prompt": conversation.system_prompt,
            "settings": conversation.settings,
            "model": conversation.model,
            "messages": [
                {"role": m.role, "content": m.content, "stats": m.stats}
                | ({"versions": list(m.versions), "version": m.version} if m.versions else {})
                for m in self.messages(conversation_id)
            ],
        }

    def export_markdown(self, conversation_id: int) -> str:
        conversation = self.get(conversation_id)
        lines = [f"# {conversation.title or 'Conversation'}", ""]
        if conversation.system_prompt:
            lines += ["> **System:** " + conversation.system_prompt.replace("\n", "\n> "), ""]
        for message in self.messages(conversation_id):
            lines += [f"**{message.role.capitalize()}:**", "", message.content, ""]
        return "\n".join(lines)

    def import_json(self, data: Any) -> Conversation:
        """Create a conversation from :meth:`export_json` output; bad input gets a clear error, nothing half-made."""
        if not isinstance(data, dict) or data.get("format") != "mixtral-desk-conversation":
            raise StoreError("This is not a Mixtral Desk conversation export.")
        messages: Sequence[Any] = data.get("messages", [])
        if not isinstance(messages, list) or not all(
            isinstance(m, dict)
            and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise StoreError("The conversation file has malformed messages.")
        conversation = self.create(
            mode=data.get("mode", "chat") if data.get("mode") in MODES else "chat",
            preset_id=data.get("preset_id"),
            system_prompt=str(data.get("system_prompt", "")),
            settings=data.get("settings") if isinstance(data.get("settings"), dict) else {},
            model=str(data.get("model", "")),
            title=str(data.get("title", "")),
        )
        for message in messages:
            stored = self.append(conversation.id, message["role"], message["content"], message.get("stats") or {})
            versions = message.get("versions")
            if _valid_versions(versions, message.get("version")):
                with self._transaction() as db:
                    self._set_versions(db, stored, versions, int(message["version"]))
        return self.get(conversation.id)


def _valid_versions(versions: Any, chosen: Any) -> bool:
    return (
        isinstance(versions, list)
        and len(versions) > 1
        and all(
            isinstance(v, dict) and isinstance(v.get("content"), str) and isinstance(v.get("stats", {}), dict)
            for v in versions
        )
        and isinstance(chosen, int)
        and 0 <= chosen < len(versions)
    )


def _message(row: sqlite3.Row) -> StoredMessage:
    return StoredMessage(
        row["id"],
        row["position"],
        row["role"],
        row["content"],
        json.loads(row["stats"]),
        tuple(json.loads(row["versions"] or "[]")),
        int(row["version"] or 0),
    )


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(
        id=row["id"],
        title=row["title"],
        mode=row["mode"],
        preset_id=row["preset_id"],
        system_prompt=row["system_prompt"],
        settings=json.loads(row["settings"] or "{}"),
        model=row["model"],
        created=row["created"],
        updated=row["updated"],
    )
