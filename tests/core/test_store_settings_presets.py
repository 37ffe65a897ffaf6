"""Conversations in SQLite, settings and presets: saved as they happen, survive restarts and damage."""

from __future__ import annotations

import json
import sqlite3

import pytest

from app.core.errors import DeskError
from app.core.storage import paths
from app.core.storage.conversations import ConversationStore, StoreError, title_from
from app.core.storage.presets import PresetStore, builtin_presets
from app.core.storage.settings import Settings, load_settings, save_settings, settings_path


def test_messages_are_committed_as_they_are_added_and_survive_a_reopen() -> None:
    store = ConversationStore()
    conversation = store.create(system_prompt="Be brief.", preset_id="concise", settings={"temperature": 0.2})
    store.append(conversation.id, "user", "What is the tallest mountain on Earth, above sea level?")
    store.append(conversation.id, "assistant", "Mount Everest.", {"generated_tokens": 4})
    # a second connection (another process would be the same) sees everything without close()
    other = sqlite3.connect(store.path)
    assert other.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2
    reopened = ConversationStore()
    again = reopened.get(conversation.id)
    assert again.title == "What is the tallest mountain on Earth, above sea level?"
    assert again.settings == {"temperature": 0.2} and again.preset_id == "concise"
    assert [(m.role, m.content, m.stats) for m in reopened.messages(conversation.id)] == [
        ("user", "What is the tallest mountain on Earth, above sea level?", {}),
        ("assistant", "Mount Everest.", {"generated_tokens": 4}),
    ]
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_titles_come_from_the_first_line_and_are_shortened_at_a_word() -> None:
    assert title_from("\n  Hello there \nsecond") == "Hello there"
    long = title_from("word " * 40)
    assert long.endswith("…") and len(long) <= 61 and not long[:-1].endswith(" ")
    assert title_from("") == "New chat"


def test_search_finds_titles_and_message_text() -> None:
    store = ConversationStore()
    first = store.create()
    store.append(first.id, "user", "Plan a trip to Lisbon")
    second = store.create()
    store.append(second.id, "user", "Fix my code")
    store.append(second.id, "assistant", "Use a dictionary in Python")
    assert [c.id for c in store.conversations("lisbon")] == [first.id]
    assert [c.id for c in store.conversations("python")] == [second.id]
    assert {c.id for c in store.conversations()} == {first.id, second.id}


def test_delete_can_be_undone() -> None:
    store = ConversationStore()
    conversation = store.create(title="keep me")
    store.delete(conversation.id)
    assert store.conversations() == []
    store.undelete(conversation.id)
    assert [c.title for c in store.conversations()] == ["keep me"]
    store.delete(conversation.id)
    assert store.purge_deleted(older_than_s=-1) == 1


def test_edit_replaces_the_turns_after_it_and_truncate_drops_the_last_reply() -> None:
    store = ConversationStore()
    c = store.create()
    for role, text in [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]:
        store.append(c.id, role, text)
    store.truncate(c.id, 3)
    assert [m.content for m in store.messages(c.id)] == ["a", "b", "c"]
    store.edit(c.id, 0, "a2")
    assert [m.content for m in store.messages(c.id)] == ["a2"]


def test_export_and_import_round_trip() -> None:
    store = ConversationStore()
    c = store.create(system_prompt="sys", title="Trip")
    store.append(c.id, "user", "Plan it")
    store.append(c.id, "assistant", "```python\nprint(1)\n```")
    data = json.loads(json.dumps(store.export_json(c.id)))
    copy = store.import_json(data)
    assert [m.content for m in store.messages(copy.id)] == ["Plan it", "```python\nprint(1)\n```"]
    assert copy.title == "Trip" and copy.system_prompt == "sys"
    markdown = store.export_markdown(c.id)
    assert markdown.startswith("# Trip") and "**Assistant:**" in markdown and "print(1)" in markdown
    with pytest.raises(StoreError, match="not a Mixtral Desk"):
        store.import_json({"messages": []})
    with pytest.raises(StoreError, match="malformed"):
        store.import_json({"format": "mixtral-desk-conversation", "messages": [{"role": "robot", "content": "x"}]})


def test_a_corrupt_database_is_kept_aside_and_replaced_with_a_notice() -> None:
    path = paths.data_dir() / "conversations.db"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not sqlite" * 100)
    store = ConversationStore()
    assert "could not be opened" in store.notice and store.conversations() == []
    backups = list(path.parent.glob("conversations.db.bad-*"))
    assert len(backups) == 1 and backups[0].read_bytes().startswith(b"this is not sqlite")
    store.create(title="fresh")
    assert [c.title for c in ConversationStore().conversations()] == ["fresh"]


def test_settings_round_trip_and_damage() -> None:
    assert load_settings().settings == Settings() and load_settings().notice == ""
    save_settings(Settings(context_length=8192, theme="dark", gpu_layers=20))
    assert load_settings().settings.context_length == 8192 and load_settings().settings.gpu_layers == 20
    settings_path().write_text('{"context_length": "lots"}')
    loaded = load_settings()
    assert loaded.settings == Settings() and "could not be read" in loaded.notice
    assert list(settings_path().parent.glob("settings.json.bad-*"))
    with pytest.raises(ValueError):
        save_settings(Settings(theme="neon"))


def test_presets_crud_and_reset() -> None:
    store = PresetStore()
    builtins = builtin_presets()
    assert len(builtins) >= 7 and {p.language for p in builtins} >= {"en", "fr", "de", "es"}
    mine = store.create("Pirate", "Talk like a pirate.")
    assert store.get(mine.id).text == "Talk like a pirate." and not mine.builtin
    store.update(mine.id, text="Arr.")
    copy = store.duplicate(mine.id)
    assert copy.name == "Pirate (copy)" and copy.text == "Arr."
    store.delete(mine.id)
    assert all(p.id != mine.id for p in store.all())
    store.update("concise", text="Shorter.")
    assert store.get("concise").modified and store.get("concise").text == "Shorter."
    store.delete("tutor")
    assert all(p.id != "tutor" for p in PresetStore().all())
    store.reset_builtins()
    assert store.get("concise").text == next(p.text for p in builtins if p.id == "concise")
    assert store.get("tutor").builtin and store.get(copy.id).name == "Pirate (copy)"
    with pytest.raises(DeskError, match="needs a name"):
        store.create("  ", "x")
