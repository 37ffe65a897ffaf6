"""Small bar charts drawn with QPainter into a PNG (no plotting library needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BAR_COLOURS = ("#4c8bf5", "#f5a623")


def bar_chart_png(
    path: Path, title: str, labels: Sequence[str], series: dict[str, Sequence[float]], unit: str = "tokens/s"
) -> Path:
    """Grouped bars: one group per label, one bar per series; values printed above the bars."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QRectF, Qt
    from PySide6.QtGui import QColor, QFont, QGuiApplication, QImage, QPainter

    _app = QGuiApplication.instance() or QGuiApplication([])
    width, height, margin = 220 + 140 * max(1, len(labels)), 460, 60
    image = QImage(width, height, QImage.Format.Format_ARGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setFont(QFont("Sans", 10))
    painter.drawText(QRectF(0, 8, width, 24), Qt.AlignmentFlag.AlignCenter, title)
    top = max((v for values in series.values() for v in values), default=1.0) or 1.0
    plot_height = height - 2 * margin - 20
    group_width = (width - 2 * margin) / max(1, len(labels))
    bar_width = group_width * 0.7 / max(1, len(series))
    for i, label in enumerate(labels):
        x0 = margin + i * group_width + group_width * 0.15
        for j, values in enumerate(series.values()):
            value = values[i]
            bar_height = plot_height * value / top
            rect = QRectF(x0 + j * bar_width, height - margin - bar_height, bar_width - 4, bar_height)
            painter.fillRect(rect, QColor(BAR_COLOURS[j % len(BAR_COLOURS)]))
            painter.drawText(
                QRectF(rect.x() - 10, rect.y() - 18, rect.width() + 20, 16),
                Qt.AlignmentFlag.AlignCenter,
                f"{value:.1f}",
            )
        painter.drawText(
            QRectF(x0 - 10, height - margin + 4, group_width * 0.7 + 20, 20), Qt.AlignmentFlag.AlignCenter, label
        )
    painter.drawLine(margin - 10, height - margin, width - margin + 10, height - margin)
    for j, name in enumerate(series):
        painter.fillRect(QRectF(margin + j * 200, 36, 14, 14), QColor(BAR_COLOURS[j % len(BAR_COLOURS)]))
        painter.drawText(QRectF(margin + j * 200 + 20, 34, 180, 18), Qt.AlignmentFlag.AlignLeft, f"{name} ({unit})")
    painter.end()
    image.save(str(path))
    return path


def heatmap_png(
    path: Path, title: str, rows: Sequence[Sequence[float]], row_label: str = "layer", column_label: str = "expert"
) -> Path:
    """A rows x columns grid shaded by value (0 = white, max = dark orange), values printed in the cells."""
    heatmap_image(title, rows, row_label, column_label).save(str(path))
    return path


def heatmap_image(
    title: str, rows: Sequence[Sequence[float]], row_label: str = "layer", column_label: str = "expert"
) -> Any:
    """The heatmap of :func:`heatmap_png` as a QImage, for a window."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QRectF, Qt
    from PySide6.QtGui import QColor, QFont, QGuiApplication, QImage, QPainter

    _app = QGuiApplication.instance() or QGuiApplication([])
    n_rows, n_cols = len(rows), max((len(r) for r in rows), default=0)
    cell, left, top = 44, 70, 56
    image = QImage(left + n_cols * cell + 20, top + n_rows * cell + 30, QImage.Format.Format_ARGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.setFont(QFont("Sans", 9))
    painter.drawText(QRectF(0, 6, image.width(), 20), Qt.AlignmentFlag.AlignCenter, title)
    peak = max((v for r in rows for v in r), default=1.0) or 1.0
    for c in range(n_cols):
        painter.drawText(
            QRectF(left + c * cell, top - 22, cell, 18), Qt.AlignmentFlag.AlignCenter, f"{column_label[:1].upper()}{c}"
        )
    for r, values in enumerate(rows):
        painter.drawText(QRectF(4, top + r * cell, left - 8, cell), Qt.AlignmentFlag.AlignVCenter, f"{row_label} {r}")
        for c, value in enumerate(values):
            strength = value / peak
            colour = QColor(255, int(255 - 143 * strength), int(255 - 255 * strength))
            rect = QRectF(left + c * cell, top + r * cell, cell - 2, cell - 2)
            painter.fillRect(rect, colour)
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, f"{value:.2f}")
    painter.end()
    return image
