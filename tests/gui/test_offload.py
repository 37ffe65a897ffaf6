"""Offload in the window: RPC workers and experts kept in RAM set in Settings, the model loaded there, the status
bar and the model manager saying where it runs (real `mixtral-desk rpc-worker` processes on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialogButtonBox

from app.core.runtime.devices import rpc_supported
from app.core.storage.settings import Settings, load_settings, save_settings
from app.gui.settings_dialog import SettingsDialog
from tests.conftest import LocalWorkers
from tests.gui.helpers import LOAD_TIMEOUT, choose_file, menu_action, new_window, send, settle, trigger

pytestmark = pytest.mark.skipif(
    not rpc_supported(),
    reason="llama.cpp here was built without RPC: reinstall it with CMAKE_ARGS=-DGGML_RPC=on to run the offload tests",
)


def _open_settings(qtbot, window) -> SettingsDialog:
    trigger(qtbot, window, menu_action(window, "&Edit", "Settings…"))
    return next(d for d in window.findChildren(SettingsDialog) if d.isVisible())


def _type_into(qtbot, field, text: str) -> None:
    field.setFocus()
    field.selectAll()
    qtbot.keyClicks(field, text)


def test_a_worker_and_experts_in_ram_set_in_settings_load_the_model_there(
    qtbot, tiny_v1: dict[str, Path], rpc_worker: LocalWorkers
) -> None:
    address = rpc_worker()
    window = new_window(qtbot)
    window.max_tokens.setValue(12)
    with qtbot.waitSignal(window.controller.model_loaded, timeout=LOAD_TIMEOUT):
        window.load_model(str(tiny_v1["Q4_K_M"]))
    assert window.status_backend.text() == "CPU"

    dialog = _open_settings(qtbot, window)
    ok = dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok)
    _type_into(qtbot, dialog.workers, "127.0.0.1:99999")  # a typo: no such port
    qtbot.mouseClick(ok, Qt.MouseButton.LeftButton)
    assert dialog.isVisible() and dialog.workers_error.isVisible()
    assert "not a worker address" in dialog.workers_error.text() and dialog.workers.text() == "127.0.0.1:99999"

    _type_into(qtbot, dialog.workers, address)
    assert not dialog.workers_error.isVisible()
    _type_into(qtbot, dialog.cpu_moe.lineEdit(), "1")
    with qtbot.waitSignal(window.controller.model_loaded, timeout=LOAD_TIMEOUT):
        qtbot.mouseClick(ok, Qt.MouseButton.LeftButton)
    settle(qtbot, window)
    assert window.status_backend.text() == "RPC 3/3, experts of 1 in RAM"
    assert "the experts of 1 of them kept in RAM" in window.status_backend.toolTip()
    saved = load_settings().settings
    assert (saved.rpc_workers, saved.cpu_moe) == ((address,), 1)
    assert send(qtbot, window, "Hello").text  # the reply is computed on the worker

    # the loaded model holds the worker's one connection: the model manager plans with what it answered before
    trigger(qtbot, window, menu_action(window, "&File", "Models…"))
    assert window.model_manager is not None
    with qtbot.waitSignal(window.model_manager.plans_updated, timeout=60_000):
        pass
    assert f"{address} · " in window.model_manager.hardware_label.text()
    assert "not answering" not in window.model_manager.hardware_label.text()
    window.model_manager.close()


def test_the_model_manager_counts_a_workers_memory(qtbot, rpc_worker: LocalWorkers) -> None:
    address = rpc_worker("--mem", "20GiB")  # what it reports; nothing is allocated here
    save_settings(Settings(rpc_workers=(address,)))
    window = new_window(qtbot)
    trigger(qtbot, window, menu_action(window, "&File", "Models…"))
    manager = window.model_manager
    assert manager is not None
    with qtbot.waitSignal(manager.plans_updated, timeout=60_000):
        pass
    assert f"{address} · 20.0 GiB free of 20.0 GiB" in manager.hardware_label.text()
    row = manager.model.row_of("mixtral-8x7b-instruct:Q2_K")
    assert manager.model.data(manager.model.index(row, 4)).endswith("fits this PC + 1 worker")

    dialog = _open_settings(qtbot, window)  # taking the worker out replans the open model manager
    dialog.workers.setFocus()
    dialog.workers.selectAll()
    qtbot.keyClick(dialog.workers, Qt.Key.Key_Delete)
    with qtbot.waitSignal(manager.plans_updated, timeout=60_000):
        qtbot.mouseClick(
            dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok), Qt.MouseButton.LeftButton
        )
    assert "Workers" not in manager.hardware_label.text()
    assert "worker" not in manager.model.data(manager.model.index(row, 4))
    manager.close()


def test_a_worker_lost_mid_reply_is_reported_and_the_window_goes_on(
    qtbot, tiny_v1: dict[str, Path], rpc_worker: LocalWorkers
) -> None:
    import os
    import signal

    from PySide6.QtWidgets import QMessageBox

    process_address = rpc_worker()
    save_settings(Settings(rpc_workers=(process_address,)))
    window = new_window(qtbot)
    window.max_tokens.setValue(0)  # until the context is full: still writing when the worker goes
    with qtbot.waitSignal(window.controller.model_loaded, timeout=LOAD_TIMEOUT):
        window.load_model(str(tiny_v1["Q4_K_M"]))
    assert window.status_backend.text().startswith("RPC ")
    window.input.setFocus()
    qtbot.keyClicks(window.input, "Tell me about the sea.")
    with qtbot.waitSignal(window.controller.text_streamed, timeout=LOAD_TIMEOUT):
        qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(window.controller.reply_failed, timeout=LOAD_TIMEOUT):
        os.kill(rpc_worker.pid(process_address), signal.SIGKILL)
    settle(qtbot, window)
    assert "An offload device stopped answering" in window.last_error
    box = next(b for b in window.findChildren(QMessageBox) if b.isVisible())
    assert "load the model again" in box.text()
    assert window.status_model.text() == "No model" and window.send_button.isEnabled()
    box.close()

    dialog = _open_settings(qtbot, window)  # the worker is gone: take it out ...
    dialog.workers.setFocus()
    dialog.workers.selectAll()
    qtbot.keyClick(dialog.workers, Qt.Key.Key_Delete)
    with qtbot.waitSignal(dialog.accepted):
        qtbot.mouseClick(
            dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok), Qt.MouseButton.LeftButton
        )
    settle(qtbot, window)
    assert load_settings().settings.rpc_workers == ()
    trigger(qtbot, window, menu_action(window, "&File", "Open model…"))  # ... and open the model again
    with qtbot.waitSignal(window.controller.model_loaded, timeout=LOAD_TIMEOUT):
        choose_file(qtbot, window, tiny_v1["Q4_K_M"])
    assert window.status_backend.text() == "CPU"
    assert send(qtbot, window, "Hello").text
