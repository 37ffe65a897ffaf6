"""The model manager: what this machine can run, and downloading, verifying and managing Mixtral files.

Plans, hardware probes and verification run on worker threads; the table is a Qt model whose rows are the
catalog entries and whose badges update when the context length or KV type changes.
"""

from __future__ import annotations

import html
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QDesktopServices,
    QDragEnterEvent,
    QDropEvent,
    QFont,
    QKeySequence,
    QResizeEvent,
    QShortcut,
    QStandardItem,
    QStandardItemModel,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.core.models import catalog
from app.core.models.catalog import CatalogEntry
from app.core.models.downloads import Progress, spec_for_catalog_entry
from app.core.planning.planner import VERDICT_TOO_BIG, Device, MemoryPlan, PlanSettings, recommend
from app.core.planning.text import human_bytes, short_verdict, size_label, speed
from app.core.runtime.types import LoadSettings
from app.core.storage import paths
from app.gui.background import BackgroundRunner
from app.gui.dialogs import ask_for_file
from app.gui.downloads import DownloadService

COLUMNS = ("Model", "Quant", "Size", "Quality", "Fits here", "Speed", "Status")
Index = QModelIndex | QPersistentModelIndex


@dataclass
class Row:
    entry: CatalogEntry
    plan: MemoryPlan | None = None
    status: str = ""
    recommended: bool = False
    installed: bool = False  # as found when the rows were read (on a worker thread)


def read_rows(show_unusable: bool) -> list[Row]:
    """The table's rows from the catalog and the disk: the catalog's files, then models on this machine that
    it does not list (imported ones). Reads files: call it on a worker thread."""
    from app.core.models.local import local_entries
    from app.core.runtime.tuning import tuned_settings

    rows = []
    catalog_entries = catalog.entries()
    for entry in catalog_entries + local_entries(catalog_entries):
        installed = entry.installed
        if not (entry.model.loadable or installed or show_unusable):
            continue
        tuned = installed and bool(tuned_settings(entry.first_path))
        status = ("ready" + (" · tuned" if tuned else "")) if installed else "not downloaded"
        rows.append(Row(entry, status=status, installed=installed))
    return rows


def status_text(progress: Progress) -> str:
    """A row's status from a download event."""
    if progress.state == "downloading" and progress.total:
        eta = (
            f", {progress.eta_s / 60:.0f} min left"
            if progress.eta_s and progress.eta_s >= 60
            else (f", {progress.eta_s:.0f} s left" if progress.eta_s else "")
        )
        return f"downloading {progress.done / progress.total:.0%} · {human_bytes(progress.speed_bps)}/s{eta}"
    if progress.state == "failed":
        return f"failed: {progress.message}"
    if progress.state == "done":
        return "ready"
    if progress.state == "cancelled":
        return "not downloaded"
    if progress.state == "retrying":
        return f"retrying: {progress.message}"
    return progress.state


