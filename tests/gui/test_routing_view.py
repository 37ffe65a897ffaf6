"""The expert-routing inspector in the window, opt-in per conversation, on the tiny Mixtral."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt

from app.gui.main_window import MainWindow
from app.gui.routing_view import RoutingTableModel


def test_inspecting_a_reply_shows_its_routes(qtbot, tiny_v1: dict[str, Path]) -> None:
    window = MainWindow(load_on_start=False)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.controller.model_loaded, timeout=60_000):
        window.load_model(str(tiny_v1["Q4_K_M"]))
    window.max_tokens.setValue(6)
    window.inspect_routing.setChecked(True)
    window.input.setPlainText("Route me")
    with qtbot.waitSignal(window.controller.routing_traced, timeout=120_000) as traced:
        qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
    trace = traced.args[0]
    reply_tokens = [t for t in trace.tokens if not t.in_prompt]
    assert len(reply_tokens) == 6 and sum(map(sum, trace.counts)) == len(trace.tokens) * 2 * 2
    assert window.routing_dock.isVisibleTo(window)
    assert "entropy" in window.routing_view.summary.text() and "Tracing took" in window.routing_view.summary.text()
    model = window.routing_view.model
    assert model.rowCount() == len(trace.tokens) and model.columnCount() == 4
    assert "router probability" in model.data(model.index(0, 2), Qt.ItemDataRole.ToolTipRole)
    assert window.store.get(window.conversation.id).settings["inspect_routing"] is True
    # the reply in the chat is shown token by token; hovering a token names its experts
    last = window.chat_view.message_widgets[-1]
    assert last.row.token_routes is not None and len(last.row.token_routes) == 6
    tip = last.route_tip("route:0")
    assert tip.startswith("layer 0: experts ") and "layer 1: experts " in tip


def test_routing_is_off_unless_asked(qtbot, tiny_v1: dict[str, Path]) -> None:
    window = MainWindow(load_on_start=False)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.controller.model_loaded, timeout=60_000):
        window.load_model(str(tiny_v1["Q4_0"]))
    window.max_tokens.setValue(3)
    traced: list[object] = []
    window.controller.routing_traced.connect(traced.append)
    window.input.setPlainText("no inspection")
    with qtbot.waitSignal(window.controller.reply_finished, timeout=60_000):
        qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
    assert traced == [] and not window.routing_dock.isVisibleTo(window)


def test_routing_table_model_is_well_behaved(qtmodeltester, tiny_v1: dict[str, Path]) -> None:
    from app.core.runtime.host import EngineHost
    from app.core.runtime.routing import trace_routing
    from app.core.runtime.types import LoadSettings

    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=256))
    model = RoutingTableModel()
    model.set_trace(trace_routing(engine, [1, 22557, 1526], generate=2))
    qtmodeltester.check(model)
    assert model.columnCount() == 4 and 3 <= model.rowCount() <= 5


def test_hovering_a_routed_token_shows_its_experts(qtbot) -> None:
    from PySide6.QtWidgets import QLabel, QToolTip

    from app.gui.transcript import TranscriptRow
    from tests.gui.helpers import shown_transcript

    model, view = shown_transcript(qtbot, 500, 300)
    routes = (("Hello", "layer 0: experts 1 + 2"), (" world", "layer 0: experts 3 + 4"))
    model.set_rows([TranscriptRow("user", "hi"), TranscriptRow("assistant", "Hello world", token_routes=routes)])
    label = view.message_widgets[1].findChild(QLabel, "messageText")
    assert 'href="route:0"' in label.text() and 'href="route:1"' in label.text()
    label.linkHovered.emit("route:1")  # what the label reports when the mouse moves onto the second token
    assert QToolTip.text() == "layer 0: experts 3 + 4"


def test_the_heatmap_is_painted_in_the_palette_of_the_theme(qtbot) -> None:
    from PySide6.QtGui import QColor, QPalette

    from app.gui.routing_view import ExpertHeatmap

    heatmap = ExpertHeatmap()
    qtbot.addWidget(heatmap)
    heatmap.set_shares([[0.0, 0.5]])
    for base in (QColor("#1e1e1e"), QColor("#ffffff")):  # dark and light themes
        palette = heatmap.palette()
        palette.setColor(QPalette.ColorRole.Base, base)
        palette.setColor(QPalette.ColorRole.Text, QColor("white") if base.lightness() < 128 else QColor("black"))
        heatmap.setPalette(palette)
        heatmap.resize(heatmap.sizeHint())
        image = heatmap.grab().toImage()
        cold = image.pixelColor(ExpertHeatmap.LABEL_WIDTH + 3, ExpertHeatmap.CELL.height() + 3)  # share 0: base
        hot = image.pixelColor(
            ExpertHeatmap.LABEL_WIDTH + ExpertHeatmap.CELL.width() + 3, ExpertHeatmap.CELL.height() + 3
        )
        assert abs(cold.lightness() - base.lightness()) < 8
        assert hot.red() > 200 and hot.blue() < 60  # the busiest expert is orange in either theme
