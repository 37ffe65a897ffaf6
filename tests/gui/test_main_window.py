"""The desktop window with real models, a real SQLite file and real Qt widgets (offscreen)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app.core.storage import paths
from app.core.storage.conversations import ConversationStore
from app.core.storage.settings import Settings, load_settings, save_settings
from app.gui.conversation_model import ConversationListModel
from app.gui.main_window import MainWindow
from tests.gui.helpers import (
    LOAD_TIMEOUT,
    REPLY_TIMEOUT,
    answer_dialog,
    choose,
    choose_file,
    click,
    click_conversation,
    menu_action,
    new_window,
    open_window,
    press,
    send,
    settle,
    stored,
    trigger,
    type_text,
)


def test_a_reply_streams_from_the_demo_model_and_is_saved(qtbot, demo_window: MainWindow) -> None:
    streamed: list[str] = []
    demo_window.controller.text_streamed.connect(streamed.append)
    rebuilt: list[bool] = []
    demo_window.transcript.modelReset.connect(lambda: rebuilt.append(True))
    generation = send(qtbot, demo_window, "How many days are in a week?")
    assert rebuilt == []  # sending and streaming add and change rows; the transcript is never rebuilt
    assert "7" in generation.text and streamed and "".join(streamed) == generation.text
    assert stored(qtbot, demo_window) == [("user", "How many days are in a week?"), ("assistant", generation.text)]
    assert [r.role for r in demo_window.transcript.rows()] == ["user", "assistant"]
    assert [w.row.text for w in demo_window.chat_view.message_widgets] == [
        "How many days are in a week?",
        generation.text,
    ]
    assert "tok/s" in demo_window.status_speed.text() and "/4096" in demo_window.status_context.text()
    assert demo_window.list_model.data(demo_window.list_model.index(0)) == "How many days are in a week?"


def test_stop_ends_the_reply_and_keeps_what_was_written(qtbot, tiny_window: MainWindow) -> None:
    tiny_window.max_tokens.setValue(0)  # until the context is full: long enough to stop
    tiny_window.input.setPlainText("Write forever")
    with qtbot.waitSignal(tiny_window.controller.text_streamed, timeout=REPLY_TIMEOUT):
        qtbot.mouseClick(tiny_window.send_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(tiny_window.controller.reply_finished, timeout=REPLY_TIMEOUT) as blocker:
        qtbot.mouseClick(tiny_window.stop_button, Qt.MouseButton.LeftButton)
    generation = blocker.args[0]
    assert generation.stats.stop_reason == "cancelled" and generation.text
    assert stored(qtbot, tiny_window)[-1] == ("assistant", generation.text)
    last = tiny_window.chat_view.message_widgets[-1]
    assert "stopped by you" in last.status.text()  # the transcript marks the stopped reply
    assert tiny_window.send_button.isEnabled() and not tiny_window.stop_button.isEnabled()


def test_keyboard_shortcuts_are_wired(tiny_window: MainWindow) -> None:
    menus = [action.menu() for action in tiny_window.menuBar().actions()]
    shortcuts = {a.text(): a.shortcut().toString() for menu in menus for a in menu.actions()}
    assert shortcuts["New chat"] == "Ctrl+N" and shortcuts["Find chats"] == "Ctrl+K"
    assert shortcuts["Settings…"] == "Ctrl+," and shortcuts["Copy last reply"] == "Ctrl+Shift+C"
    assert shortcuts["Stop reply"] == "Esc"


def test_regenerate_keeps_versions_to_step_through(qtbot, tiny_window: MainWindow) -> None:
    window = tiny_window
    window.temperature.setValue(1.5)  # so the versions differ
    first = send(qtbot, window, "First question")
    reply = window.chat_view.message_widgets[-1]
    assert reply.regenerate_button.isVisibleTo(window) and not reply.previous_button.isVisibleTo(window)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=REPLY_TIMEOUT) as blocker:
        click(qtbot, reply.regenerate_button)  # the reply's own Regenerate
    second = blocker.args[0]
    assert stored(qtbot, window) == [("user", "First question"), ("assistant", second.text)]
    reply = window.chat_view.message_widgets[-1]
    assert reply.version_label.text() == "2/2" and reply.row.text == second.text
    click(qtbot, reply.previous_button)
    assert reply.version_label.text() == "1/2" and reply.row.text == first.text
    assert stored(qtbot, window)[-1] == ("assistant", first.text)  # the chosen version is what the model sees next
    assert not reply.previous_button.isEnabled() and reply.next_button.isEnabled()
    with qtbot.waitSignal(window.controller.reply_finished, timeout=REPLY_TIMEOUT):
        click(qtbot, window.regenerate_button)  # the window's Regenerate writes a third
    assert window.chat_view.message_widgets[-1].version_label.text() == "3/3"
    versions = window.store.messages(window.conversation.id)[-1].versions
    assert [v["content"] for v in versions[:2]] == [first.text, second.text]


def test_editing_a_message_replaces_it_and_the_turns_after_it(qtbot, tiny_window: MainWindow) -> None:
    send(qtbot, tiny_window, "one")
    send(qtbot, tiny_window, "two")
    click(qtbot, tiny_window.chat_view.message_widgets[0].edit_button)
    assert tiny_window.input.toPlainText() == "one"
    reply = send(qtbot, tiny_window, "one, edited")
    assert stored(qtbot, tiny_window) == [("user", "one, edited"), ("assistant", reply.text)]


def test_enter_sends_and_shift_enter_makes_a_new_line(qtbot, tiny_window: MainWindow) -> None:
    qtbot.keyClicks(tiny_window.input, "line one")
    qtbot.keyClick(tiny_window.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(tiny_window.input, "line two")
    assert tiny_window.input.toPlainText() == "line one\nline two"
    with qtbot.waitSignal(tiny_window.controller.reply_finished, timeout=REPLY_TIMEOUT):
        qtbot.keyClick(tiny_window.input, Qt.Key.Key_Return)
    assert stored(qtbot, tiny_window)[0] == ("user", "line one\nline two")


def test_story_mode_continues_the_text(qtbot, tiny_window: MainWindow) -> None:
    click(qtbot, tiny_window.new_story_button)
    assert tiny_window.pages.currentWidget() is tiny_window.story_edit and not tiny_window.input.isVisible()
    beginning = "Once upon\xa0a time"  # a no-break space must reach the prompt as typed
    qtbot.keyClicks(tiny_window.story_edit, beginning)
    with qtbot.waitSignal(tiny_window.controller.reply_finished, timeout=REPLY_TIMEOUT) as blocker:
        qtbot.mouseClick(tiny_window.send_button, Qt.MouseButton.LeftButton)
    generation = blocker.args[0]
    assert generation.prompt.tokens == (1, *tiny_window.controller.engine.tokenize(beginning))
    shown = tiny_window.story_edit.document().toRawText().replace("\u2029", "\n")
    assert shown == beginning + generation.text.replace("\r\n", "\n").replace("\r", "\n")
    assert stored(qtbot, tiny_window) == [("user", beginning + generation.text)]


def test_presets_set_the_system_prompt_and_are_saved_with_a_name(qtbot, tiny_window: MainWindow) -> None:
    window = tiny_window
    window.show()
    combo = window.preset_combo
    choose(qtbot, combo, "Concise")
    assert window.system_edit.toPlainText().startswith("Answer in as few words")
    assert window.store.get(window.conversation.id).preset_id == "concise"
    count = combo.count()
    window.system_edit.selectAll()
    type_text(qtbot, window.system_edit, "Talk like a pirate.")
    window.settings_panel.preset_new_action.trigger()  # Presets ▾ ▸ Save as a new preset…
    answer_dialog(qtbot, window, "presetName", "Pirate")
    assert combo.count() == count + 1 and combo.currentText() == "Pirate ★"
    assert window.presets.get(combo.currentData()).text == "Talk like a pirate."
    window.settings_panel.preset_rename_action.trigger()
    answer_dialog(qtbot, window, "presetName", "Sea dog")
    assert combo.currentText() == "Sea dog ★"
    trigger(qtbot, window, window.settings_panel.preset_duplicate_action)
    assert combo.count() == count + 2 and combo.currentText() == "Sea dog (copy) ★"
    trigger(qtbot, window, window.settings_panel.preset_delete_action)
    trigger(qtbot, window, window.settings_panel.preset_delete_action)
    assert combo.count() == count
    reply = send(qtbot, window, "hello")
    assert reply.prompt.kept[0].content == "Talk like a pirate."  # the conversation's own text is what is sent


def test_new_chat_from_the_button_the_menu_and_ctrl_n(qtbot, tiny_window: MainWindow) -> None:
    window = tiny_window
    window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    send(qtbot, window, "first chat")
    titles = lambda: window.list_model.rowCount()  # noqa: E731
    before = titles()
    click(qtbot, window.new_button)
    assert titles() == before + 1 and window.conversation is not None and window.conversation.mode == "chat"
    assert "Unknown" not in window.notice.text() and window.transcript.rowCount() == 0
    trigger(qtbot, window, window.new_action)  # File ▸ New chat, as the menu triggers it
    assert titles() == before + 2
    press(qtbot, window.input, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert titles() == before + 3 and window.input.hasFocus()


def test_delete_can_be_undone_and_search_filters(qtbot, tiny_window: MainWindow) -> None:
    window = tiny_window
    send(qtbot, window, "about Lisbon")
    click(qtbot, window.new_button)
    send(qtbot, window, "about Python")
    type_text(qtbot, window.search, "lisbon")
    assert window.list_model.rowCount() == 1
    window.search.clear()  # the search box's clear button
    settle(qtbot, window)
    assert window.list_model.rowCount() == 2
    window.show()
    click(qtbot, window.delete_button)
    click(qtbot, window.delete_button)  # both chats, one after the other
    assert window.list_model.rowCount() == 1  # a fresh empty chat took their place
    assert window.statusBar().currentMessage().startswith("Deleted")
    assert window.undo_button.isVisible() and window.undo_button.text() == "Undo delete (2)"  # not hidden by it
    click(qtbot, window.undo_button)
    click(qtbot, window.undo_button)
    kept = {c.title for c in window.store.conversations()}
    assert {"about Lisbon", "about Python"} <= kept and not window.undo_button.isVisible()


def test_restart_finds_conversations_and_settings(qtbot, tiny_v1: dict[str, Path]) -> None:
    first = open_window(qtbot, tiny_v1["Q4_0"])
    first.max_tokens.setValue(8)
    reply = send(qtbot, first, "remember me")
    first.apply_settings(Settings(context_length=2048, theme="dark", last_model=str(tiny_v1["Q4_0"])))
    first.close()
    second = new_window(qtbot)
    assert load_settings().settings.context_length == 2048 and second.settings.theme == "dark"
    assert stored(qtbot, second) == [("user", "remember me"), ("assistant", reply.text)]
    assert second.chat_view.message_widgets[-1].row.text == reply.text


def test_damaged_database_and_settings_are_reported_not_fatal(qtbot) -> None:
    paths.ensure(paths.data_dir())
    (paths.data_dir() / "conversations.db").write_bytes(b"garbage" * 200)
    paths.ensure(paths.config_dir())
    (paths.config_dir() / "settings.json").write_text("{not json")
    window = new_window(qtbot)
    assert window.notice.isVisibleTo(window)
    assert "settings file could not be read" in window.notice.text()
    assert "conversation database could not be opened" in window.notice.text()
    assert window.list_model.rowCount() == 1  # a fresh chat to type into


def test_a_model_that_fails_to_load_is_explained_and_the_app_stays_usable(qtbot, tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a model")
    window = new_window(qtbot)
    with qtbot.waitSignal(window.controller.model_load_failed, timeout=LOAD_TIMEOUT):
        window.load_model(str(bad))
    assert "not a GGUF" in window.last_error
    click(qtbot, window.new_button)
    qtbot.keyClicks(window.input, "hello")
    qtbot.keyClick(window.input, Qt.Key.Key_Return)
    assert "Load a model first" in window.notice.text()


def test_export_import_and_copy_last_reply(qtbot, tiny_window: MainWindow, tmp_path: Path) -> None:
    reply = send(qtbot, tiny_window, "export me")
    for kind in ("Markdown", "JSON"):
        trigger(qtbot, tiny_window, menu_action(tiny_window, "&File", f"Export as {kind}…"))
        choose_file(qtbot, tiny_window, tmp_path / "chat")  # the suffix comes from the kind
    settle(qtbot, tiny_window)
    assert "export me" in (tmp_path / "chat.md").read_text()
    assert json.loads((tmp_path / "chat.json").read_text())
    trigger(qtbot, tiny_window, menu_action(tiny_window, "&File", "Import conversation (JSON)…"))
    choose_file(qtbot, tiny_window, tmp_path / "chat.json")
    assert tiny_window.list_model.rowCount() == 2 and stored(qtbot, tiny_window)[0] == ("user", "export me")
    trigger(qtbot, tiny_window, tiny_window.copy_reply_action)
    assert QGuiApplication.clipboard().text() == reply.text
    (tmp_path / "bad.json").write_text(json.dumps({"nope": 1}))
    trigger(qtbot, tiny_window, menu_action(tiny_window, "&File", "Import conversation (JSON)…"))
    choose_file(qtbot, tiny_window, tmp_path / "bad.json")
    assert "not a Mixtral Desk conversation" in tiny_window.last_error


def test_a_gguf_file_opened_from_the_model_picker_loads(qtbot, demo_window: MainWindow, tiny_v1) -> None:
    choose(qtbot, demo_window.model_picker, "Open a GGUF file…")
    with qtbot.waitSignal(demo_window.controller.model_loaded, timeout=LOAD_TIMEOUT) as loaded:
        choose_file(qtbot, demo_window, tiny_v1["Q4_0"])
    assert Path(loaded.args[0].path) == tiny_v1["Q4_0"]
    assert demo_window.status_model.text() == tiny_v1["Q4_0"].stem


def test_conversation_list_model_is_a_well_behaved_qt_model(qtbot, qtmodeltester) -> None:
    from app.gui.background import SerialRunner

    store = ConversationStore()
    for title in ("a", "b", "c"):
        store.create(title=title)
    disk = SerialRunner("test-disk")
    model = ConversationListModel(store, disk)
    with qtbot.waitSignal(model.refreshed):
        model.refresh()
    assert model.rowCount() == 3
    qtmodeltester.check(model)
    with qtbot.waitSignal(disk.idle):
        assert model.setData(model.index(0), "renamed")
    assert store.conversations()[0].title == "renamed"
    disk.close()


def test_settings_dialog_round_trip(qtbot) -> None:
    from app.gui.settings_dialog import SettingsDialog

    save_settings(Settings(gpu_layers=12))
    dialog = SettingsDialog(load_settings().settings)
    qtbot.addWidget(dialog)
    assert not dialog.auto_layers.isChecked() and dialog.gpu_layers.value() == 12
    dialog.auto_layers.setChecked(True)
    dialog.kv.setCurrentText("q8_0")
    dialog._accept()
    result = dialog.result_settings()
    assert result.gpu_layers is None and result.kv_cache_type == "q8_0" and result.flash_attention


def test_screenshot_script_saves_every_view_at_both_sizes_and_themes(
    tmp_path: Path, qapp, tiny_v1: dict[str, Path]
) -> None:
    from app.gui.screenshot import main

    assert main(["--out", str(tmp_path), "--routing-model", str(tiny_v1["Q4_K_M"])]) == 0
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    dialogs = [name for name in shots if name.startswith("settings-")]
    assert [name for name in shots if name not in dialogs] == sorted(
        f"{view}-{size}-{theme}.png"
        for view in ("main", "models", "routing")
        for size in ("800x600", "1600x1000")
        for theme in ("light", "dark")
    )
    # the settings dialog at its own size and 900 wide, in both themes
    assert sorted(name.split("-")[-1] for name in dialogs) == ["dark.png", "dark.png", "light.png", "light.png"]
    assert sum(name.startswith("settings-900x") for name in dialogs) == 2
    assert all((tmp_path / name).stat().st_size > 20_000 for name in shots)


def test_a_load_can_be_cancelled_and_the_window_stays_usable(qtbot, tiny_v1: dict[str, Path]) -> None:
    window = new_window(qtbot)
    with qtbot.waitSignal(window.controller.model_load_cancelled, timeout=LOAD_TIMEOUT):
        window.load_model(str(tiny_v1["Q4_0"]))
        assert window.cancel_load_button.isVisibleTo(window)
        qtbot.mouseClick(window.cancel_load_button, Qt.MouseButton.LeftButton)
    assert not window.cancel_load_button.isVisibleTo(window)
    window.input.setPlainText("hello")
    window.send()
    assert "Load a model first" in window.notice.text()


def test_models_folder_setting_moves_where_models_are_found(qtbot, tmp_path: Path, tiny_v1: dict[str, Path]) -> None:
    folder = tmp_path / "my-models"
    folder.mkdir()
    (folder / "mine.gguf").write_bytes(tiny_v1["Q2_K"].read_bytes())
    window = new_window(qtbot)
    window.apply_settings(Settings(models_dir=str(folder)))
    from app.core.models.local import installed_models

    try:
        assert installed_models() == [folder / "mine.gguf"]
    finally:
        paths.set_models_dir(None)


def test_each_conversation_keeps_its_sampling_settings(qtbot) -> None:
    window = new_window(qtbot)
    window.show()
    first = window.conversation
    window.temperature.setValue(1.3)
    window.max_tokens.setValue(77)
    click(qtbot, window.new_button)
    window.temperature.setValue(0.1)
    click_conversation(qtbot, window, first.id)
    assert window.conversation.id == first.id
    assert window.temperature.value() == pytest.approx(1.3) and window.max_tokens.value() == 77


def test_window_geometry_is_restored(qtbot) -> None:
    window = new_window(qtbot)
    window.resize(700, 520)  # within the offscreen screen (800x600)
    window.close()
    again = MainWindow(load_on_start=False)
    qtbot.addWidget(again)
    assert (again.width(), again.height()) == (700, 520)


def test_flash_attention_is_on_by_default_and_turning_it_off_reloads_the_model(qtbot, tiny_window: MainWindow) -> None:
    from PySide6.QtWidgets import QDialogButtonBox

    from app.gui.settings_dialog import SettingsDialog

    window = tiny_window
    assert window.controller.engine.settings.flash_attn  # loaded as llama.cpp would
    trigger(qtbot, window, menu_action(window, "&Edit", "Settings…"))
    dialog = next(d for d in window.findChildren(SettingsDialog) if d.isVisible())
    assert dialog.flash.isChecked()
    qtbot.mouseClick(dialog.flash, Qt.MouseButton.LeftButton, pos=dialog.flash.rect().center())
    assert not dialog.flash.isChecked()
    ok = dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok)
    with qtbot.waitSignal(window.controller.model_loaded, timeout=LOAD_TIMEOUT):
        qtbot.mouseClick(ok, Qt.MouseButton.LeftButton)
    settle(qtbot, window)
    assert not window.controller.engine.settings.flash_attn
    assert not load_settings().settings.flash_attention


def test_connections_per_download_are_set_in_the_settings_dialog(qtbot) -> None:
    from PySide6.QtWidgets import QDialogButtonBox

    from app.gui.settings_dialog import SettingsDialog

    window = new_window(qtbot)
    assert window.downloads.manager.connections == 4
    menus = [a.menu() for a in window.menuBar().actions() if a.menu() is not None]
    settings_action = next(a for menu in menus for a in menu.actions() if a.text() == "Settings…")
    settings_action.trigger()
    dialog = window.findChild(SettingsDialog)
    assert dialog is not None and dialog.isVisible()
    dialog.connections.lineEdit().selectAll()
    qtbot.keyClicks(dialog.connections.lineEdit(), "8")
    ok = dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok)
    with qtbot.waitSignal(dialog.accepted):
        qtbot.mouseClick(ok, Qt.MouseButton.LeftButton)
    settle(qtbot, window)  # saved on the disk thread
    assert load_settings().settings.download_connections == 8
    assert window.downloads.manager.connections == 8


def test_the_status_bar_describes_the_conversation_on_screen(qtbot, tiny_window: MainWindow) -> None:
    window = tiny_window
    reply = send(qtbot, window, "a first question")
    first = window.conversation
    speed = f"{reply.stats.generation_tokens_per_s:.1f} tok/s"
    context = f"context {reply.stats.context_used}/{reply.stats.context_size}"
    assert (window.status_speed.text(), window.status_context.text()) == (speed, context)
    window.show_notice("about the first chat", for_conversation=True)
    assert window.notice.isVisibleTo(window)
    click(qtbot, window.new_button)
    assert window.status_speed.text() == "" and window.status_context.text().startswith("context 0/")
    assert not window.notice.isVisibleTo(window)  # the banner was about the other chat
    click_conversation(qtbot, window, first.id)
    assert window.conversation.id == first.id
    assert (window.status_speed.text(), window.status_context.text()) == (speed, context)


def test_help_about_says_version_build_folders_and_licences_and_esc_closes_it(qtbot) -> None:
    from PySide6.QtWidgets import QMessageBox

    from app import __version__

    window = new_window(qtbot)
    window.show()
    window.about_action.trigger()  # Help ▸ About, as the menu triggers it
    box = window.findChild(QMessageBox, "about")
    assert box is not None and box.isVisible()
    text = box.text()
    assert __version__ in text and "llama-cpp-python" in text and str(paths.models_dir()) in text
    assert "Apache-2.0" in text and "MIT" in text
    qtbot.keyClick(box, Qt.Key.Key_Escape)
    assert not box.isVisible()


def test_regenerate_needs_a_question_and_the_input_names_the_loaded_model(qtbot, tiny_window: MainWindow) -> None:
    window = tiny_window
    assert "mixtral-tiny-v1-Q4_0" in window.input.placeholderText()
    click(qtbot, window.new_button)
    assert not window.regenerate_button.isEnabled()  # nothing to regenerate in an empty chat
    send(qtbot, window, "now there is something")
    assert window.regenerate_button.isEnabled()


def test_a_conversation_is_renamed_from_its_context_menu(qtbot, tiny_window: MainWindow) -> None:
    from PySide6.QtWidgets import QMenu

    window = tiny_window
    window.show()
    qtbot.waitExposed(window)
    send(qtbot, window, "about Lisbon")
    from PySide6.QtGui import QContextMenuEvent
    from PySide6.QtWidgets import QApplication

    viewport = window.list_view.viewport()
    spot = window.list_view.visualRect(window.list_model.index(0)).center()
    # what the platform sends for a right-click (QTest's mouse clicks do not make one)
    QApplication.sendEvent(
        viewport, QContextMenuEvent(QContextMenuEvent.Reason.Mouse, spot, viewport.mapToGlobal(spot))
    )
    menu = next(m for m in window.list_view.findChildren(QMenu, "conversationMenu") if m.isVisible())
    assert [a.text() for a in menu.actions() if a.text()] == [
        "Rename…",
        "Export as Markdown…",
        "Export as JSON…",
        "Delete",
    ]
    next(a for a in menu.actions() if a.text() == "Rename…").trigger()
    answer_dialog(qtbot, window, "renameConversation", "Trip planning")
    assert window.list_model.data(window.list_model.index(0)) == "Trip planning"
    assert window.store.get(window.conversation.id).title == "Trip planning"


def test_side_panels_collapse_with_their_buttons_and_shortcuts(qtbot, tiny_window: MainWindow) -> None:
    window = tiny_window
    window.resize(1400, 800)
    window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow)
    assert window.settings_panel.isVisible() and window.conversations_panel.isVisible()
    width = window.chat_view.width()
    click(qtbot, window.settings_toggle)
    assert not window.settings_panel.isVisible()
    qtbot.keyClick(window.input, Qt.Key.Key_B, Qt.KeyboardModifier.ControlModifier)
    assert not window.conversations_panel.isVisible()
    qtbot.waitUntil(lambda: window.chat_view.width() > width + 300)  # the chat got the room
    qtbot.keyClick(window.input, Qt.Key.Key_B, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert window.settings_panel.isVisible()


def test_a_narrow_window_starts_with_the_chat_settings_collapsed(qtbot) -> None:
    window = new_window(qtbot)
    window.resize(800, 600)
    window.show()
    qtbot.waitExposed(window)
    assert not window.settings_panel.isVisible() and window.conversations_panel.isVisible()
    qtbot.waitUntil(lambda: window.chat_view.width() >= 500)


def test_a_reply_stays_in_the_conversation_it_was_asked_in(qtbot, tiny_window: MainWindow) -> None:
    window = tiny_window
    window.show()
    qtbot.waitExposed(window)
    first_reply = send(qtbot, window, "first chat")
    first = window.conversation
    click(qtbot, window.new_button)
    second = window.conversation
    window.max_tokens.setValue(64)
    qtbot.keyClicks(window.input, "a question for the second chat")
    with qtbot.waitSignal(window.controller.reply_finished, timeout=REPLY_TIMEOUT) as finished:
        with qtbot.waitSignal(window.controller.text_streamed, timeout=REPLY_TIMEOUT):
            qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
        click_conversation(qtbot, window, first.id)  # while the reply streams
    settle(qtbot, window)
    assert [(row.role, row.text) for row in window.transcript.rows()] == [
        ("user", "first chat"),
        ("assistant", first_reply.text),
    ]
    assert stored(qtbot, window) == [("user", "first chat"), ("assistant", first_reply.text)]
    click_conversation(qtbot, window, second.id)
    second_reply = finished.args[0]
    assert stored(qtbot, window) == [("user", "a question for the second chat"), ("assistant", second_reply.text)]
    # away and straight back while it streams: the reply ends up whole, once, where it was asked
    qtbot.keyClicks(window.input, "and another")
    with qtbot.waitSignal(window.controller.reply_finished, timeout=REPLY_TIMEOUT) as finished:
        with qtbot.waitSignal(window.controller.text_streamed, timeout=REPLY_TIMEOUT):
            qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
        for conversation in (first, second):
            rect = window.list_view.visualRect(window.list_model.index(window.list_model.row_of(conversation.id)))
            qtbot.mouseClick(window.list_view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    settle(qtbot, window)
    expected = [
        ("user", "a question for the second chat"),
        ("assistant", second_reply.text),
        ("user", "and another"),
        ("assistant", finished.args[0].text),
    ]
    assert [(row.role, row.text) for row in window.transcript.rows()] == expected
    assert stored(qtbot, window) == expected


def test_the_gui_thread_never_touches_the_conversation_store_or_presets(qtbot, tiny_window: MainWindow) -> None:
    import threading

    window = tiny_window
    window.show()
    qtbot.waitExposed(window)
    gui_thread = threading.current_thread()
    on_gui_thread: list[str] = []

    def watched(name: str, method):
        def call(*args, **kwargs):
            if threading.current_thread() is gui_thread:
                on_gui_thread.append(name)
            return method(*args, **kwargs)

        return call

    for owner in (window.store, window.presets):
        for name in dir(owner):
            if not name.startswith("_") and callable(getattr(owner, name)):
                setattr(owner, name, watched(f"{type(owner).__name__}.{name}", getattr(owner, name)))
    send(qtbot, window, "first")
    first = window.conversation
    with qtbot.waitSignal(window.controller.reply_finished, timeout=REPLY_TIMEOUT):
        click(qtbot, window.regenerate_button)
    settle(qtbot, window)
    reply = window.chat_view.message_widgets[-1]
    click(qtbot, reply.previous_button)
    choose(qtbot, window.preset_combo, "Concise")
    click(qtbot, window.new_button)
    type_text(qtbot, window.search, "first")
    click_conversation(qtbot, window, first.id)
    click(qtbot, window.chat_view.message_widgets[-1].delete_button)
    trigger(qtbot, window, window.settings_panel.preset_duplicate_action)
    assert on_gui_thread == []
