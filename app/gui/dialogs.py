"""Small dialogs the windows open without waiting for them: the file chooser and the remote model form.

Each opens window-modal with ``open()`` and calls back when the person answers; nothing runs a nested event
loop (``QFileDialog.getOpenFileName`` and ``QInputDialog.getText`` do, and a test or a stream cannot go on
while one is up).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QLineEdit, QWidget


def ask_for_file(
    parent: QWidget,
    title: str,
    folder: str,
    filters: str,
    chosen: Callable[[Path], None],
    *,
    save_suffix: str | None = None,
) -> QFileDialog:
    """Open a file chooser (a save dialog when ``save_suffix`` is given); ``chosen(path)`` when one is picked."""
    dialog = QFileDialog(parent, title, folder, filters)
    dialog.setObjectName("saveFile" if save_suffix else "openFile")
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    if save_suffix:
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setFileMode(QFileDialog.FileMode.AnyFile)
        dialog.setDefaultSuffix(save_suffix)
    else:
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptOpen)
        dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
    dialog.fileSelected.connect(lambda path: chosen(Path(path)))
    dialog.open()
    return dialog


class RemoteModelDialog(QDialog):
    """Where a remote model is served: URL, model name, API key (optional), in one form."""

    def __init__(self, parent: QWidget | None = None, url: str = "http://127.0.0.1:8000/v1") -> None:
        super().__init__(parent)
        self.setObjectName("remoteModel")
        self.setWindowTitle("Use a remote model")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.url = QLineEdit(url)
        self.url.setAccessibleName("Server URL")
        self.url.setMinimumWidth(self.url.fontMetrics().averageCharWidth() * 42)  # a whole URL in view
        self.url.setToolTip("An OpenAI-compatible server: vLLM, llama-server, Ollama, another Mixtral Desk")
        self.model = QLineEdit()
        self.model.setAccessibleName("Model name")
        self.model.setPlaceholderText("as the server names it")
        self.key = QLineEdit()
        self.key.setAccessibleName("API key")
        self.key.setPlaceholderText("leave empty if none")
        self.key.setEchoMode(QLineEdit.EchoMode.Password)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText("Connect")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("Server URL", self.url)
        form.addRow("Model", self.model)
        form.addRow("API key", self.key)
        form.addRow(buttons)
        for field in (self.url, self.model):
            field.textChanged.connect(self._update_ok)
        self._update_ok()

    def _update_ok(self) -> None:
        self.ok_button.setEnabled(bool(self.url.text().strip() and self.model.text().strip()))

    def answer(self) -> tuple[str, str, str]:
        """URL, model name and API key, stripped."""
        return self.url.text().strip(), self.model.text().strip(), self.key.text().strip()
