"""The chat-settings panel at the right of the window: preset and system prompt, sampling, context policy and
the routing inspector. Widgets only; the window saves what changes into the conversation."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPlainTextEdit,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.core.context import POLICY_ROLLING, POLICY_STOP

POLICY_LABELS = {
    POLICY_ROLLING: "Drop the oldest messages",
    POLICY_STOP: "Stop and say so",
}


class ChatSettingsPanel(QWidget):
    """What shapes the replies of the conversation on screen."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("chatSettings")  # no fixed minimum width: its widgets', whatever the font size
        title = QLabel("<b>Chat settings</b>")
        self.preset_combo = QComboBox()
        self.preset_combo.setAccessibleName("System prompt preset")
        self.preset_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.preset_combo.setMinimumContentsLength(10)
        self.preset_combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.preset_menu_button = QToolButton()
        self.preset_menu_button.setText("Presets")
        self.preset_menu_button.setAccessibleName("Preset actions")
        self.preset_menu_button.setToolTip("Save, rename, duplicate or delete presets")
        self.preset_menu_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.preset_menu_button)
        self.preset_new_action = menu.addAction("Save as a new preset…")
        self.preset_save_action = menu.addAction("Update this preset")
        self.preset_rename_action = menu.addAction("Rename…")
        self.preset_duplicate_action = menu.addAction("Duplicate")
        self.preset_delete_action = menu.addAction("Delete")
        menu.addSeparator()
        self.preset_reset_action = menu.addAction("Restore the built-in presets")
        self.preset_menu_button.setMenu(menu)
        self.preset_menu_button.setStyleSheet("QToolButton::menu-indicator { image: none; }")
        self.preset_menu_button.setText("Presets ▾")
        self.system_edit = QPlainTextEdit()
        self.system_edit.setAccessibleName("System prompt")
        self.system_edit.setPlaceholderText("No system prompt")
        self.system_edit.setMinimumHeight(60)
        self.system_edit.setMaximumHeight(160)
        self.temperature = QDoubleSpinBox(minimum=0.0, maximum=2.0, singleStep=0.05, value=0.7)
        self.temperature.setAccessibleName("Temperature")
        self.temperature.setToolTip("Higher is more varied, 0 always picks the likeliest token")
        self.top_p = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, value=0.95)
        self.top_p.setAccessibleName("Top-p")
        self.max_tokens = QSpinBox(minimum=0, maximum=32768, value=1024)
        self.max_tokens.setAccessibleName("Longest reply, in tokens")
        self.max_tokens.setSpecialValueText("no limit")
        self.max_tokens.setToolTip("The longest reply, in tokens (no limit: until the context is full)")
        self.context_policy = QComboBox()
        self.context_policy.setAccessibleName("When the context is full")
        for policy, label in POLICY_LABELS.items():
            self.context_policy.addItem(label, policy)
        self.context_policy.setToolTip(
            "What happens when the conversation no longer fits the model's context: leave out the oldest "
            "messages (the system prompt stays), or stop and tell you"
        )
        self.inspect_routing = QCheckBox("Inspect expert routing")
        self.inspect_routing.setToolTip(
            "After each reply, show which of the experts each token went to (takes a second pass over the reply)"
        )
        presets = QHBoxLayout()
        presets.addWidget(self.preset_combo, 1)
        presets.addWidget(self.preset_menu_button)
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Reply limit", self.max_tokens)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(title)
        layout.addWidget(QLabel("Preset"))
        layout.addLayout(presets)
        layout.addWidget(QLabel("System prompt"))
        layout.addWidget(self.system_edit)
        layout.addLayout(form)
        layout.addWidget(QLabel("When the context is full"))
        layout.addWidget(self.context_policy)
        layout.addWidget(self.inspect_routing)
        layout.addStretch(1)
        for label in self.findChildren(QLabel):
            label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)

    def policy(self) -> str:
        return str(self.context_policy.currentData())

    def set_policy(self, policy: str) -> None:
        index = self.context_policy.findData(policy)
        if index >= 0:
            self.context_policy.setCurrentIndex(index)
