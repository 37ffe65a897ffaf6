"""The main window: conversations on the left, the chat in the centre, settings on the right, status below."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QObject, QPoint, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QKeyEvent, QKeySequence, QResizeEvent, QShowEvent
from PySide6.QtWidgets import (
    QDockWidget,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpacerItem,
    QSplitter,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app import APP_NAME
from app.core.context import POLICIES
from app.core.errors import ModelLoadError
from app.core.prompts import FORMAT_MISTRAL_V1, FORMAT_MISTRAL_V3, FORMAT_PLAIN, FORMAT_TEMPLATE, Message
from app.core.runtime.tickets import ReplyTicket
from app.core.runtime.types import GenerationRequest, LoadSettings, ModelInfo, SamplingSettings
from app.core.storage import paths
from app.core.storage.conversations import Conversation, ConversationStore, StoredMessage
from app.core.storage.presets import Preset, PresetStore
from app.core.storage.settings import Settings, load_settings, save_settings
from app.gui.background import BackgroundRunner, SerialRunner
from app.gui.chat_settings_panel import ChatSettingsPanel
from app.gui.controller import ChatController
from app.gui.conversation_model import ConversationListModel
from app.gui.elided_label import ElidedLabel
from app.gui.model_picker import ACTION_MANAGE, ACTION_OPEN_FILE, ACTION_REMOTE, ModelPicker
from app.gui.transcript import STATE_STREAMING, STATE_WAITING, TranscriptModel, TranscriptRow, TranscriptView

UNDO_DELETE_MS = 15_000  # how long "Undo delete" stays in the status bar after the last delete
NARROW_WIDTH = 1100  # a window narrower than this starts with the chat settings panel collapsed
FORMAT_NAMES = {
    FORMAT_MISTRAL_V1: "Mistral instruct format (v1)",
    FORMAT_MISTRAL_V3: "Mistral instruct format (v3, tools)",
    FORMAT_TEMPLATE: "the model file's own chat template",
    FORMAT_PLAIN: "plain text (no chat format)",
}


class _EnterToSend(QObject):
    """Enter sends, Shift+Enter makes a new line."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self._send = send

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        is_enter = (
            event.type() == QEvent.Type.KeyPress
            and isinstance(event, QKeyEvent)
            and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
            and not (event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        )
        if is_enter:
            self._send()
        return is_enter


class MainWindow(QMainWindow):
    """The app's main window. Owns the store, presets and the controller; widgets react to signals.

    Signals:
        models_listed(): the model picker was refilled from the disk
        conversation_shown(int): a conversation's messages were read and are on screen
    """

    models_listed = Signal()
    conversation_shown = Signal(int)

    def __init__(self, *, model_path: str | None = None, load_on_start: bool = True) -> None:
        super().__init__()
        self.setWindowTitle(APP_NAME)
        loaded = load_settings()
        self.settings: Settings = loaded.settings
        paths.set_models_dir(self.settings.models_dir)
        self.store = ConversationStore()
        self.presets = PresetStore()
        self.disk = SerialRunner("disk")  # the store, presets and settings files: written in order, off this thread
        self._presets_by_id: dict[str, Preset] = {}
        self.controller = ChatController(self)
        from app.gui.downloads import DownloadService

        self.downloads = DownloadService(
            max_parallel=self.settings.max_parallel_downloads,
            connections=self.settings.download_connections,
            parent=self,
        )
        self.downloads.restore()  # unfinished downloads from the last session carry on
        self.model_manager: Any = None
        self.api_server: Any = None
        self.conversation: Conversation | None = None
        self._shown_id: int | None = None  # the conversation whose messages are on screen (None while reading)
        self._editing: int | None = None
        self._regenerating: int | None = None  # the reply (by position) a new version is being written for
        self._replaced_row: TranscriptRow | None = None  # that reply as it was, shown again if nothing comes
        self._streaming: ReplyTicket | None = None
        self._reply_for: int | None = None  # the conversation the reply being written belongs to
        self._reply_plain = False
        self._reply_text = ""  # what has streamed of it so far
        self._traced_for: int | None = None
        self._plain_base = ""
        self._notice_for: int | None = None  # the conversation the banner is about, if it is about one
        self._deleted: list[int] = []  # deleted in this run, most recent last: Undo brings back one at a time
        self._restoring = False
        self._collapsed_for_width = False
        self._background = BackgroundRunner("window")
        self._build()
        self._connect()
        notices = [n for n in (loaded.notice, self.store.notice) if n]
        if notices:
            self.show_notice(" ".join(notices))
        self._restore_window_state()
        from app.gui.theme import is_dark

        self.chat_view.set_dark(is_dark(self.settings.theme))
        self.list_model.refresh(then=self._open_first_conversation)
        self._refresh_models()
        if load_on_start:
            self.load_model(model_path)

    # -- layout -----------------------------------------------------------------------------------

    def _build(self) -> None:
        self.search = QLineEdit(placeholderText="Search chats (Ctrl+K)")
        self.search.setAccessibleName("Search conversations")
        self.search.setClearButtonEnabled(True)
        self.list_model = ConversationListModel(self.store, self.disk)
        self.list_view = QListView()
        self.list_view.setModel(self.list_model)
        self.list_view.setAccessibleName("Conversations")
        self.list_view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list_view.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list_view.setUniformItemSizes(True)
        self.list_view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.new_button = QPushButton("New chat")
        self.new_button.setToolTip("Start a new chat (Ctrl+N)")
        self.new_story_button = QPushButton("New story")
        self.new_story_button.setToolTip("Start a text for the model to continue (no chat format)")
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip("Delete the selected chat (you can undo it)")
        self.conversations_panel = QWidget()
        self.conversations_panel.setObjectName("conversations")
        # no fixed minimum width: its buttons' (whatever the font size) is the panel's, so none is cut off
        left_layout = QVBoxLayout(self.conversations_panel)
        left_layout.setContentsMargins(6, 6, 0, 6)
        left_layout.addWidget(self.search)
        left_layout.addWidget(self.list_view)
        buttons = QGridLayout()
        buttons.addWidget(self.new_button, 0, 0)
        buttons.addWidget(self.new_story_button, 0, 1)
        buttons.addWidget(self.delete_button, 1, 0, 1, 2)
        left_layout.addLayout(buttons)

        self.toggle_conversations_action = QAction("Conversations", self)
        self.toggle_conversations_action.setCheckable(True)
        self.toggle_conversations_action.setChecked(True)
        self.toggle_conversations_action.setShortcut(QKeySequence("Ctrl+B"))
        self.toggle_conversations_action.setToolTip("Show or hide the conversations (Ctrl+B)")
        self.toggle_settings_action = QAction("Chat settings", self)
        self.toggle_settings_action.setCheckable(True)
        self.toggle_settings_action.setChecked(True)
        self.toggle_settings_action.setShortcut(QKeySequence("Ctrl+Shift+B"))
        self.toggle_settings_action.setToolTip("Show or hide the preset, system prompt and sampling (Ctrl+Shift+B)")
        self.conversations_toggle = QToolButton()
        # the buttons show the actions' icon texts: a text set on the button is replaced when the action toggles
        self.toggle_conversations_action.setIconText("☰")
        self.conversations_toggle.setDefaultAction(self.toggle_conversations_action)
        self.settings_toggle = QToolButton()
        self.settings_toggle.setDefaultAction(self.toggle_settings_action)
        self.model_picker = ModelPicker()
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.conversations_toggle)
        top.addWidget(self.model_picker, 1)
        top.addWidget(self.settings_toggle)

        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.notice.setVisible(False)
        self.notice.setStyleSheet("background:#fff4ce;color:#333;padding:6px;border-radius:4px;")
        self.transcript = TranscriptModel(self)
        self.chat_view = TranscriptView()
        self.chat_view.set_model(self.transcript)
        self.story_edit = QPlainTextEdit()
        self.story_edit.setAccessibleName("Story text")
        self.story_edit.setPlaceholderText("Write the beginning; the model continues it.")
        self.pages = QStackedWidget()
        self.pages.addWidget(self.chat_view)
        self.pages.addWidget(self.story_edit)
        self.input = QPlainTextEdit()
        self.input.setAccessibleName("Message")
        self.input.setPlaceholderText("Load a model to chat (Enter sends, Shift+Enter for a new line)")
        self.input.textChanged.connect(self._fit_input)
        self._fit_input()
        self._enter_filter = _EnterToSend(self.send)
        self.input.installEventFilter(self._enter_filter)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the reply (Esc); what was written is kept")
        self.stop_button.setEnabled(False)
        self.regenerate_button = QPushButton("Regenerate")
        self.regenerate_button.setToolTip("Write the last reply again; the earlier version is kept")
        self.load_progress = QProgressBar()
        self.load_progress.setRange(0, 0)
        self.load_progress.setFormat("Loading the model…")
        self.load_progress.setVisible(False)
        self.cancel_load_button = QPushButton("Cancel loading")
        self.cancel_load_button.setVisible(False)
        centre = QWidget()
        centre_layout = QVBoxLayout(centre)
        # at least 360 px, more when its rows need more (a large font): a fixed minimum would squeeze them
        centre_layout.addSpacerItem(QSpacerItem(360, 0, QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed))
        centre_layout.setContentsMargins(6, 6, 6, 6)
        centre_layout.addLayout(top)
        centre_layout.addWidget(self.notice)
        loading = QHBoxLayout()
        loading.addWidget(self.load_progress, 1)
        loading.addWidget(self.cancel_load_button)
        centre_layout.addLayout(loading)
        centre_layout.addWidget(self.pages, 1)
        centre_layout.addWidget(self.input)
        actions = QHBoxLayout()
        actions.addStretch(1)
        for button in (self.regenerate_button, self.stop_button, self.send_button):
            actions.addWidget(button)
        centre_layout.addLayout(actions)

        self.settings_panel = ChatSettingsPanel()
        panel = self.settings_panel
        self.preset_combo, self.system_edit = panel.preset_combo, panel.system_edit
        self.temperature, self.top_p, self.max_tokens = panel.temperature, panel.top_p, panel.max_tokens
        self.context_policy, self.inspect_routing = panel.context_policy, panel.inspect_routing
        self._change_presets(None)

        splitter = QSplitter()
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(self.conversations_panel)
        splitter.addWidget(centre)
        splitter.addWidget(self.settings_panel)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setStretchFactor(2, 0)
        splitter.setSizes([220, 700, 280])
        self.splitter = splitter
        # the window may be narrower than the chat and both side panels need: resizeEvent then closes a panel
        splitter.setMinimumWidth(centre.minimumSizeHint().width())
        self.setCentralWidget(splitter)
        from app.gui.routing_view import RoutingView

        self.routing_view = RoutingView()
        self.routing_dock = QDockWidget("Expert routing", self)
        self.routing_dock.setWidget(self.routing_view)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.routing_dock)
        self.routing_dock.setVisible(False)

        self.status_model = ElidedLabel("No model")  # a long file name shortens first when the window is narrow
        self.status_backend = QLabel("")
        self.status_speed = QLabel("")
        self.status_context = QLabel("")
        self.status_memory = QLabel("")
        self.status_engine = QLabel("")
        self.status_engine.setAccessibleName("Engine activity")
        for label in (
            self.status_model,
            self.status_backend,
            self.status_engine,
            self.status_speed,
            self.status_context,
            self.status_memory,
        ):
            self.statusBar().addPermanentWidget(label)
        self._engine_timer = QTimer(self)  # the engine's own health report: cheap, never waits for its thread
        self._engine_timer.setInterval(500)
        self._engine_timer.timeout.connect(self._update_engine_status)
        self._engine_timer.start()
        self.server_indicator = QToolButton()  # lasting sign the API server runs: click for its URL, copy, stop
        self.server_indicator.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.server_indicator.setAccessibleName("API server")
        server_menu = QMenu(self.server_indicator)
        self.server_url_action = server_menu.addAction("")
        self.server_url_action.setEnabled(False)
        self.server_copy_action = server_menu.addAction("Copy URL")
        self.server_copy_action.triggered.connect(self._copy_server_url)
        self.server_stop_action = server_menu.addAction("Stop the API server")
        self.server_stop_action.triggered.connect(lambda _checked=False: self.toggle_server(False))
        self.server_indicator.setMenu(server_menu)
        self.server_indicator.setVisible(False)
        self.statusBar().addPermanentWidget(self.server_indicator)
        self.server_port = 8080  # where "Serve this model" listens (0: any free port)
        self.undo_button = QPushButton("Undo delete")
        self.undo_button.setVisible(False)
        self._undo_timer = QTimer(self)  # owned by the window, so it cannot fire after the window is gone
        self._undo_timer.setSingleShot(True)
        self._undo_timer.setInterval(UNDO_DELETE_MS)
        self._undo_timer.timeout.connect(self._forget_deleted)
        # permanent: a status message (showMessage) hides the status bar's ordinary widgets while it shows
        self.statusBar().addPermanentWidget(self.undo_button)
        self._build_menus()

    def _build_menus(self) -> None:
        def action(menu: Any, text: str, slot: Any, shortcut: str | QKeySequence.StandardKey | None = None) -> QAction:
            act = QAction(text, self)
            if shortcut is not None:
                act.setShortcut(QKeySequence(shortcut))
            act.triggered.connect(lambda _checked=False: slot())  # never hand `checked` to a slot's first argument
            menu.addAction(act)
            return act

        file_menu = self.menuBar().addMenu("&File")
        self.new_action = action(file_menu, "New chat", self.new_conversation, "Ctrl+N")
        action(file_menu, "Models…", self.open_model_manager, "Ctrl+M")
        action(file_menu, "Open model…", self.choose_model)
        action(file_menu, "Import conversation (JSON)…", self._import_dialog)
        action(file_menu, "Export as Markdown…", lambda: self._export_dialog("md"))
        action(file_menu, "Export as JSON…", lambda: self._export_dialog("json"))
        action(file_menu, "Quit", self.close, QKeySequence.StandardKey.Quit)
        server_menu = self.menuBar().addMenu("&Server")
        self.serve_action = action(server_menu, "Serve this model to other apps (127.0.0.1:8080)", self.toggle_server)
        self.serve_action.setCheckable(True)  # toggle_server() with no argument flips the server, as the check does
        action(server_menu, "Use a remote model…", self.connect_remote)
        action(server_menu, "Use a local model again", lambda: self.use_local_engine())
        edit_menu = self.menuBar().addMenu("&Edit")
        action(edit_menu, "Find chats", self._focus_search, "Ctrl+K")
        self.copy_reply_action = action(edit_menu, "Copy last reply", self.copy_last_reply, "Ctrl+Shift+C")
        action(edit_menu, "Stop reply", self.stop, "Esc")
        action(edit_menu, "Regenerate", self.regenerate)
        action(edit_menu, "Settings…", self.open_settings, "Ctrl+,")
        view_menu = self.menuBar().addMenu("&View")
        view_menu.addAction(self.toggle_conversations_action)
        view_menu.addAction(self.toggle_settings_action)
        help_menu = self.menuBar().addMenu("&Help")
        self.about_action = action(help_menu, f"About {APP_NAME}", self.show_about)

    def _connect(self) -> None:
        self.send_button.clicked.connect(self.send)
        self.stop_button.clicked.connect(self.stop)
        self.regenerate_button.clicked.connect(self.regenerate)
        self.new_button.clicked.connect(lambda: self.new_conversation())
        self.new_story_button.clicked.connect(lambda: self.new_conversation(mode="plain"))
        self.delete_button.clicked.connect(self.delete_conversation)
        self.undo_button.clicked.connect(self.undo_delete)
        self.model_picker.model_chosen.connect(self.load_model)
        self.model_picker.action_chosen.connect(self._picker_action)
        self.toggle_conversations_action.toggled.connect(lambda shown: self._show_panel("list", shown))
        self.toggle_settings_action.toggled.connect(lambda shown: self._show_panel("settings", shown))
        self.list_view.customContextMenuRequested.connect(self._conversation_menu)
        self._background.done.connect(self._on_background_done)
        self.disk.failed.connect(self.show_error)
        self.downloads.progressed.connect(self._on_download_progress)
        self.list_model.refreshed.connect(self._keep_selection)
        self.search.textChanged.connect(lambda text: self.list_model.refresh(text))
        self.list_view.selectionModel().currentChanged.connect(
            lambda current, _previous: self._select_row(current.row())
        )
        self.chat_view.edit_requested.connect(self.begin_edit)
        self.chat_view.regenerate_requested.connect(lambda _row: self.regenerate())
        self.chat_view.delete_requested.connect(self.delete_message)
        self.chat_view.version_requested.connect(self.choose_version)
        self.controller.prompt_progressed.connect(self._on_prompt_progress)
        self.preset_combo.activated.connect(self._preset_chosen)
        panel = self.settings_panel
        panel.preset_new_action.triggered.connect(lambda _checked=False: self._ask_preset_name("new"))
        panel.preset_save_action.triggered.connect(lambda _checked=False: self._preset_update())
        panel.preset_rename_action.triggered.connect(lambda _checked=False: self._ask_preset_name("rename"))
        panel.preset_duplicate_action.triggered.connect(lambda _checked=False: self._preset_duplicate())
        panel.preset_delete_action.triggered.connect(lambda _checked=False: self._preset_delete())
        panel.preset_reset_action.triggered.connect(lambda _checked=False: self._preset_reset())
        self.system_edit.textChanged.connect(self._save_conversation_settings)
        for spin in (self.temperature, self.top_p, self.max_tokens):
            spin.valueChanged.connect(self._save_sampling)
        self.context_policy.currentIndexChanged.connect(self._save_sampling)
        self.inspect_routing.toggled.connect(self._save_sampling)
        self.controller.routing_traced.connect(self._on_routing)
        self.controller.routing_failed.connect(lambda err: self.statusBar().showMessage(f"Routing: {err}", 8000))
        self.controller.model_loaded.connect(self._on_model_loaded)
        self.controller.model_load_failed.connect(self._on_model_failed)
        self.controller.model_load_cancelled.connect(self._on_load_cancelled)
        self.cancel_load_button.clicked.connect(self.controller.cancel_load)
        self.controller.text_streamed.connect(self._on_text)
        self.controller.reply_finished.connect(self._on_reply_finished)
        self.controller.reply_failed.connect(self._on_reply_failed)

    # -- model --------------------------------------------------------------------------------------

    def load_model(self, path: str | None = None) -> None:
        """Load ``path`` (default: the last model, else the newest installed, else the demo)."""
        from app.core.models.local import resolve_model

        try:
            model_path = resolve_model(path or self.settings.last_model or None)
        except Exception as err:
            self.show_error(err)
            return
        s = self.settings
        settings = LoadSettings(
            model_path=str(model_path),
            n_ctx=s.context_length,
            n_gpu_layers=s.gpu_layers,
            flash_attn=s.flash_attention,
            kv_type=s.kv_cache_type,
            n_threads=s.threads,
            rpc_workers=s.rpc_workers,
            cpu_moe=s.cpu_moe,
        )
        self.load_progress.setVisible(True)
        self.cancel_load_button.setVisible(True)
        self.load_progress.setFormat(f"Loading {model_path.stem}…")
        self.send_button.setEnabled(False)
        self.controller.load_model(settings)

    def is_busy(self) -> bool:
        """A reply streams, a model loads or a download runs: moments when a pause of the GUI would show."""
        return self.controller.busy or not self.load_progress.isHidden() or self.downloads.running()

    def open_model_manager(self) -> None:
        """The model manager window (one per app; downloads continue when it is closed)."""
        from app.gui.model_manager import ModelManagerWindow

        if self.model_manager is None:
            self.model_manager = ModelManagerWindow(self.downloads, rpc_workers=self.settings.rpc_workers)
            self.model_manager.load_requested.connect(lambda path: self.load_model(str(path)))
            self.model_manager.context.setValue(self.settings.context_length)
        self.model_manager.show()
        self.model_manager.raise_()

    def _fit_input(self) -> None:
        """The message box grows with what is typed, from two lines up to eight."""
        lines = max(2, min(8, int(self.input.document().size().height())))
        spacing = self.input.fontMetrics().lineSpacing()
        margins = self.input.contentsMargins()
        extra = margins.top() + margins.bottom() + 2 * int(self.input.document().documentMargin())
        height = lines * spacing + extra
        if self.input.height() != height:
            self.input.setFixedHeight(height)

    def _picker_action(self, action: str) -> None:
        if action == ACTION_MANAGE:
            self.open_model_manager()
        elif action == ACTION_OPEN_FILE:
            self.choose_model()
        elif action == ACTION_REMOTE:
            self.connect_remote()

    def _refresh_models(self) -> None:
        """Fill the model picker with the models on disk (read on a worker thread)."""
        from app.core.models.demo import demo_model_path
        from app.core.models.local import installed_models

        self._background.run("models", lambda: (installed_models(), demo_model_path()))

    def _on_download_progress(self, progress: Any) -> None:
        if progress.state == "done":
            self._refresh_models()  # a finished download is in the picker at once

    def _on_background_done(self, tag: str, result: Any, error: BaseException | None) -> None:
        if tag == "models" and error is None:
            self.model_picker.set_models(*result)
            self.models_listed.emit()
        elif tag == "advice" and error is None:
            load_error, advice = result
            self.show_error(load_error, f"\n\n{advice}" if advice else "")
        elif tag == "memory" and error is None:
            self.status_memory.setText(result)

    def _show_model_in_use(self) -> None:
        """The picker and its tooltip show the model the chat uses now (or none)."""
        info = self.controller.info if self.controller.engine.loaded else None
        if info is None:
            self.model_picker.set_current("")
            self.model_picker.setToolTip("No model is loaded: pick one")
            return
        if info.architecture == "remote":
            self.model_picker.set_current(f"{info.name} (remote)")
        else:
            self.model_picker.set_current(info.path)
        self.model_picker.setToolTip(
            f"{info.name}\n{info.path}\n{FORMAT_NAMES.get(info.chat_format, info.chat_format)} · "
            f"{info.n_ctx:,} tokens of context"
        )

    def toggle_server(self, on: bool | None = None, port: int | None = None) -> None:
        """Start or stop the OpenAI-compatible API for the loaded model (this machine only)."""
        on = self.serve_action.isChecked() if on is None else on
        port = self.server_port if port is None else port
        if not on:
            if self.api_server is not None:
                self.api_server.stop()
                self.api_server = None
            self.serve_action.setChecked(False)
            self.server_indicator.setVisible(False)
            self.statusBar().showMessage("API server stopped.", 5000)
            return
        if (
            not self.controller.engine.loaded
            or self.controller.info is None
            or self.controller.info.architecture == "remote"
        ):
            self.serve_action.setChecked(False)
            self.show_notice("Load a local model first, then turn the API server on.")
            return
        from app.server.run import start_in_background

        try:
            self.api_server = start_in_background(
                self.controller.engine, Path(self.controller.info.path).stem, port=port
            )
        except Exception as err:
            self.serve_action.setChecked(False)
            self.show_error(err)
            return
        self.serve_action.setChecked(True)
        self._show_server()

    def _show_server(self) -> None:
        server = self.api_server
        if server is None:
            return
        self.server_indicator.setText(f"API on :{server.url.rsplit(':', 1)[-1]}")
        self.server_indicator.setToolTip(f"Serving {server.service.model_id} at {server.url}/v1")
        self.server_url_action.setText(f"{server.service.model_id} at {server.url}/v1")
        self.server_indicator.setVisible(True)

    def _copy_server_url(self) -> None:
        if self.api_server is not None:
            QGuiApplication.clipboard().setText(self.api_server.url + "/v1")
            self.statusBar().showMessage("Copied the API server's URL.", 3000)

    def connect_remote(self) -> None:
        """Ask where the remote model is (one form), then chat with it."""
        from app.gui.dialogs import RemoteModelDialog

        dialog = RemoteModelDialog(self)
        dialog.accepted.connect(lambda: self.use_remote(*dialog.answer()))
        dialog.open()

    def use_remote(self, url: str, model: str, api_key: str = "") -> None:
        """Chat with a model on another server (vLLM, llama-server, Ollama, another Mixtral Desk)."""
        from app.core.runtime.remote import RemoteEngine, RemoteSettings

        if self.controller.busy:
            return
        self.load_progress.setVisible(True)
        self.load_progress.setFormat(f"Connecting to {url}…")
        self.controller.use_engine(RemoteEngine(RemoteSettings(url, model, api_key)))

    def use_local_engine(self) -> None:
        if self.controller.busy:
            return
        self.load_model(self.settings.last_model or None)  # the controller returns to the local engine host

    def choose_model(self) -> None:
        """Pick a GGUF file anywhere and load it."""
        from app.gui.dialogs import ask_for_file

        ask_for_file(
            self,
            "Open a GGUF model",
            str(paths.models_dir()),
            "GGUF models (*.gguf)",
            lambda path: self.load_model(str(path)),
        )

    def _on_load_cancelled(self) -> None:
        self.load_progress.setVisible(False)
        self.cancel_load_button.setVisible(False)
        self._show_model_in_use()
        self.statusBar().showMessage("Loading cancelled.", 5000)

    def _on_model_loaded(self, info: ModelInfo) -> None:
        self.load_progress.setVisible(False)
        self.cancel_load_button.setVisible(False)
        self.send_button.setEnabled(True)
        self._show_model_in_use()
        self._refresh_models()
        self.status_model.setText(Path(info.path).stem)
        from app.core.planning.hardware import llama_build_info

        if info.architecture == "remote":
            backend = "remote"
        elif info.placement:
            backend = info.placement
        elif info.n_gpu_layers == 0:
            backend = "CPU"
        else:
            built_for = llama_build_info()[0].upper()
            backend = f"{built_for} {min(info.n_gpu_layers, info.n_layer + 1)}/{info.n_layer + 1}"
        self.status_backend.setText(backend)
        self.status_backend.setToolTip("\n".join(note.removeprefix("Memory plan: ") for note in info.notes[:2]))
        self.status_context.setText(f"context 0/{info.n_ctx}")
        self.status_speed.setText("")  # the previous model's speed says nothing about this one
        self.input.setPlaceholderText(f"Message {Path(info.path).stem} (Enter sends, Shift+Enter for a new line)")
        if self.api_server is not None:
            if info.architecture == "remote":  # the server serves the local engine host, which is not in use now
                self.toggle_server(False)
                self.show_notice("The API server stopped: the chat now uses a remote model.")
            else:
                self.api_server.service.model_id = Path(info.path).stem  # /v1/models, /health and replies follow
                self._show_server()
        if info.path != self.settings.last_model and info.architecture != "remote":
            self.settings = replace(self.settings, last_model=info.path)
            settings = self.settings
            self.disk.run(lambda: save_settings(settings))
        self._update_memory()

    def _on_model_failed(self, error: Exception) -> None:
        self.load_progress.setVisible(False)
        self.cancel_load_button.setVisible(False)
        self._show_model_in_use()
        if isinstance(error, ModelLoadError) and error.reason == "out_of_memory":
            # the planner reads the file's header: on a worker thread, then the message with its advice
            path = Path(error.path)
            self._background.run("advice", lambda: (error, self._memory_advice(path)))
            return
        self.show_error(error)

    def _memory_advice(self, path: Path) -> str:
        """What the planner suggests after an out-of-memory load (reads the file's header: not on the GUI thread)."""
        from app.core.planning.fit import device_for, plan_file
        from app.core.planning.planner import VERDICT_TOO_BIG, PlanSettings

        try:
            device = device_for()
            for n_ctx in (self.settings.context_length // 2, self.settings.context_length // 4, 2048):
                plan = plan_file(path, device, PlanSettings(n_ctx=max(512, n_ctx), n_parallel=LoadSettings.n_parallel))
                if plan.verdict != VERDICT_TOO_BIG:
                    return f"The planner suggests a {max(512, n_ctx)}-token context: {plan.summary()}"
        except Exception:
            return ""
        return "Even small contexts do not fit: choose a smaller quantization in the model manager."

    # -- conversations ------------------------------------------------------------------------------
    # The store is read and written on ``self.disk``'s thread, in order; the window keeps what it shows in memory
    # (``self.conversation`` and the transcript's rows) and never waits for the disk.

    def _open_first_conversation(self) -> None:
        if self.list_model.rowCount() == 0:
            self.new_conversation()
        else:
            self._select_id(self.list_model.conversation(0).id)  # type: ignore[union-attr]

    def new_conversation(self, *, mode: str = "chat") -> None:
        preset_id = self.preset_combo.currentData() or "assistant"
        preset = self._presets_by_id.get(preset_id)
        text = preset.text if mode == "chat" and preset is not None else ""
        chat_preset = preset_id if mode == "chat" else None
        self.disk.run(
            lambda: self.store.create(mode=mode, preset_id=chat_preset, system_prompt=text),
            lambda conversation: self._list_and_select(conversation.id),
        )
        self.input.setFocus()

    def _list_and_select(self, conversation_id: int) -> None:
        """Read the whole list again (the search cleared) and show ``conversation_id``."""
        self.search.blockSignals(True)
        self.search.clear()
        self.search.blockSignals(False)
        self.list_model.refresh("", then=lambda: self._select_id(conversation_id))

    def _select_id(self, conversation_id: int) -> None:
        row = self.list_model.row_of(conversation_id)
        if row >= 0:
            self.list_view.setCurrentIndex(self.list_model.index(row))  # currentChanged shows it

    def _keep_selection(self) -> None:
        """After the list was read again, the conversation on screen stays selected in it."""
        if self.conversation is not None:
            row = self.list_model.row_of(self.conversation.id)
            if row >= 0 and self.list_view.currentIndex().row() != row:
                self.list_view.setCurrentIndex(self.list_model.index(row))

    def _select_row(self, row: int) -> None:
        conversation = self.list_model.conversation(row)
        if conversation is None or (self.conversation is not None and self.conversation.id == conversation.id):
            return
        self.conversation = conversation
        self._editing = None
        self._shown_id = None  # its messages are being read
        plain = conversation.mode == "plain"
        self.pages.setCurrentWidget(self.story_edit if plain else self.chat_view)
        self.input.setVisible(not plain)
        self.send_button.setText("Continue" if plain else "Send")
        self.system_edit.blockSignals(True)
        self.system_edit.setPlainText(conversation.system_prompt)
        self.system_edit.blockSignals(False)
        index = self.preset_combo.findData(conversation.preset_id)
        if index >= 0:
            self.preset_combo.setCurrentIndex(index)
        self._restore_sampling(conversation.settings)
        if self._notice_for is not None and self._notice_for != conversation.id:
            self.notice.setVisible(False)  # it was about another conversation
            self._notice_for = None
        self._read_messages(conversation.id)

    def _read_messages(self, conversation_id: int, then: Any = None) -> None:
        """Read a conversation's messages on the disk thread and show them if it is still the one on screen."""

        def show(messages: list[StoredMessage]) -> None:
            if self.conversation is None or self.conversation.id != conversation_id:
                return  # another conversation was chosen meanwhile
            self._show_messages(messages)
            self._shown_id = conversation_id
            if self._reply_for == conversation_id:
                self._show_pending_reply()  # its reply is still being written
            self._show_conversation_status(messages)
            self._update_regenerate()
            if then is not None:
                then(messages)
            self.conversation_shown.emit(conversation_id)

        self.disk.run(lambda: self.store.messages(conversation_id), show)

    def _show_messages(self, messages: list[StoredMessage]) -> None:
        if self.conversation is not None and self.conversation.mode == "plain":
            self.story_edit.setPlainText(messages[0].content if messages else "")
            self.transcript.set_rows([])
            return
        self.transcript.set_rows(
            [TranscriptRow(m.role, m.content, m.stats, m.version, m.version_count) for m in messages]
        )

    def delete_conversation(self) -> None:
        if self.conversation is None:
            return
        conversation_id, title = self.conversation.id, self.conversation.title
        self._deleted.append(conversation_id)
        self.conversation = None
        self._shown_id = None
        self._show_undo()
        self.statusBar().showMessage(f"Deleted “{title}”.", UNDO_DELETE_MS)
        self.disk.run(lambda: self.store.delete(conversation_id))
        self.list_model.refresh(then=self._open_first_conversation)

    def _forget_deleted(self) -> None:
        self._deleted.clear()  # still restorable for a week from the store; no longer from this button
        self.undo_button.setVisible(False)

    def _show_undo(self) -> None:
        count = len(self._deleted)
        self.undo_button.setText("Undo delete" if count == 1 else f"Undo delete ({count})")
        self.undo_button.setVisible(count > 0)
        self._undo_timer.start()

    def undo_delete(self) -> None:
        if not self._deleted:
            return
        restored = self._deleted.pop()
        self._show_undo()
        self.disk.run(lambda: self.store.undelete(restored), lambda _: self._list_and_select(restored))

    def _sampling_json(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature.value(),
            "top_p": self.top_p.value(),
            "max_new_tokens": self.max_tokens.value(),
            "context_policy": self.settings_panel.policy(),
            "inspect_routing": self.inspect_routing.isChecked(),
        }

    def _update_conversation(self, **changes: Any) -> None:
        """Change the conversation on screen: at once in memory, on the disk thread in the store."""
        if self.conversation is None:
            return
        conversation_id = self.conversation.id
        self.conversation = replace(self.conversation, **changes)
        self.disk.run(lambda: self.store.update(conversation_id, **changes))

    def _save_sampling(self, *_: object) -> None:
        if not self._restoring:
            self._update_conversation(settings=self._sampling_json())

    def _restore_sampling(self, saved: dict[str, Any]) -> None:
        self._restoring = True
        try:
            self.temperature.setValue(float(saved.get("temperature", self.temperature.value())))
            self.top_p.setValue(float(saved.get("top_p", self.top_p.value())))
            self.max_tokens.setValue(int(saved.get("max_new_tokens", self.max_tokens.value())))
            policy = saved.get("context_policy")
            if policy in POLICIES:
                self.settings_panel.set_policy(policy)
            self.inspect_routing.setChecked(bool(saved.get("inspect_routing", False)))
        finally:
            self._restoring = False

    def _save_conversation_settings(self) -> None:
        self._update_conversation(system_prompt=self.system_edit.toPlainText())

    # -- chatting -----------------------------------------------------------------------------------
    # A reply belongs to the conversation it was asked in (``_reply_for``): it streams on screen only while that
    # conversation is shown, and is stored there even when another one is on screen by the time it finishes.

    def _request(self, messages: list[Message], *, plain: bool = False) -> GenerationRequest:
        sampling = SamplingSettings(
            temperature=self.temperature.value(), top_p=self.top_p.value(), max_new_tokens=self.max_tokens.value()
        )
        return GenerationRequest(
            tuple(messages), sampling, self.settings_panel.policy(), FORMAT_PLAIN if plain else None
        )

    def _history(self) -> list[Message]:
        """The system prompt and the messages on screen (the chosen version of each reply)."""
        system = self.system_edit.toPlainText().strip()
        lead = [Message("system", system)] if system else []
        return lead + [Message(row.role, row.text) for row in self.transcript.rows() if row.state != STATE_WAITING]

    def _ready(self) -> bool:
        """A conversation is on screen with its messages, and no reply is being written."""
        return not self.controller.busy and self.conversation is not None and self._shown_id == self.conversation.id

    def send(self) -> None:
        """Send the input (or continue the story); ignored while a reply streams or no model is loaded."""
        if not self._ready():
            return
        assert self.conversation is not None
        if not self.controller.engine.loaded:
            self.show_notice("Load a model first (File → Open model…).")
            return
        if self.conversation.mode == "plain":
            self._continue_story()
            return
        text = self.input.toPlainText().strip()
        if not text:
            return
        conversation_id = self.conversation.id
        if self._editing is not None:
            position, self._editing = self._editing, None
            self.disk.run(lambda: self.store.edit(conversation_id, position, text))
            self.transcript.set_rows([*self.transcript.rows()[:position], TranscriptRow("user", text)])
        else:
            self.disk.run(lambda: self.store.append(conversation_id, "user", text))
            self.transcript.append(TranscriptRow("user", text))
        self.input.clear()
        self._start_reply(self._history())
        self.list_model.refresh()  # the first message names the chat

    def _start_reply(self, history: list[Message], *, plain: bool = False) -> None:
        assert self.conversation is not None
        self._reply_for = self.conversation.id
        self._reply_plain = plain
        self._reply_text = ""
        self._streaming = self.controller.send(self._request(history, plain=plain))
        if not plain:
            self._replaced_row = self.transcript.row(self._regenerating) if self._regenerating is not None else None
            self._show_pending_reply()
        self.chat_view.set_busy(True)
        self.stop_button.setEnabled(True)
        self.send_button.setEnabled(False)
        self.regenerate_button.setEnabled(False)

    def _show_pending_reply(self) -> None:
        """The reply being written, as far as it has come, in the transcript (a new row, or a new version)."""
        if self.conversation is not None and self.conversation.mode == "plain":
            self.story_edit.setPlainText(self._plain_base + self._reply_text)
            return
        state = STATE_STREAMING if self._reply_text else STATE_WAITING
        if self._regenerating is not None:
            old = self.transcript.row(self._regenerating)
            count = self._replaced_row.version_count if self._replaced_row is not None else old.version_count
            self.transcript.update(
                self._regenerating,
                text=self._reply_text,
                stats={},
                version=count,
                version_count=count + 1,
                state=state,
                token_routes=None,
            )
        else:
            self.transcript.append(TranscriptRow("assistant", self._reply_text, state=state))

    def _reply_shown(self) -> bool:
        return self._reply_for is not None and self._reply_for == self._shown_id

    def _on_prompt_progress(self, done: int, total: int) -> None:
        rows = self.transcript.rowCount()
        if self._reply_shown() and rows and self.transcript.row(rows - 1).state == STATE_WAITING:
            self.transcript.update(rows - 1, prompt_done=done, prompt_total=total)

    def _continue_story(self) -> None:
        assert self.conversation is not None
        text = self._story_text()
        if not text.strip():
            return
        conversation_id = self.conversation.id

        def store_text() -> None:
            if self.store.messages(conversation_id):
                self.store.edit(conversation_id, 0, text)
            else:
                self.store.append(conversation_id, "user", text)

        self.disk.run(store_text)
        self._plain_base = text
        self._start_reply([Message("user", text)], plain=True)
        self.list_model.refresh()

    def _story_text(self) -> str:
        # toPlainText() turns no-break spaces into spaces, which would change the prompt's tokens.
        return self.story_edit.document().toRawText().replace("\u2029", "\n")

    def stop(self) -> None:
        self.controller.stop()

    def regenerate(self) -> None:
        """Write the last reply again; the earlier version is kept (the reply's ‹ › step through them)."""
        if not self._ready() or self.conversation.mode == "plain":  # type: ignore[union-attr]
            return
        rows = self.transcript.rows()
        if not any(row.role == "user" for row in rows):
            return
        history = self._history()
        if rows[-1].role == "assistant":
            self._regenerating = len(rows) - 1
            history = history[:-1]
        self._start_reply(history)

    def delete_message(self, position: int) -> None:
        """Delete one message of the chat on screen (a message's Delete button)."""
        if not self._ready():
            return
        assert self.conversation is not None
        conversation_id = self.conversation.id
        self._editing = None
        self.transcript.set_rows([row for i, row in enumerate(self.transcript.rows()) if i != position])
        self._update_regenerate()
        self.disk.run(lambda: self.store.delete_message(conversation_id, position))
        self._read_messages(conversation_id)  # the versions and figures as stored
        self.statusBar().showMessage("Message deleted.", 4000)

    def choose_version(self, position: int, version: int) -> None:
        """Show (and use from now on) another kept version of a reply."""
        if not self._ready():
            return
        assert self.conversation is not None
        conversation_id = self.conversation.id
        self.disk.run(lambda: self.store.choose_version(conversation_id, position, version))
        self._read_messages(conversation_id)

    def begin_edit(self, position: int) -> None:
        """Put a user message back into the input; sending replaces it and everything after it."""
        if not self._ready():
            return
        rows = self.transcript.rows()
        if 0 <= position < len(rows) and rows[position].role == "user":
            self._editing = position
            self.input.setPlainText(rows[position].text)
            self.input.setFocus()
            self.statusBar().showMessage("Editing a message: send to replace it and the replies after it.", 8000)

    def _on_text(self, text: str) -> None:
        self._reply_text += text
        if not self._reply_shown():
            return
        if self.conversation is not None and self.conversation.mode == "plain":
            self.story_edit.moveCursor(self.story_edit.textCursor().MoveOperation.End)
            self.story_edit.insertPlainText(text)
        else:
            self.transcript.append_text(text)

    def _on_reply_finished(self, generation: ReplyTicket) -> None:
        conversation_id, position, shown = self._reply_for, self._regenerating, self._reply_shown()
        plain = self._reply_plain
        self._end_reply()
        self._update_engine_status()
        stats = generation.stats.to_json() if generation.stats else {}
        text, base = generation.text, self._plain_base
        if conversation_id is not None:

            def store_reply() -> None:
                if plain:
                    self.store.edit(conversation_id, 0, base + text)
                elif text and position is not None:
                    self.store.add_version(conversation_id, position, text, stats)
                elif text:
                    self.store.append(conversation_id, "assistant", text, stats)

            self.disk.run(store_reply)
            if not shown and self.conversation is not None and self.conversation.id == conversation_id:
                self._read_messages(conversation_id)  # it was being read when the reply ended: read it again
        if shown:
            if generation.prompt is not None and generation.prompt.dropped:
                self.show_notice(generation.prompt.describe_dropped(), for_conversation=True)
            if not plain:
                last = position if position is not None else self.transcript.rowCount() - 1
                if text:
                    self.transcript.update(last, text=text, stats=stats, state="")
                else:
                    self._drop_pending_reply(position)
                    self.statusBar().showMessage("The reply was stopped before it wrote anything.", 5000)
            if generation.stats:
                self._show_reply_status(stats)
            self._maybe_trace(generation)
        else:
            self.statusBar().showMessage("A reply finished in another chat.", 5000)
        self._record_speed(generation)
        self._update_regenerate()
        self._update_memory()
        self.list_model.refresh()

    def _drop_pending_reply(self, position: int | None) -> None:
        """Take the reply being written off the screen: the new row goes, a regenerated reply shows as it was."""
        if position is None:
            self.transcript.remove_last()
        elif self._replaced_row is not None:
            self.transcript.set_row(position, self._replaced_row)

    def _record_speed(self, generation: ReplyTicket) -> None:
        """Remember how fast this model decoded here (the model manager shows it), on a worker thread."""
        from app.core.storage.speeds import record_speed

        info, stats = self.controller.info, generation.stats
        if info is None or stats is None or info.architecture == "remote":
            return
        path, speed, tokens = info.path, stats.generation_tokens_per_s, stats.generated_tokens
        self._background.run("speed", lambda: record_speed(path, speed, tokens))

    def _maybe_trace(self, generation: ReplyTicket) -> None:
        info = self.controller.info
        if not self.inspect_routing.isChecked() or info is None or not info.expert_count:
            return
        if generation.prompt is None or not getattr(generation, "token_ids", None):
            return
        prompt = list(generation.prompt.tokens)
        self._traced_for = self._shown_id
        self._reply_seconds = generation.stats.total_time_s if generation.stats else 0.0
        self.controller.trace_routing(prompt + list(generation.token_ids), len(prompt))

    def _on_routing(self, trace: Any) -> None:
        self.routing_view.show_trace(trace, getattr(self, "_reply_seconds", 0.0))
        if not self.routing_dock.isVisible():
            self.routing_dock.setVisible(True)
            # a third of the window at most: the chat stays the main thing
            self.resizeDocks([self.routing_dock], [max(200, self.height() // 3)], Qt.Orientation.Vertical)
        reply = [t for t in trace.tokens if not t.in_prompt]
        last = self.transcript.rowCount() - 1
        if reply and last >= 0 and self._traced_for == self._shown_id and self.transcript.row(last).role == "assistant":
            tips = []
            for route in reply:
                lines = [
                    f"layer {layer}: experts "
                    + " + ".join(
                        f"{e} ({w:.2f})" for e, w in zip(route.experts[layer], route.weights[layer] or (), strict=False)
                    )
                    for layer in range(trace.n_layer)
                ]
                tips.append((route.text, "\n".join(lines)))
            self.transcript.update(last, token_routes=tuple(tips))

    def _on_reply_failed(self, error: Exception) -> None:
        conversation_id, position, shown = self._reply_for, self._regenerating, self._reply_shown()
        self._end_reply()
        if shown and conversation_id is not None:
            if not self._reply_plain:
                self._drop_pending_reply(position)  # what was kept; nothing half-made
            self._update_regenerate()
        if not self.controller.engine.loaded:  # the model went with the failure (an offload worker was lost)
            self.status_model.setText("No model")
            self.status_backend.setText("")
            self.status_backend.setToolTip("")
        self.show_error(error)

    def _end_reply(self) -> None:
        self._streaming = None
        self._reply_for = None
        self._regenerating = None
        self.chat_view.set_busy(False)
        self.stop_button.setEnabled(False)
        self.send_button.setEnabled(True)

    def _update_regenerate(self) -> None:
        """Regenerate needs a chat with a message to answer, and no reply running."""
        chat = self.conversation is not None and self.conversation.mode == "chat"
        asked = any(row.role == "user" for row in self.transcript.rows())
        self.regenerate_button.setEnabled(chat and asked and self._streaming is None)

    def copy_last_reply(self) -> None:
        text = next((row.text for row in reversed(self.transcript.rows()) if row.role == "assistant"), "")
        if text:
            QGuiApplication.clipboard().setText(text)
            self.statusBar().showMessage("Last reply copied.", 3000)

    # -- presets ------------------------------------------------------------------------------------
    # The presets file is read and written on the disk thread; the combo box shows the last list read.

    def _change_presets(self, change: Any, select: Any = None) -> None:
        """Run ``change(presets)`` on the disk thread, then list the presets again and select ``select(result)``
        (default: the preset that was selected)."""

        def work() -> tuple[Any, list[Preset]]:
            result = change(self.presets) if change is not None else None
            return result, self.presets.all()

        def show(outcome: tuple[Any, list[Preset]]) -> None:
            result, presets = outcome
            self._fill_presets(presets, select(result) if select is not None else None)

        self.disk.run(work, show)

    def _fill_presets(self, presets: list[Preset], select: str | None = None) -> None:
        current = (
            select or self.preset_combo.currentData() or (self.conversation.preset_id if self.conversation else None)
        )
        self._presets_by_id = {preset.id: preset for preset in presets}
        self.preset_combo.blockSignals(True)
        self.preset_combo.clear()
        for preset in presets:
            label = preset.name + (" (edited)" if preset.modified else "") + ("" if preset.builtin else " ★")
            self.preset_combo.addItem(label, preset.id)
        index = self.preset_combo.findData(current)
        self.preset_combo.setCurrentIndex(max(index, 0))
        self.preset_combo.blockSignals(False)

    def _preset_chosen(self, index: int) -> None:
        preset = self._presets_by_id.get(self.preset_combo.itemData(index))
        if preset is None:
            return
        self.system_edit.blockSignals(True)
        self.system_edit.setPlainText(preset.text)
        self.system_edit.blockSignals(False)
        self._update_conversation(preset_id=preset.id, system_prompt=preset.text)

    def _ask_preset_name(self, purpose: str) -> None:
        """Ask for a preset's name (``new``: save the system prompt as a preset; ``rename``: the chosen one)."""
        from PySide6.QtWidgets import QInputDialog

        preset = self._presets_by_id.get(self.preset_combo.currentData())
        if purpose == "rename" and (preset is None or preset.builtin):
            self.statusBar().showMessage("Built-in presets keep their names; duplicate one to rename it.", 6000)
            return
        preset_id = preset.id if preset is not None else None
        dialog = QInputDialog(self)
        dialog.setObjectName("presetName")
        dialog.setWindowTitle("Save preset" if purpose == "new" else "Rename preset")
        dialog.setLabelText("Preset name:")
        dialog.setTextValue("" if purpose == "new" or preset is None else preset.name)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.textValueSelected.connect(lambda name: self._name_preset(purpose, preset_id, name))
        dialog.open()

    def _name_preset(self, purpose: str, preset_id: str | None, name: str) -> None:
        name = name.strip()
        if not name:
            self.statusBar().showMessage("A preset needs a name; nothing was saved.", 6000)
            return
        if purpose == "new":
            text = self.system_edit.toPlainText()

            def chosen(preset: Preset) -> str:
                self._update_conversation(preset_id=preset.id)
                return preset.id

            self._change_presets(lambda presets: presets.create(name, text), chosen)
        elif preset_id:
            self._change_presets(lambda presets: presets.update(preset_id, name=name))

    def _preset_update(self) -> None:
        preset_id, text = self.preset_combo.currentData(), self.system_edit.toPlainText()
        if preset_id:
            self._change_presets(lambda presets: presets.update(preset_id, text=text))

    def _preset_duplicate(self) -> None:
        preset_id = self.preset_combo.currentData()
        if preset_id:
            self._change_presets(lambda presets: presets.duplicate(preset_id), lambda preset: preset.id)

    def _preset_delete(self) -> None:
        preset_id = self.preset_combo.currentData()
        if preset_id:
            self._change_presets(lambda presets: presets.delete(preset_id), lambda _: "")

    def _preset_reset(self) -> None:
        self._change_presets(lambda presets: presets.reset_builtins())

    # -- import / export ----------------------------------------------------------------------------

    def export_to(self, path: Path, kind: str) -> None:
        """Write the conversation on screen to ``path`` (on the disk thread; a message says when it is done)."""
        if self.conversation is None:
            return
        conversation_id = self.conversation.id

        def work() -> None:
            if kind == "md":
                path.write_text(self.store.export_markdown(conversation_id), encoding="utf-8")
            else:
                data = self.store.export_json(conversation_id)
                path.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")

        self.disk.run(work, lambda _: self.statusBar().showMessage(f"Exported to {path.name}.", 5000))

    def import_from(self, path: Path) -> None:
        """Import a conversation exported as JSON and show it."""
        self.disk.run(
            lambda: self.store.import_json(json.loads(path.read_text(encoding="utf-8"))),
            lambda conversation: self._list_and_select(conversation.id),
        )

    def _export_dialog(self, kind: str) -> None:
        from app.gui.dialogs import ask_for_file

        filters = "Markdown (*.md)" if kind == "md" else "JSON (*.json)"
        ask_for_file(
            self, "Export conversation", "", filters, lambda path: self.export_to(path, kind), save_suffix=kind
        )

    def _import_dialog(self) -> None:
        from app.gui.dialogs import ask_for_file

        ask_for_file(self, "Import conversation", "", "JSON (*.json)", self.import_from)

    # -- settings, status, errors -------------------------------------------------------------------

    def open_settings(self) -> None:
        from app.gui.settings_dialog import SettingsDialog

        dialog = SettingsDialog(self.settings, self)
        dialog.accepted.connect(lambda: self.apply_settings(dialog.result_settings()))
        dialog.open()

    def apply_settings(self, settings: Settings) -> None:
        from app.gui.theme import apply_theme, is_dark

        def loading(s: Settings) -> tuple[object, ...]:
            return (
                s.context_length,
                s.gpu_layers,
                s.flash_attention,
                s.kv_cache_type,
                s.threads,
                s.rpc_workers,
                s.cpu_moe,
            )

        reload = loading(settings) != loading(self.settings)
        if self.model_manager is not None and settings.rpc_workers != self.settings.rpc_workers:
            self.model_manager.set_workers(settings.rpc_workers)
        self.settings = settings
        self.disk.run(lambda: save_settings(settings))
        self.downloads.manager.connections = settings.download_connections
        paths.set_models_dir(settings.models_dir)
        apply_theme(settings.theme, settings.font_size)
        self.chat_view.set_dark(is_dark(settings.theme))
        if reload and self.controller.engine.loaded and not self.controller.busy:
            self.load_model(self.settings.last_model or None)

    def _update_memory(self) -> None:
        """RAM (and VRAM when layers are on a GPU) in the status bar, measured on a worker thread."""
        info = self.controller.info
        with_gpu = info is not None and info.n_gpu_layers > 0

        def measure() -> str:
            import psutil

            text = f"RAM {psutil.Process().memory_info().rss / 1024**3:.1f} GiB"
            if with_gpu:
                from app.core.planning.hardware import probe_nvml

                gpus, _ = probe_nvml()
                if gpus:
                    used = gpus[0].total_bytes - gpus[0].free_bytes
                    text += f" · VRAM {used / 1024**3:.1f}/{gpus[0].total_bytes / 1024**3:.0f} GiB"
            return text

        self._background.run("memory", measure)

    def _update_engine_status(self) -> None:
        health = self.controller.engine.health()
        if not health.alive:
            text = "engine stopped"
        elif health.busy:
            text = f"{health.active} answering" + (f" · {health.queued} waiting" if health.queued else "")
        else:
            text = ""
        if self.status_engine.text() != text:
            self.status_engine.setText(text)
            self.status_engine.setToolTip(health.error or "Replies being decoded together, and requests waiting")

    def _conversation_menu(self, position: QPoint) -> None:
        """Right-click on a conversation: rename, export, delete."""
        index = self.list_view.indexAt(position)
        if not index.isValid():
            return
        self.list_view.setCurrentIndex(index)
        menu = QMenu(self.list_view)
        menu.setObjectName("conversationMenu")
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        menu.addAction("Rename…", self.rename_conversation)
        menu.addAction("Export as Markdown…", lambda: self._export_dialog("md"))
        menu.addAction("Export as JSON…", lambda: self._export_dialog("json"))
        menu.addSeparator()
        menu.addAction("Delete", self.delete_conversation)
        menu.popup(self.list_view.viewport().mapToGlobal(position))

    def rename_conversation(self) -> None:
        """Ask for a new title for the conversation on screen."""
        from PySide6.QtWidgets import QInputDialog

        if self.conversation is None:
            return
        conversation_id = self.conversation.id
        dialog = QInputDialog(self)
        dialog.setObjectName("renameConversation")
        dialog.setWindowTitle("Rename chat")
        dialog.setLabelText("Title:")
        dialog.setTextValue(self.conversation.title)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.textValueSelected.connect(lambda title: self._retitle(conversation_id, title))
        dialog.open()

    def _retitle(self, conversation_id: int, title: str) -> None:
        title = title.strip()
        if not title:
            return
        if self.conversation is not None and self.conversation.id == conversation_id:
            self.conversation = replace(self.conversation, title=title)
        self.disk.run(lambda: self.store.update(conversation_id, title=title))
        self.list_model.refresh()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self._collapsed_for_width and self.width() < NARROW_WIDTH:
            self.toggle_settings_action.setChecked(False)  # the chat gets the width; Ctrl+Shift+B brings it back
        self._collapsed_for_width = True

    def _show_panel(self, which: str, shown: bool) -> None:
        """Show or hide a side panel ("list" or "settings"). When the window is too narrow for the list, the chat
        and the settings side by side (a small window, a large font), the panel opened takes the other's place
        instead of squeezing everything or pushing the window past the screen."""
        panel, other = (
            (self.conversations_panel, self.toggle_settings_action)
            if which == "list"
            else (self.settings_panel, self.toggle_conversations_action)
        )
        if shown and self.width() < self._width_for((self.conversations_panel, self.settings_panel)):
            other.setChecked(False)
        panel.setVisible(shown)

    def _width_for(self, side_panels: tuple[QWidget, ...]) -> int:
        """The narrowest the splitter can be with the chat and ``side_panels`` side by side."""
        panels = (self.splitter.widget(1), *side_panels)
        return (
            sum(max(p.minimumWidth(), p.minimumSizeHint().width()) for p in panels)
            + len(side_panels) * self.splitter.handleWidth()
        )

    def resizeEvent(self, event: QResizeEvent) -> None:
        """A window made narrower than its open panels need closes the settings, then the list (their buttons
        and shortcuts bring them back), instead of refusing to shrink or cutting them off."""
        super().resizeEvent(event)
        self.splitter.setMinimumWidth(self.splitter.widget(1).minimumSizeHint().width())  # the font may change
        for action, panel in (
            (self.toggle_settings_action, self.settings_panel),
            (self.toggle_conversations_action, self.conversations_panel),
        ):
            shown = tuple(p for p in (self.conversations_panel, self.settings_panel) if not p.isHidden())
            if panel in shown and self.width() < self._width_for(shown):
                action.setChecked(False)

    def _focus_search(self) -> None:
        self.search.setFocus()
        self.search.selectAll()

    def show_about(self) -> None:
        """Version, the llama.cpp build and backend, where data lives, and licences."""
        from app import __version__
        from app.core.planning.hardware import llama_build_info

        backend, offload, backends, llama_version = llama_build_info()
        folders = "<br>".join(
            f"{name}: <code>{folder}</code>"
            for name, folder in (
                ("Conversations and settings", paths.data_dir()),
                ("Models", paths.models_dir()),
                ("Cache", paths.cache_dir()),
            )
        )
        text = (
            f"<h3>{APP_NAME} {__version__}</h3>"
            f"<p>llama-cpp-python {llama_version or '?'}, built for {backend.upper()}"
            f"{' with GPU offload' if offload else ' (CPU only)'}{f'; ggml backends: {backends}' if backends else ''}.</p>"
            f"<p>{folders}</p>"
            "<p>Mixtral Desk is Apache-2.0 licensed. llama.cpp and llama-cpp-python: MIT. Qt for Python "
            "(PySide6): LGPLv3. Mixtral weights: Apache-2.0 (Mistral AI); downloaded files keep their own "
            "licences.</p>"
        )
        box = QMessageBox(QMessageBox.Icon.Information, f"About {APP_NAME}", text, parent=self)
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setObjectName("about")
        box.open()

    def show_notice(self, text: str, *, for_conversation: bool = False) -> None:
        """A banner above the chat; ``for_conversation``: about this conversation only, gone when another shows."""
        self.notice.setText(text)
        self.notice.setVisible(True)
        self._notice_for = self.conversation.id if for_conversation and self.conversation is not None else None

    def _show_reply_status(self, stats: dict[str, Any]) -> None:
        """tok/s and context use of a reply (the current conversation's latest) in the status bar."""
        self.status_speed.setText(f"{stats.get('generation_tokens_per_s', 0.0):.1f} tok/s")
        used, size = stats.get("context_used", 0), stats.get("context_size", 0)
        self.status_context.setText(f"context {used}/{size}" if size else f"context {used} tokens")

    def _show_conversation_status(self, messages: list[Any]) -> None:
        """The status bar describes the conversation on screen: its latest reply's figures, or an empty context."""
        latest = next((m.stats for m in reversed(messages) if m.role == "assistant" and m.stats), None)
        if latest:
            self._show_reply_status(latest)
            return
        info = self.controller.info
        self.status_speed.setText("")
        self.status_context.setText(f"context 0/{info.n_ctx}" if info is not None and info.n_ctx else "")

    def show_error(self, error: BaseException, extra: str = "") -> None:
        """One place that shows errors: the message as core wrote it, in a non-blocking dialog."""
        box = QMessageBox(QMessageBox.Icon.Warning, APP_NAME, f"{error}{extra}", parent=self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.last_error = f"{error}{extra}"
        box.open()

    def _window_settings(self) -> QSettings:
        return QSettings(str(paths.config_dir() / "window.ini"), QSettings.Format.IniFormat)

    def _restore_window_state(self) -> None:
        stored = self._window_settings()
        geometry = stored.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1200, 780)
        splitter = stored.value("splitter")
        if splitter is not None:
            self.splitter.restoreState(splitter)

    def closeEvent(self, event: QCloseEvent) -> None:
        stored = self._window_settings()
        stored.setValue("geometry", self.saveGeometry())
        stored.setValue("splitter", self.splitter.saveState())
        stored.sync()
        if self.api_server is not None:
            self.api_server.stop()
        self.controller.shutdown()
        if self.model_manager is not None:
            self.model_manager.close()
        self.disk.run(self.store.close)
        self.disk.close()  # what is queued is written before the app quits
        super().closeEvent(event)
