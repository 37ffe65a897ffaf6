"""The settings dialog: models folder, default load settings (offload included: RPC workers, experts in RAM),
theme and font size."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from app.core.models.downloads import MAX_CONNECTIONS
from app.core.storage.settings import THEMES, Settings


class SettingsDialog(QDialog):
    """Edits a copy of :class:`Settings`; ``result_settings()`` after ``accepted``."""

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self._settings = settings
        self._workers = settings.rpc_workers
        self.models_dir = QLineEdit(settings.models_dir)
        self.models_dir.setPlaceholderText("default (under the app's data folder)")
        self.context = QSpinBox(minimum=512, maximum=131072, singleStep=512, value=settings.context_length)
        self.auto_layers = QCheckBox("Let the memory planner decide")
        self.auto_layers.setChecked(settings.gpu_layers is None)
        self.gpu_layers = QSpinBox(minimum=-1, maximum=200, value=settings.gpu_layers or 0)
        self.gpu_layers.setEnabled(settings.gpu_layers is not None)
        self.auto_layers.toggled.connect(lambda checked: self.gpu_layers.setEnabled(not checked))
        self.cpu_moe = QSpinBox(minimum=-1, maximum=200, value=-1 if settings.cpu_moe is None else settings.cpu_moe)
        self.cpu_moe.setSpecialValueText("planner decides")
        self.cpu_moe.setAccessibleName("Layers whose experts stay in RAM")
        self.cpu_moe.setToolTip(
            "Keep the experts of the first N layers in RAM and offload everything else (attention and the whole "
            "KV cache included). 0 offloads whole layers only. The planner picks whichever is faster."
        )
        self.workers = QLineEdit(", ".join(settings.rpc_workers))
        self.workers.setPlaceholderText("none (e.g. 192.168.1.20:50052)")
        self.workers.setAccessibleName("Offload workers")
        self.workers.setToolTip(
            "Other machines running `mixtral-desk rpc-worker`, as host:port separated by commas. Layers are "
            "placed on them before this machine's GPU. RPC is unauthenticated: use a trusted network only."
        )
        self.workers_error = QLabel("")
        self.workers_error.setObjectName("workersError")
        self.workers_error.setWordWrap(True)
        self.workers_error.setVisible(False)
        self.workers.textEdited.connect(lambda _: self.workers_error.setVisible(False))
        self.threads = QSpinBox(minimum=0, maximum=256, value=settings.threads or 0)
        self.threads.setSpecialValueText("automatic")
        self.flash = QCheckBox("Flash attention")
        self.flash.setChecked(settings.flash_attention)
        self.kv = QComboBox()
        self.kv.addItems(["f16", "q8_0", "q4_0"])
        self.kv.setCurrentText(settings.kv_cache_type)
        self.theme = QComboBox()
        self.theme.addItems(list(THEMES))
        self.theme.setCurrentText(settings.theme)
        self.font_size = QSpinBox(minimum=8, maximum=24, value=settings.font_size)
        self.connections = QSpinBox(minimum=1, maximum=MAX_CONNECTIONS, value=settings.download_connections)
        self.connections.setToolTip("Parallel byte ranges per file: more helps when one connection is throttled.")
        form = QFormLayout(self)
        form.addRow("Models folder", self.models_dir)
        form.addRow("Default context length", self.context)
        form.addRow("GPU layers", self.auto_layers)
        form.addRow("", self.gpu_layers)
        form.addRow("Experts kept in RAM (layers)", self.cpu_moe)
        form.addRow("Offload workers (RPC)", self.workers)
        form.addRow("", self.workers_error)
        form.addRow("CPU threads", self.threads)
        form.addRow("", self.flash)
        form.addRow("KV cache type (quantized needs flash attention)", self.kv)
        form.addRow("Theme", self.theme)
        form.addRow("Font size", self.font_size)
        form.addRow("Connections per download", self.connections)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _accept(self) -> None:
        from app.core.planning.rpc_workers import RpcWorkerError, parse_endpoints

        try:
            self._workers = parse_endpoints(self.workers.text())
        except RpcWorkerError as err:  # the dialog stays open with what was typed
            self.workers_error.setText(f"{err} Write each worker as host:port, separated by commas.")
            self.workers_error.setVisible(True)
            self.workers.setFocus()
            return
        if self.kv.currentText() != "f16" and not self.flash.isChecked():
            self.flash.setChecked(True)  # llama.cpp needs it for a quantized KV cache
        self.accept()

    def result_settings(self) -> Settings:
        return replace(
            self._settings,
            models_dir=self.models_dir.text().strip(),
            context_length=self.context.value(),
            gpu_layers=None if self.auto_layers.isChecked() else self.gpu_layers.value(),
            threads=self.threads.value() or None,
            flash_attention=self.flash.isChecked(),
            kv_cache_type=self.kv.currentText(),
            theme=self.theme.currentText(),
            font_size=self.font_size.value(),
            download_connections=self.connections.value(),
            rpc_workers=self._workers,
            cpu_moe=None if self.cpu_moe.value() < 0 else self.cpu_moe.value(),
        )