class CatalogTableModel(QStandardItemModel):
    """Catalog entries with their plan for the chosen settings and their local status.

    The texts live in Qt's own items, set when a row, its plan or its status changes: painting the table and
    sizing its columns never call into Python (a Python ``data()`` is asked for every cell and role on every
    paint, thousands of calls that each wait for the GIL while a download or a reply runs beside them).
    """

    def __init__(self) -> None:
        super().__init__(0, len(COLUMNS))
        self.setHorizontalHeaderLabels(list(COLUMNS))
        self.rows: list[Row] = []
        self.measured: dict[str, float] = {}  # median tok/s measured on this machine, by entry id
        self.unreadable: dict[str, str] = {}  # files on disk the planner could not read, with why
        self.show_unusable = False  # files current llama.cpp refuses (old layout) stay hidden unless on disk
        self._bold = QFont()
        self._bold.setBold(True)

    def set_rows(self, rows: list[Row]) -> None:
        """Show rows read by ``read_rows``."""
        self.rows = rows
        self.setRowCount(0)
        for _row in rows:
            items = [QStandardItem() for _ in COLUMNS]
            for item in items:
                item.setEditable(False)
            self.appendRow(items)
        for index in range(len(rows)):
            self._show(index)

    def row_of(self, entry_id: str) -> int:
        return next((i for i, row in enumerate(self.rows) if row.entry.id == entry_id), -1)

    def row_at(self, index: Index) -> Row | None:
        """The row shown at ``index`` (any column)."""
        return self.rows[index.row()] if index.isValid() and 0 <= index.row() < len(self.rows) else None

    def set_plans(
        self,
        plans: dict[str, MemoryPlan | None],
        recommended: set[str],
        measured: dict[str, float],
        unreadable: dict[str, str],
    ) -> None:
        self.measured = measured
        self.unreadable = unreadable
        for index, row in enumerate(self.rows):
            row.plan = plans.get(row.entry.id, row.plan)
            row.recommended = row.entry.id in recommended
            self._show(index)

    def set_status(self, entry_id: str, status: str) -> None:
        index = self.row_of(entry_id)
        if index >= 0 and self.rows[index].status != status:
            self.rows[index].status = status
            self._set(index, COLUMNS.index("Status"), status, status)

    def _show(self, index: int) -> None:
        """Put row ``index``'s texts, tooltips and font into its items (only what changed)."""
        row = self.rows[index]
        for column in range(len(COLUMNS)):
            self._set(index, column, self._text(row, column), self._tooltip(row, column))
            item = self.item(index, column)
            if item.font().bold() != row.recommended:
                item.setFont(self._bold if row.recommended else QFont())

    def _set(self, index: int, column: int, text: str, tooltip: str | None) -> None:
        item = self.item(index, column)
        if item.data(Qt.ItemDataRole.DisplayRole) != text:
            item.setText(text)
        if item.toolTip() != (tooltip or ""):
            item.setToolTip(tooltip or "")

    def _text(self, row: Row, column: int) -> str:
        entry, plan = row.entry, row.plan
        if column == 0:
            return entry.model.name
        if column == 1:
            return entry.quant.quant
        if column == 2:  # the whole story (computed or from the hub, file name checked or not) is its tooltip
            return ("" if entry.quant.size_exact else "≈ ") + human_bytes(entry.quant.size)
        if column == 3:
            return entry.quant.note
        if column == 4:
            if not entry.model.loadable:
                return "old file layout"
            if entry.id in self.unreadable:
                return "unreadable file"
            if plan is None:
                return "planning…"
            return ("★ " if row.recommended else "") + short_verdict(plan)
        if column == 5:
            measured = self.measured.get(entry.id)
            if measured is not None:
                return f"{measured:.0f} tok/s measured" if measured >= 10 else f"{measured:.1f} tok/s measured"
            return speed(plan) if plan is not None and entry.model.loadable else ""
        if column == 6:
            return row.status
        return ""

    def _tooltip(self, row: Row, column: int) -> str | None:
        entry, plan = row.entry, row.plan
        if column == 2:
            how = (
                "Exact: the file's size on the Hugging Face Hub."
                if entry.quant.size_exact
                else "Computed: what llama.cpp's quantizer makes of Mixtral's real architecture at this level "
                "(a dry run, header included); the hub's exact figure replaces it once it has been read."
            )
            return f"{size_label(entry.quant)}\n{how}"
        if column == 4 and entry.id in self.unreadable:
            return self.unreadable[entry.id] + "\nDelete it and download it again."
        if column == 4 and plan is not None:
            best = "★ Recommended: the best quality that fits this machine.\n" if row.recommended else ""
            return best + plan.summary() + "\n" + "\n".join(plan.notes)
        if column == 5:
            if entry.id in self.measured:
                return "The median decode speed of this file's latest replies in your chats on this machine."
            return "Estimated by the memory planner from this machine's memory bandwidth (~: not measured yet)."
        if column == 1:
            return entry.quant.note  # the Quality column's text, which a narrow window cuts first
        if column in (0, 3, 6):
            return self._text(row, column)  # the whole text of a narrowed cell
        return None


