"""The expert-routing inspector: a layers x experts heatmap, balance figures, and every token's experts."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QLabel, QTableView, QVBoxLayout, QWidget

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


class RoutingView(QWidget):
    """Shows a :class:`RoutingTrace`; ``show_trace(trace, reply_seconds)`` fills it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Expert routing")
        self.heatmap = QLabel()
        self.summary = QLabel("Turn on “Inspect expert routing” and send a message.")
        self.summary.setWordWrap(True)
        self.model = RoutingTableModel()
        self.table = QTableView()
        self.table.setModel(self.model)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.heatmap)
        layout.addWidget(self.table, 1)

    def show_trace(self, trace: RoutingTrace, reply_seconds: float) -> None:
        from app.core.charts import heatmap_image

        balance = trace.balance()
        shares = [list(b.shares) for b in balance]
        picture = heatmap_image("Share of routed tokens per expert", shares).convert("RGB")
        qimage = QImage(
            picture.tobytes(), picture.width, picture.height, 3 * picture.width, QImage.Format.Format_RGB888
        ).copy()
        self.heatmap.setPixmap(QPixmap.fromImage(qimage))
        lines = [
            f"{len(trace.tokens)} tokens ({sum(t.in_prompt for t in trace.tokens)} prompt, "
            f"{sum(not t.in_prompt for t in trace.tokens)} reply); {trace.n_expert_used} of {trace.n_expert} experts "
            "per layer. Hover a cell for the router's probabilities."
        ]
        for b in balance:
            unused = ", ".join(map(str, b.unused)) or "none"
            lines.append(
                f"layer {b.layer}: entropy {b.entropy_bits:.2f} bits, busiest {b.max_share:.0%}, "
                f"quietest {b.min_share:.0%}, unused: {unused}"
            )
        lines.append(
            f"Tracing took {trace.seconds:.2f} s after a {reply_seconds:.2f} s reply (it runs the tokens "
            "again on a separate context with an eval callback, which splits llama.cpp's graph)."
        )
        self.summary.setText("\n".join(lines))
        self.model.set_trace(trace)
