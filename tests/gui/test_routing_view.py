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
    last = window.chat_view.messages[-1]
    assert last.token_routes is not None and len(last.token_routes) == 6
    tip = window.chat_view.route_tip(f"route:{len(window.chat_view.messages) - 1}:0")
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
    from PySide6.QtCore import QEvent, QPoint
    from PySide6.QtGui import QHelpEvent
    from PySide6.QtWidgets import QToolTip

    from app.gui.chat_view import ChatView, RenderedMessage

    view = ChatView()
    qtbot.addWidget(view)
    view.resize(500, 300)
    view.show()
    view.set_messages(
        [
            RenderedMessage("user", "hi"),
            RenderedMessage(
                "assistant",
                "Hello world",
                token_routes=[("Hello", "layer 0: experts 1 + 2"), (" world", "layer 0: experts 3 + 4")],
            ),
        ]
    )
    spot = next(
        QPoint(x, y) for y in range(0, 300, 3) for x in range(0, 500, 3) if view.anchorAt(QPoint(x, y)) == "route:1:0"
    )
    assert view.viewportEvent(QHelpEvent(QEvent.Type.ToolTip, spot, view.viewport().mapToGlobal(spot)))
    assert QToolTip.text() == "layer 0: experts 1 + 2"