class ModelManagerWindow(QWidget):
    """Hardware, every catalog quantization with its verdict for this machine, and download actions.

    Signals:
        load_requested(Path): the user asked to chat with a downloaded model.
        plans_updated(): badges were recomputed (tests and screenshots wait on it).
    """

    load_requested = Signal(object)
    plans_updated = Signal()
    verified = Signal(str, object)

    def __init__(
        self,
        downloads: DownloadService,
        *,
        device: Device | None = None,
        hardware_text: str | None = None,
        parent: QWidget | None = None,
        confirm: Callable[[str], bool] | None = None,
        rpc_workers: Sequence[str] = (),
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models")
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.close)  # downloads go on: they belong to the app
        self.setAcceptDrops(True)
        self.downloads = downloads
        self._device = device
        self._assumed = device is not None  # a what-if machine (tests, screenshots): planned as given
        self._rpc_workers = tuple(rpc_workers)
        self._confirm = confirm or self._ask
        self._worker = BackgroundRunner("model-manager")
        self._worker.done.connect(self._on_work_done)
        self.model = CatalogTableModel()
        self.hardware_label = QLabel(hardware_text or "Checking this machine…")
        self.hardware_label.setWordWrap(True)
        self.hardware_label.linkActivated.connect(self._gpu_help)
        self.context = QSpinBox(minimum=512, maximum=131072, singleStep=1024, value=4096)
        self.context.setAccessibleName("Context length")
        self.context.setToolTip(
            f"Tokens per conversation. Fits are planned for {LoadSettings.n_parallel} conversations at once "
            "(your chat and one API client), each with its own KV cache."
        )
        self.kv = QComboBox()
        self.kv.addItems(["f16", "q8_0", "q4_0"])
        self.kv.setAccessibleName("KV cache type")
        self.show_unusable = QCheckBox("Show unusable files")
        self.show_unusable.setToolTip(
            "Also list files in the old per-expert layout (late 2023), which current llama.cpp cannot load."
        )
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.table.horizontalHeader()
        # Widths are measured when the rows or their plans change, not on every progress update, and shared
        # out to fit the window (see _share_width); the last column takes what is left over.
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        header.setMinimumSectionSize(40)
        self._natural: list[int] = []  # each column's width for its texts, measured by _fit_columns
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)
        self.table.setAccessibleName("Model quantizations")
        self.buttons = {
            name: QPushButton(name)
            for name in (
                "Download",
                "Pause",
                "Resume",
                "Cancel",
                "Verify",
                "Delete",
                "Load in chat",
                "Open folder",
                "Import…",
            )
        }
        layout = QVBoxLayout(self)
        layout.addWidget(self.hardware_label)
        settings = QHBoxLayout()
        settings.addWidget(QLabel("Context length"))
        settings.addWidget(self.context)
        settings.addWidget(QLabel("KV cache"))
        settings.addWidget(self.kv)
        settings.addStretch(1)
        settings.addWidget(self.show_unusable)
        layout.addLayout(settings)
        layout.addWidget(self.table, 1)
        button_bar = QWidget()
        # one row of buttons, or two when the window is too narrow for one (see _arrange_buttons): the row's
        # width must not hold the window wider than the screen, so the bar claims no minimum width of its own
        button_bar.setMinimumWidth(1)
        self._actions = QGridLayout(button_bar)
        self._actions.setContentsMargins(0, 0, 0, 0)
        self._actions_rows = 0
        layout.addWidget(button_bar)
        self._arrange_buttons()
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        self._replan_timer = QTimer(self)
        self._replan_timer.setSingleShot(True)
        self._replan_timer.setInterval(150)
        self._replan_timer.timeout.connect(self.replan)
        self.context.valueChanged.connect(lambda _: self._replan_timer.start())
        self.kv.currentTextChanged.connect(lambda _: self._replan_timer.start())
        self.show_unusable.toggled.connect(self._on_show_unusable)
        self.downloads.progressed.connect(self._on_progress)
        self.table.selectionModel().currentRowChanged.connect(lambda *_: self._update_buttons())
        handlers = {
            "Download": self.download_selected,
            "Pause": self.pause_selected,
            "Resume": self.resume_selected,
            "Cancel": self.cancel_selected,
            "Verify": self.verify_selected,
            "Delete": self.delete_selected,
            "Load in chat": self.load_selected,
            "Open folder": self.open_folder,
            "Import…": self.import_dialog,
        }
        for name, handler in handlers.items():
            self.buttons[name].clicked.connect(handler)
        self.resize(1100, 620)
        self._rows_read = False
        self._probing = hardware_text is None and device is None
        if hardware_text is None:
            self._worker.run("hardware", self._probe)
        self._reload()
        self._worker.run("refresh", self._refresh_from_hub)
        self._update_buttons()

    # -- planning -----------------------------------------------------------------------------------

    def set_workers(self, endpoints: Sequence[str]) -> None:
        """Plan with these RPC workers from now on: ask them (off the GUI thread), then replan every row."""
        self._rpc_workers = tuple(endpoints)
        if self._assumed:
            return
        self._probing = True
        self.hardware_label.setText("Checking this machine and its workers…")
        self._worker.run("hardware", self._probe)

    def _probe(self) -> tuple[Device, str]:
        from app.core.planning import hardware
        from app.core.planning.fit import device_for

        report = hardware.probe(self._rpc_workers)
        device = self._device if self._assumed and self._device else device_for(report=report)
        free_disk = shutil.disk_usage(paths.ensure(paths.models_dir())).free
        gpus = (
            "; ".join(
                f"{html.escape(g.name)} · {human_bytes(g.free_bytes)} free of {human_bytes(g.total_bytes)}"
                + (" (Metal working-set limit)" if g.backend == "metal" else " VRAM")
                for g in report.gpus
            )
            or "none found"
        )
        build = f"{report.llama_cpp_version}, built for {report.llama_backend}"
        if not report.llama_supports_gpu_offload:
            build += ' (CPU only: <a href="gpu-help">how to use a GPU</a>)'
        cells = (
            ("GPU", gpus),
            ("RAM", f"{human_bytes(report.ram_total_bytes)} ({human_bytes(report.ram_available_bytes)} free)"),
            ("llama.cpp", build),
            ("Free disk", f"{human_bytes(free_disk)} in the models folder"),
        )
        pairs = [cells[:2], cells[2:]]
        if self._rpc_workers:
            answered = {worker.endpoint: worker for worker in report.rpc_workers}
            workers = "; ".join(
                f"{html.escape(w)} · {human_bytes(sum(d.free_bytes for d in answered[w].devices))} free of "
                f"{human_bytes(sum(d.total_bytes for d in answered[w].devices))}"
                if w in answered
                else f"{html.escape(w)} · not answering"
                for w in self._rpc_workers
            )
            pairs.append((("Workers", workers),))
        rows = "".join(
            "<tr>"
            + "".join(f"<td><b>{name}:</b>&nbsp;</td><td>{value}&nbsp;&nbsp;&nbsp;</td>" for name, value in pair)
            + "</tr>"
            for pair in pairs
        )
        text = f"<table cellspacing='0' cellpadding='1'>{rows}</table>"
        return device, text

    def _gpu_help(self, _link: str) -> None:
        box = QMessageBox(
            QMessageBox.Icon.Information,
            "Use a GPU",
            "This llama.cpp was built for the CPU only. To offload to a GPU, reinstall llama-cpp-python built "
            "for it, then restart Mixtral Desk:\n\n"
            'NVIDIA:  CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python\n'
            'Apple Silicon:  CMAKE_ARGS="-DGGML_METAL=on" pip install --force-reinstall --no-cache-dir '
            "llama-cpp-python",
            parent=self,
        )
        box.setObjectName("gpuHelp")
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    @staticmethod
    def _refresh_from_hub() -> int:
        """Exact sizes and hashes from the hub when it can be reached; offline is normal and quiet."""
        from app.core.errors import DeskError

        described = 0
        for model in catalog.catalog():
            if model.repo:
                try:
                    described += catalog.refresh_from_hub(model)
                except DeskError:
                    return described  # offline or unreachable: keep the cached and estimated figures
        return described

    def settings(self) -> PlanSettings:
        kv = self.kv.currentText()
        # the window loads with room for its own chat and one API client (LoadSettings.n_parallel), with
        # flash attention as it loads by default
        return PlanSettings(n_ctx=self.context.value(), kv_type=kv, n_parallel=LoadSettings.n_parallel)

    def _on_show_unusable(self, shown: bool) -> None:
        self.model.show_unusable = shown
        self._reload()

    def replan(self) -> None:
        """Recompute every row's verdict for the current settings, off the GUI thread."""
        if self._probing or not self._rows_read:
            return  # the hardware probe and the rows' reading replan when they are done
        settings, device = self.settings(), self._device
        entries = [row.entry for row in self.model.rows]

        def work() -> tuple[dict[str, MemoryPlan | None], set[str], dict[str, float], dict[str, str]]:
            from app.core.errors import DeskError
            from app.core.planning.fit import device_for, plan_entry
            from app.core.storage.speeds import measured_speed

            target = device or device_for()
            plans: dict[str, MemoryPlan | None] = {}
            unreadable: dict[str, str] = {}
            for e in entries:
                try:
                    plans[e.id] = plan_entry(e, target, settings)
                except DeskError as err:  # a damaged file on disk: its row says so, the others are planned
                    plans[e.id] = None
                    unreadable[e.id] = str(err)
            recommended: set[str] = set()
            for model_id in {e.model.id for e in entries if e.model.loadable and e.model.repo}:
                pairs = [(e.id, plan) for e in entries if e.model.id == model_id and (plan := plans[e.id]) is not None]
                best = recommend(pairs)
                if best is not None:
                    recommended.add(best[0])
            measured = {
                e.id: speed for e in entries if e.installed and (speed := measured_speed(e.first_path)) is not None
            }
            return plans, recommended, measured, unreadable

        self._worker.run("plans", work)

    def _on_work_done(self, tag: str, result: Any, error: Exception | None) -> None:
        if tag == "hardware":
            if error is None:
                device, text = result
                self._device = device
                self.hardware_label.setText(text)
            else:
                self.hardware_label.setText(f"Could not check this machine: {error}")
            if self._probing:
                self._probing = False
                self.replan()
        elif tag == "refresh":
            if error is None and result:
                self._reload()
        elif tag == "rows":
            if error is None:
                self._show_rows(result)
            else:
                self.message.setText(f"Could not read the models on this machine: {error}")
        elif tag == "delete":
            self.message.setText(f"Deleted {result}." if error is None else f"Delete failed: {error}")
            self._reload()
        elif tag == "plans" and error is None:
            self.model.set_plans(*result)
            self._fit_columns()
            self.plans_updated.emit()
        elif tag.startswith("verify:"):
            entry_id = tag.partition(":")[2]
            if error is not None:
                self.model.set_status(entry_id, f"verify failed: {error}")
            else:
                bad = [v for v in result if v.ok is False]
                status = (
                    "ready (checksum verified)"
                    if all(v.ok for v in result)
                    else (
                        "failed: damaged file, delete it and download again" if bad else "ready (no checksum published)"
                    )
                )
                self.model.set_status(entry_id, status)
            self.verified.emit(entry_id, result)
        elif tag == "import":
            self.message.setText(
                f"Imported {result}: choose it in the model picker at the top of the chat."
                if error is None
                else f"Import failed: {error}"
            )
            if error is None:
                self._reload()  # it gets a row of its own
        elif error is not None:
            self.message.setText(str(error))

    # -- downloads ----------------------------------------------------------------------------------

    def _reload(self) -> None:
        """Re-read the catalog and the disk on the worker thread; the table follows, the selection kept."""
        show_unusable = self.model.show_unusable
        self._worker.run("rows", lambda: read_rows(show_unusable))

    def _fit_columns(self) -> None:
        """Measure what each column's texts need (the rows or their plans changed), then share the width."""
        self._natural = []
        for column in range(len(COLUMNS)):
            self.table.resizeColumnToContents(column)  # Qt's own items: no Python per cell
            self._natural.append(self.table.columnWidth(column))
        self._share_width()

    def _share_width(self) -> None:
        """Give every column what it needs when the table is wide enough. When it is not, Quant, Size, Fits and
        Speed keep theirs and Quality, then Status, then Model give up width (down to a few characters; the cut
        texts end in "…" and their tooltips have them whole), so the table never scrolls sideways."""
        if len(self._natural) != len(COLUMNS):
            return
        header = self.table.horizontalHeader()
        least = max(header.minimumSectionSize(), self.table.fontMetrics().averageCharWidth() * 6)
        widths = {name: self._natural[i] for i, name in enumerate(COLUMNS)}
        over = sum(widths.values()) - self.table.viewport().width()
        for name in ("Quality", "Status", "Model"):
            cut = max(0, min(over, widths[name] - least))
            widths[name] -= cut
            over -= cut
        for i, name in enumerate(COLUMNS):
            header.resizeSection(i, widths[name])

    def _arrange_buttons(self) -> None:
        """The action buttons in one row when they fit the window's width, else in two (downloading; using)."""
        buttons = list(self.buttons.values())
        spacing = max(0, self._actions.horizontalSpacing())
        margins = self.layout().contentsMargins()
        need = sum(b.sizeHint().width() for b in buttons) + spacing * (len(buttons) - 1)
        rows = 1 if need <= self.width() - margins.left() - margins.right() else 2
        if rows == self._actions_rows:
            return
        self._actions_rows = rows
        first_row = len(buttons) if rows == 1 else list(self.buttons).index("Load in chat")
        for index, button in enumerate(buttons):
            self._actions.removeWidget(button)
            row, column = (0, index) if index < first_row else (1, index - first_row)
            self._actions.addWidget(button, row, column)
        for column in range(self._actions.columnCount()):
            self._actions.setColumnStretch(column, 0)
        self._actions.setColumnStretch(self._actions.columnCount(), 1)  # the buttons keep to the left

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._arrange_buttons()
        self._share_width()

    def _show_rows(self, rows: list[Row]) -> None:
        selected = self.selected()
        self.model.set_rows(rows)
        self._rows_read = True
        self._sync_statuses()
        self._fit_columns()
        if selected is not None:
            self.select(selected.entry.id)
        self.replan()
        self._update_buttons()

    def _sync_statuses(self) -> None:
        for row in self.model.rows:
            state = self.downloads.state(row.entry.id)
            progress = self.downloads.last_progress(row.entry.id)
            if state in ("queued", "running", "paused") or (state == "failed" and progress):
                self.model.set_status(row.entry.id, status_text(progress) if progress else state or row.status)

    def _on_progress(self, progress: Progress) -> None:
        if progress.state == "done":
            self._reload()
        else:
            self.model.set_status(progress.id, status_text(progress))
        self._update_buttons()

    def selected(self) -> Row | None:
        index = self.table.currentIndex()
        return self.model.row_at(index)

    def select(self, entry_id: str) -> None:
        self.table.selectRow(self.model.row_of(entry_id))
        self._update_buttons()

    def _update_buttons(self) -> None:
        row = self.selected()
        state = self.downloads.state(row.entry.id) if row else None
        installed = bool(row and row.installed)
        downloadable = bool(row and row.entry.model.repo and row.entry.model.loadable)
        self.buttons["Download"].setEnabled(
            downloadable and not installed and state not in ("queued", "running", "paused")
        )
        self.buttons["Pause"].setEnabled(state in ("queued", "running"))
        self.buttons["Resume"].setEnabled(state == "paused")
        self.buttons["Cancel"].setEnabled(state in ("queued", "running", "paused"))
        for name in ("Verify", "Load in chat", "Open folder"):
            self.buttons[name].setEnabled(installed)
        # the demo model lives inside its Python package: it is part of the app, not a download to delete
        self.buttons["Delete"].setEnabled(installed and bool(row and row.entry.model.repo))

    def download_selected(self) -> None:
        row = self.selected()
        if row is None:
            return
        plan = row.plan
        if (
            plan is not None
            and plan.verdict == VERDICT_TOO_BIG
            and not self._confirm(f"{row.entry.id} does not fit this machine ({plan.summary()}) Download it anyway?")
        ):
            return
        self.model.set_status(row.entry.id, "queued")
        self.downloads.start(spec_for_catalog_entry(row.entry))
        self._update_buttons()

    def pause_selected(self) -> None:
        row = self.selected()
        if row is not None:
            self.downloads.pause(row.entry.id)

    def resume_selected(self) -> None:
        row = self.selected()
        if row is not None:
            self.downloads.resume(row.entry.id)
            self.model.set_status(row.entry.id, "queued")
            self._update_buttons()

    def cancel_selected(self) -> None:
        row = self.selected()
        if row is not None and self._confirm(f"Cancel the download of {row.entry.id} and delete what was fetched?"):
            self.downloads.cancel(row.entry.id)
            self.model.set_status(row.entry.id, "not downloaded")
            self._update_buttons()

    def verify_selected(self) -> None:
        row = self.selected()
        if row is None or not row.installed:
            return
        from app.core.models.local import model_parts, verify_file

        first = row.entry.first_path
        self.model.set_status(row.entry.id, "verifying…")
        self._worker.run(f"verify:{row.entry.id}", lambda: [verify_file(p) for p in model_parts(first)])

    def delete_selected(self) -> None:
        row = self.selected()
        if row is None or not row.installed:
            return
        from app.core.models.local import remove_model

        first = row.entry.first_path
        if self._confirm(f"Delete {row.entry.id}? This frees {human_bytes(row.entry.quant.size)}."):
            self._worker.run("delete", lambda: (remove_model(first), row.entry.id)[1])

    def load_selected(self) -> None:
        row = self.selected()
        if row is not None and row.installed:
            self.load_requested.emit(row.entry.first_path)

    def open_folder(self) -> None:
        row = self.selected()
        if row is not None and row.installed:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(row.entry.first_path.parent)))

    # -- import -------------------------------------------------------------------------------------

    def import_dialog(self) -> None:
        ask_for_file(self, "Import a GGUF model", str(Path.home()), "GGUF models (*.gguf)", self.import_file)

    def import_file(self, path: Path, mode: str = "copy") -> None:
        from app.core.models.local import import_model
        from app.core.runtime.loading import check_loadable

        self._worker.run("import", lambda: import_model(path, mode, check=check_loadable))

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if any(url.toLocalFile().endswith(".gguf") for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        for url in event.mimeData().urls():
            if url.toLocalFile().endswith(".gguf"):
                self.import_file(Path(url.toLocalFile()))

    def _ask(self, question: str) -> bool:
        answer = QMessageBox.question(self, "Models", question)
        return answer == QMessageBox.StandardButton.Yes
