"""Conversations in SQLite, settings and presets: saved as they happen, survive restarts and damage."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

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


def test_regenerated_replies_are_kept_as_versions_and_can_be_chosen() -> None:
    store = ConversationStore()
    c = store.create()
    store.append(c.id, "user", "hi")
    store.append(c.id, "assistant", "first", {"generated_tokens": 1})
    store.add_version(c.id, 1, "second", {"generated_tokens": 2})
    reply = store.messages(c.id)[1]
    assert (reply.content, reply.stats, reply.version, reply.version_count) == ("second", {"generated_tokens": 2}, 1, 2)
    store.choose_version(c.id, 1, 0)
    assert [m.content for m in store.messages(c.id)] == ["hi", "first"]  # the history the model is sent
    with pytest.raises(StoreError, match="no version 3"):
        store.choose_version(c.id, 1, 2)
    exported = store.export_json(c.id)
    copy = store.import_json(json.loads(json.dumps(exported)))
    reply = store.messages(copy.id)[1]
    assert (reply.content, reply.version, [v["content"] for v in reply.versions]) == ("first", 0, ["first", "second"])
    store.edit(c.id, 0, "hello")  # an edited message starts again with one version
    assert store.messages(c.id)[0].versions == ()


def test_a_deleted_message_closes_its_gap() -> None:
    store = ConversationStore()
    c = store.create()
    for i, role in enumerate(("user", "assistant", "user", "assistant")):
        store.append(c.id, role, f"m{i}")
    store.delete_message(c.id, 1)
    assert [(m.position, m.content) for m in store.messages(c.id)] == [(0, "m0"), (1, "m2"), (2, "m3")]
    store.append(c.id, "user", "m4")
    assert [m.position for m in store.messages(c.id)] == [0, 1, 2, 3]


def test_a_schema_1_database_gains_versions_and_keeps_its_messages() -> None:
    path = paths.data_dir() / "conversations.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL DEFAULT '', mode TEXT NOT NULL"
        " DEFAULT 'chat', preset_id TEXT, system_prompt TEXT NOT NULL DEFAULT '', settings TEXT NOT NULL DEFAULT"
        " '{}', model TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL, deleted REAL);"
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL, position INTEGER NOT"
        " NULL, role TEXT NOT NULL, content TEXT NOT NULL, stats TEXT NOT NULL DEFAULT '{}', created REAL NOT"
        " NULL, UNIQUE (conversation_id, position));"
        "INSERT INTO conversations (id, title, created, updated) VALUES (1, 'old', 0, 0);"
        "INSERT INTO messages (conversation_id, position, role, content, created) VALUES (1, 0, 'user', 'hi', 0);"
        "INSERT INTO messages (conversation_id, position, role, content, created) VALUES (1, 1, 'assistant', 'yo', 0);"
        "PRAGMA user_version=1;"
    )
    old.close()
    store = ConversationStore()
    assert not store.notice
    store.add_version(1, 1, "hey")
    assert [(m.content, m.version_count) for m in store.messages(1)] == [("hi", 1), ("hey", 2)]


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


def test_version_1_settings_get_flash_attention_and_keep_the_rest() -> None:
    settings_path().parent.mkdir(parents=True, exist_ok=True)
    settings_path().write_text(json.dumps({"version": 1, "flash_attention": False, "context_length": 8192}))
    loaded = load_settings().settings
    assert loaded.flash_attention and loaded.context_length == 8192
    save_settings(replace(loaded, flash_attention=False))  # turned off in version 2: stays off
    assert not load_settings().settings.flash_attention


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


def test_measured_speeds_are_kept_per_model_and_short_replies_ignored(tmp_path) -> None:
    from app.core.storage.speeds import KEPT, measured_speed, record_speed

    model = tmp_path / "m.gguf"
    assert measured_speed(model) is None
    assert not record_speed(model, 500.0, 3)  # a 3-token reply measures the prompt, not decoding
    for value in (30.0, 40.0, 90.0):
        assert record_speed(model, value, 64)
    assert measured_speed(model) == 40.0 and measured_speed(tmp_path / "other.gguf") is None
    for _ in range(KEPT):
        record_speed(str(model), 10.0, 64)
    assert measured_speed(model) == 10.0  # only the latest replies count
