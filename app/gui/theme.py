"""Light and dark themes (Fusion palettes) and the font size; "system" follows the OS colour scheme."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication


def _dark_palette() -> QPalette:
    palette = QPalette()
    colours = {
        QPalette.ColorRole.Window: "#202124",
        QPalette.ColorRole.WindowText: "#e8eaed",
        QPalette.ColorRole.Base: "#17181a",
        QPalette.ColorRole.AlternateBase: "#26282b",
        QPalette.ColorRole.Text: "#e8eaed",
        QPalette.ColorRole.Button: "#2d2f33",
        QPalette.ColorRole.ButtonText: "#e8eaed",
        QPalette.ColorRole.Highlight: "#4c8bf5",
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.ToolTipBase: "#2d2f33",
        QPalette.ColorRole.ToolTipText: "#e8eaed",
        QPalette.ColorRole.Link: "#8ab4f8",
        QPalette.ColorRole.PlaceholderText: "#9aa0a6",
    }
    for role, colour in colours.items():
        palette.setColor(role, QColor(colour))
    for role in (QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText, QPalette.ColorRole.Text):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b6f75"))
    return palette


def _dark_indicators() -> str:
    """Fusion draws check boxes with an outline a little darker than the window: invisible on a dark one."""
    from importlib import resources

    check = str(resources.files("resources").joinpath("check.svg")).replace("\\", "/")
    return (
        "QCheckBox::indicator { width: 13px; height: 13px; border: 1px solid #9aa0a6; border-radius: 3px;"
        " background: #17181a; }"
        f" QCheckBox::indicator:checked {{ background: #4c8bf5; border-color: #4c8bf5; image: url({check}); }}"
        " QCheckBox::indicator:disabled { border-color: #5f6368; }"
    )


def is_dark(theme: str) -> bool:
    if theme == "dark":
        return True
    if theme == "light":
        return False
    return QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark


def apply_theme(theme: str, font_size: int) -> None:
    """Apply ``theme`` (system, light, dark) and ``font_size`` (points) to the whole app."""
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        return
    app.setStyle("Fusion")
    dark = is_dark(theme)
    app.setPalette(_dark_palette() if dark else app.style().standardPalette())
    app.setStyleSheet(_dark_indicators() if dark else "")
    font = app.font()
    font.setPointSize(font_size)
    app.setFont(font)
