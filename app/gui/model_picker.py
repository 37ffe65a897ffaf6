"""The model picker at the top of the chat: installed models, the demo, and the ways to get another one."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QSizePolicy, QWidget

ACTION_OPEN_FILE = "open-file"
ACTION_MANAGE = "manage"
ACTION_REMOTE = "remote"
_ACTIONS = (
    (ACTION_MANAGE, "Manage models…"),
    (ACTION_OPEN_FILE, "Open a GGUF file…"),
    (ACTION_REMOTE, "Use a remote model…"),
)


def model_title(path: Path, demo: Path | None) -> str:
    """How a model file is named in the picker."""
    return f"{path.stem} (demo)" if demo is not None and path == demo else path.stem


class ModelPicker(QComboBox):
    """A combo box of models; choosing one asks for it to be loaded, choosing an action asks for that action.

    Signals:
        model_chosen(str): the path of the model the user picked (not emitted for the one already in use)
        action_chosen(str): ``ACTION_MANAGE``, ``ACTION_OPEN_FILE`` or ``ACTION_REMOTE``
    """

    model_chosen = Signal(str)
    action_chosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Model")
        self.setToolTip("The model this chat talks to")
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(14)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self._current = ""  # the path (or remote label) in use
        self._models: list[Path] = []
        self._demo: Path | None = None
        self.activated.connect(self._on_activated)
        self._fill()

    def set_models(self, models: list[Path], demo: Path | None) -> None:
        """The models on this machine (newest first) and the demo model, if installed."""
        self._models, self._demo = list(models), demo
        self._fill()

    def set_current(self, path_or_label: str) -> None:
        """Show what is in use: a model path, a remote model's label, or "" for none."""
        self._current = path_or_label
        self._fill()

    def _fill(self) -> None:
        self.blockSignals(True)
        self.clear()
        models = list(self._models)
        if self._demo is not None and self._demo not in models:
            models.append(self._demo)
        current = self._current
        if current and Path(current) not in models:
            if current.endswith(".gguf"):
                models.insert(0, Path(current))  # a file opened from elsewhere
            else:
                self.addItem(current, ("remote", current))
        if not current:
            self.addItem("No model loaded", ("none", ""))
        for path in models:
            self.addItem(model_title(path, self._demo), ("model", str(path)))
            self.setItemData(self.count() - 1, str(path), Qt.ItemDataRole.ToolTipRole)
        self.insertSeparator(self.count())
        for action, text in _ACTIONS:
            self.addItem(text, ("action", action))
        for index in range(self.count()):
            data = self.itemData(index)
            if data and data[1] == current and data[0] != "action":
                self.setCurrentIndex(index)
                break
        self.blockSignals(False)

    def _on_activated(self, index: int) -> None:
        data = self.itemData(index)
        self._fill()  # the picker shows what is in use until the new model has loaded
        if not data:
            return
        kind, value = data
        if kind == "action":
            self.action_chosen.emit(value)
        elif kind == "model" and value != self._current:
            self.model_chosen.emit(value)
