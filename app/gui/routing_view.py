"""The expert-routing inspector: a layers x experts heatmap, balance figures, and every token's experts."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QTableView, QVBoxLayout, QWidget

from app.core.runtime.routing import RoutingTrace

Index = QModelIndex | QPersistentModelIndex


class RoutingTableModel(QAbstractTableModel):
    """One row per token: its text, prompt or reply, and the two experts of each layer (weights in the tooltip)."""

    def __init__(self) -> None:
        super().__init__()
        self.trace: RoutingTrace | None = None

    def set_trace(self, trace: RoutingTrace | None) -> None:
        self.beginResetModel()
        self.trace = trace
        self.endResetModel()

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() or self.trace is None else len(self.trace.tokens)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() or self.trace is None else 2 + self.trace.n_layer

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role != Qt.ItemDataRole.DisplayRole or orientation != Qt.Orientation.Horizontal:
            return None
        return ("token", "where")[section] if section < 2 else f"layer {section - 2}"

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if self.trace is None or not index.isValid() or not 0 <= index.row() < len(self.trace.tokens):
            return None
        route, column = self.trace.tokens[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return route.text
            if column == 1:
                return "prompt" if route.in_prompt else "reply"
            return " + ".join(str(e) for e in route.experts[column - 2])
        if role == Qt.ItemDataRole.ToolTipRole and column >= 2:
            layer = column - 2
            weights = route.weights[layer] if route.weights else ()
            return "\n".join(
                f"expert {e}: router probability {w:.3f}" for e, w in zip(route.experts[layer], weights, strict=False)
            )
        return None


class ExpertHeatmap(QWidget):
    """Layers x experts, each cell shaded by its share of the routed tokens; painted in the palette's colours,
    so it reads in the light and the dark theme alike."""

    CELL = QSize(40, 26)
    LABEL_WIDTH = 56

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Share of routed tokens per expert")
        self.shares: list[list[float]] = []
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)

    def set_shares(self, shares: list[list[float]]) -> None:
        self.shares = shares
        self.updateGeometry()
        self.update()

    def sizeHint(self) -> QSize:
        experts = max((len(row) for row in self.shares), default=0)
        return QSize(self.LABEL_WIDTH + experts * self.CELL.width(), (len(self.shares) + 1) * self.CELL.height())

    def paintEvent(self, event: QPaintEvent) -> None:
        palette = self.palette()
        text, base = palette.color(QPalette.ColorRole.Text), palette.color(QPalette.ColorRole.Base)
        hot = QColor(234, 108, 0)
        top = max((max(row, default=0.0) for row in self.shares), default=0.0) or 1.0
        painter = QPainter(self)
        painter.setPen(text)
        width, height = self.CELL.width(), self.CELL.height()
        for expert in range(max((len(row) for row in self.shares), default=0)):
            cell = QRectF(self.LABEL_WIDTH + expert * width, 0, width, height)
            painter.drawText(cell, Qt.AlignmentFlag.AlignCenter, f"E{expert}")
        for layer, row in enumerate(self.shares):
            y = (layer + 1) * height
            painter.setPen(text)
            painter.drawText(
                QRectF(0, y, self.LABEL_WIDTH - 4, height), Qt.AlignmentFlag.AlignVCenter, f"layer {layer}"
            )
            for expert, share in enumerate(row):
                t = share / top
                fill = QColor(
                    round(base.red() + (hot.red() - base.red()) * t),
                    round(base.green() + (hot.green() - base.green()) * t),
                    round(base.blue() + (hot.blue() - base.blue()) * t),
                )
                cell = QRectF(self.LABEL_WIDTH + expert * width + 1, y + 1, width - 2, height - 2)
                painter.fillRect(cell, fill)
                painter.setPen(QColor("black") if fill.lightness() > 140 else QColor("white"))
                painter.drawText(cell, Qt.AlignmentFlag.AlignCenter, f"{share:.2f}")
        painter.end()


class RoutingView(QWidget):
    """Shows a :class:`RoutingTrace`; ``show_trace(trace, reply_seconds)`` fills it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Expert routing")
        self.heatmap = ExpertHeatmap()
        self.summary = QLabel("Turn on “Inspect expert routing” and send a message.")
        self.summary.setWordWrap(True)
        self.summary.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.model = RoutingTableModel()
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setMinimumWidth(220)
        figures = QVBoxLayout()
        figures.addWidget(self.heatmap)
        figures.addWidget(self.summary, 1)
        layout = QHBoxLayout(self)
        layout.addLayout(figures)
        layout.addWidget(self.table, 1)

    def show_trace(self, trace: RoutingTrace, reply_seconds: float) -> None:
        balance = trace.balance()
        self.heatmap.set_shares([list(b.shares) for b in balance])
        lines = [
            f"{len(trace.tokens)} tokens ({sum(t.in_prompt for t in trace.tokens)} prompt, "
            f"{sum(not t.in_prompt for t in trace.tokens)} reply); {trace.n_expert_used} of {trace.n_expert} experts "
            "per layer. Hover a cell of the table for the router's probabilities."
        ]
        for b in balance:
            unused = ", ".join(map(str, b.unused)) or "none"
            lines.append(
                f"layer {b.layer}: entropy {b.entropy_bits:.2f} bits, busiest {b.max_share:.0%}, "
                f"quietest {b.min_share:.0%}, unused: {unused}"
            )
        lines.append(
            f"Tracing took {trace.seconds:.2f} s after a {reply_seconds:.2f} s reply (a second pass over the "
            "tokens, with a callback that reads each layer's router)."
        )
        self.summary.setText("\n".join(lines))
        self.model.set_trace(trace)
