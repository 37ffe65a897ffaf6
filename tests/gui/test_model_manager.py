"""The model manager window: verdicts per machine, and downloads driven from the table against the fake hub."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QCheckBox, QStyle, QStyleOptionButton

from app.core.models import catalog
from app.core.models.downloads import RetryPolicy, partial_dir, spec_for_catalog_entry
from app.core.planning.planner import GIB, Device
from app.gui.downloads import DownloadService
from app.gui.model_manager import ModelManagerWindow
from quant.fakehub import Fault
from tests.gui.helpers import choose, choose_file

FAST = RetryPolicy(attempts=4, backoff_s=0.01, backoff_max_s=0.05, stall_timeout_s=2.0, min_bytes_per_s=1_000)
CUDA_24 = Device.assumed_machine(backend="cuda", vram_bytes=24 * GIB, ram_bytes=64 * GIB, gpu_name="RTX 4090")
MAC_64 = Device.assumed_machine(backend="metal", vram_bytes=None, ram_bytes=64 * GIB, gpu_name="Apple M2 Max")
CPU_32 = Device.assumed_machine(backend="cpu", vram_bytes=None, ram_bytes=32 * GIB)
ENTRY = "mixtral-8x7b-instruct:Q2_K"


def open_manager(qtbot, device: Device, **kwargs) -> ModelManagerWindow:
    service = DownloadService(retry=FAST)
    window = ModelManagerWindow(service, device=device, hardware_text="test machine", confirm=lambda q: True, **kwargs)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.plans_updated, timeout=30_000):
        pass
    return window


def on_the_box(checkbox: QCheckBox) -> QPoint:
    """A point on a check box's indicator, where a person clicks."""
    option = QStyleOptionButton()
    checkbox.initStyleOption(option)
    box = checkbox.style().subElementRect(QStyle.SubElement.SE_CheckBoxIndicator, option, checkbox)
    return box.center()


def cell(window: ModelManagerWindow, entry_id: str, column: int) -> str:
    return window.model.data(window.model.index(window.model.row_of(entry_id), column))


def tooltip(window: ModelManagerWindow, entry_id: str, column: int) -> str:
    index = window.model.index(window.model.row_of(entry_id), column)
    return window.model.data(index, Qt.ItemDataRole.ToolTipRole)


@pytest.mark.parametrize(
    ("device", "expect"),
    [
        (
            CUDA_24,
            {
                "mixtral-8x7b-instruct:Q3_K_M": "★ full GPU",
                "mixtral-8x7b-instruct:Q5_K_M": "/33 on GPU",
                "mixtral-8x7b-instruct:Q8_0": "GPU, experts of ",  # faster than 16 whole layers: see the planner
            },
        ),
        (MAC_64, {"mixtral-8x7b-instruct:Q6_K": "full GPU", "mixtral-8x22b-instruct:Q8_0": "too big"}),
        (CPU_32, {"mixtral-8x7b-instruct:Q2_K": "CPU only", "mixtral-8x7b-instruct:Q8_0": "too big"}),
    ],
    ids=["cuda-24GB", "mac-64GB", "cpu-only"],
)
def test_badges_for_simulated_machines(qtbot, device: Device, expect: dict[str, str]) -> None:
    window = open_manager(qtbot, device)
    for entry_id, text in expect.items():
        assert text in cell(window, entry_id, 4), (entry_id, cell(window, entry_id, 4))
    assert window.model.row_of("mixtral-8x7b-instruct-thebloke:Q4_K_M") == -1  # unusable: hidden by default


def test_unusable_old_layout_files_show_behind_a_switch(qtbot) -> None:
    window = open_manager(qtbot, CPU_32)
    assert not any(row.entry.model.id.endswith("-thebloke") for row in window.model.rows)
    with qtbot.waitSignal(window.plans_updated, timeout=30_000):
        qtbot.mouseClick(window.show_unusable, Qt.MouseButton.LeftButton, pos=on_the_box(window.show_unusable))
    assert cell(window, "mixtral-8x7b-instruct-thebloke:Q4_K_M", 4) == "old file layout"
    assert cell(window, "mixtral-8x7b-instruct-thebloke:Q4_K_M", 5) == ""  # no speed for a file that cannot run
    window.select("mixtral-8x7b-instruct-thebloke:Q4_K_M")
    assert not window.buttons["Download"].isEnabled()
    with qtbot.waitSignal(window.plans_updated, timeout=30_000):
        qtbot.mouseClick(window.show_unusable, Qt.MouseButton.LeftButton, pos=on_the_box(window.show_unusable))
    assert window.model.row_of("mixtral-8x7b-instruct-thebloke:Q4_K_M") == -1


def test_context_and_kv_changes_update_the_badges(qtbot) -> None:
    window = open_manager(qtbot, CUDA_24)
    assert "full GPU" in cell(window, "mixtral-8x7b-instruct:Q3_K_M", 4)
    with qtbot.waitSignal(window.plans_updated, timeout=30_000):
        window.context.setValue(32768)
    long_context = cell(window, "mixtral-8x7b-instruct:Q3_K_M", 4)
    assert "on GPU" in long_context and "full" not in long_context
    with qtbot.waitSignal(window.plans_updated, timeout=30_000):
        window.kv.setCurrentText("q4_0")
    assert cell(window, "mixtral-8x7b-instruct:Q3_K_M", 4) != long_context


@pytest.fixture
def served(fake_hub, tiny_v1: dict[str, Path]):
    item = catalog.entry("mixtral-8x7b-instruct", "Q2_K")
    fake_hub.add(item.model.repo, tiny_v1["Q4_0"], item.quant.files[0].name)
    return fake_hub, item.quant.files[0].name


def test_download_pause_resume_and_finish_from_the_table(qtbot, served) -> None:
    hub, name = served
    hub.throttle_bytes_per_s = 3_000_000
    window = open_manager(qtbot, CPU_32)
    window.select(ENTRY)
    qtbot.mouseClick(window.buttons["Download"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: cell(window, ENTRY, 6).startswith("downloading"), timeout=30_000)
    assert "/s" in cell(window, ENTRY, 6)
    qtbot.mouseClick(window.buttons["Pause"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: cell(window, ENTRY, 6) == "paused", timeout=30_000)
    assert window.buttons["Resume"].isEnabled() and not window.buttons["Pause"].isEnabled()
    hub.throttle_bytes_per_s = 0
    qtbot.mouseClick(window.buttons["Resume"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: cell(window, ENTRY, 6) == "ready", timeout=60_000)
    assert catalog.entry("mixtral-8x7b-instruct", "Q2_K").installed
    window.select(ENTRY)
    assert window.buttons["Load in chat"].isEnabled() and not window.buttons["Download"].isEnabled()
    with qtbot.waitSignal(window.load_requested, timeout=5_000) as blocker:
        qtbot.mouseClick(window.buttons["Load in chat"], Qt.MouseButton.LeftButton)
    assert blocker.args[0].name == name
    with qtbot.waitSignal(window.verified, timeout=30_000):
        qtbot.mouseClick(window.buttons["Verify"], Qt.MouseButton.LeftButton)
    assert cell(window, ENTRY, 6) == "ready (checksum verified)"
    gone = lambda: cell(window, ENTRY, 6) == "not downloaded"  # noqa: E731 - the disk is read again on a worker
    with qtbot.waitSignal(window.plans_updated, timeout=30_000, check_params_cb=gone):
        qtbot.mouseClick(window.buttons["Delete"], Qt.MouseButton.LeftButton)
    assert cell(window, ENTRY, 6) == "not downloaded" and not catalog.entry("mixtral-8x7b-instruct", "Q2_K").installed


def test_cancel_asks_and_removes_the_partial_data(qtbot, served) -> None:
    hub, _ = served
    hub.throttle_bytes_per_s = 2_000_000
    questions: list[str] = []
    window = open_manager(
        qtbot,
        CPU_32,
    )
    window._confirm = lambda question: questions.append(question) or True
    window.select(ENTRY)
    qtbot.mouseClick(window.buttons["Download"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: cell(window, ENTRY, 6).startswith("downloading"), timeout=30_000)
    qtbot.mouseClick(window.buttons["Cancel"], Qt.MouseButton.LeftButton)
    assert questions and "Cancel the download" in questions[0]
    qtbot.waitUntil(lambda: window.downloads.state(ENTRY) == "cancelled", timeout=30_000)
    item = catalog.entry("mixtral-8x7b-instruct", "Q2_K")
    assert cell(window, ENTRY, 6) == "not downloaded" and not partial_dir(spec_for_catalog_entry(item)).exists()


def test_a_failed_verification_shows_in_the_row(qtbot, served) -> None:
    hub, name = served
    hub.fail_next(name, Fault("corrupt"))
    window = open_manager(qtbot, CPU_32)
    window.select(ENTRY)
    qtbot.mouseClick(window.buttons["Download"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: cell(window, ENTRY, 6).startswith("failed"), timeout=60_000)
    assert "damaged" in cell(window, ENTRY, 6)
    assert not catalog.entry("mixtral-8x7b-instruct", "Q2_K").installed


def test_an_unreachable_hub_fails_within_seconds_with_a_message(qtbot, monkeypatch) -> None:
    import socket

    import huggingface_hub.constants

    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    try:
        window = open_manager(qtbot, CPU_32)
        window.select(ENTRY)
        qtbot.mouseClick(window.buttons["Download"], Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: cell(window, ENTRY, 6).startswith("failed"), timeout=15_000)  # FAST: 2 s stall
        assert "Could not reach the hub" in window.message.text() + cell(window, ENTRY, 6)
        assert window.buttons["Download"].isEnabled()  # and it can be tried again
    finally:
        silent.close()


def test_downloads_outlive_the_window(qtbot, served) -> None:
    hub, _ = served
    hub.throttle_bytes_per_s = 3_000_000
    service = DownloadService(retry=FAST)
    window = ModelManagerWindow(service, device=CPU_32, hardware_text="test", confirm=lambda q: True)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.plans_updated, timeout=30_000):  # the rows are read on a worker thread
        pass
    window.select(ENTRY)
    window.download_selected()
    window.close()
    hub.throttle_bytes_per_s = 0
    qtbot.waitUntil(lambda: service.state(ENTRY) == "done", timeout=60_000)
    reopened = ModelManagerWindow(service, device=CPU_32, hardware_text="test", confirm=lambda q: True)
    qtbot.addWidget(reopened)
    with qtbot.waitSignal(reopened.plans_updated, timeout=30_000):
        pass
    assert cell(reopened, ENTRY, 6) == "ready"


def test_import_adds_a_local_file(qtbot, tiny_v1: dict[str, Path], tmp_path: Path) -> None:
    from app.core.models.local import installed_models

    source = tmp_path / "my-mixtral-Q2_K.gguf"
    source.write_bytes(tiny_v1["Q2_K"].read_bytes())
    window = open_manager(qtbot, CPU_32)
    qtbot.mouseClick(window.buttons["Import…"], Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(window.plans_updated, timeout=30_000):  # imported, then listed and planned
        choose_file(qtbot, window, source)
    assert window.message.text().startswith("Imported")
    assert any(p.name == "my-mixtral-Q2_K.gguf" for p in installed_models())
    entry_id = "local-my-mixtral-Q2_K:Q2_K"  # a row of its own, described from the file's header
    assert cell(window, entry_id, 1) == "Q2_K" and cell(window, entry_id, 6) == "ready"
    assert cell(window, entry_id, 3) == "On this machine, not from the catalog"
    assert cell(window, entry_id, 4) not in ("", "planning…")
    row = window.model.row_of(entry_id)
    window.table.scrollTo(window.model.index(row, 0))
    spot = window.table.visualRect(window.model.index(row, 0)).center()
    qtbot.mouseClick(window.table.viewport(), Qt.MouseButton.LeftButton, pos=spot)
    assert window.buttons["Load in chat"].isEnabled() and not window.buttons["Download"].isEnabled()
    with qtbot.waitSignal(window.load_requested) as requested:
        qtbot.mouseClick(window.buttons["Load in chat"], Qt.MouseButton.LeftButton)
    assert requested.args[0].name == "my-mixtral-Q2_K.gguf"


def _drop(window: ModelManagerWindow, path: Path) -> None:
    """Drag ``path`` from a file manager and drop it on the window, as a person does."""
    from PySide6.QtCore import QMimeData, QPointF, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(path))])
    centre = window.rect().center()
    buttons, modifiers = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(centre, Qt.DropAction.CopyAction, data, buttons, modifiers)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(centre), Qt.DropAction.CopyAction, data, buttons, modifiers)
    QApplication.sendEvent(window, drop)


@pytest.mark.filterwarnings("ignore:Function.*QDragEnterEvent:DeprecationWarning")  # Qt 6 has no other form
def test_a_dropped_file_llama_cpp_cannot_load_is_refused_with_its_defect(qtbot, tmp_path: Path) -> None:
    from app.core.models.local import registered
    from tests.gguf_defects import defective_gguf

    path = defective_gguf(tmp_path, "wrong shape")
    window = open_manager(qtbot, CPU_32)
    _drop(window, path)
    qtbot.waitUntil(lambda: window.message.text().startswith("Import failed"), timeout=30_000)
    assert "its tensor blk.0.ffn_gate_exps.weight has the shape" in window.message.text()
    assert registered() == {}


def test_the_real_hardware_panel_fills_in(qtbot) -> None:
    window = ModelManagerWindow(DownloadService(retry=FAST), confirm=lambda q: True)
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: "RAM:" in window.hardware_label.text(), timeout=30_000)
    assert "CPU only" in window.hardware_label.text() and "Free disk" in window.hardware_label.text()
    window.hardware_label.linkActivated.emit("gpu-help")  # the label's "how to use a GPU" link, clicked
    from PySide6.QtWidgets import QMessageBox

    help_box = window.findChild(QMessageBox, "gpuHelp")
    assert help_box is not None and "-DGGML_CUDA=on" in help_box.text()


def test_main_window_opens_the_manager_and_loads_from_it(qtbot, tiny_v1: dict[str, Path]) -> None:
    from app.gui.main_window import MainWindow

    window = MainWindow(load_on_start=False)
    qtbot.addWidget(window)
    window.show()
    choose(qtbot, window.model_picker, "Manage models…")
    assert window.model_manager is not None and window.model_manager.isVisible()
    with qtbot.waitSignal(window.controller.model_loaded, timeout=60_000):
        window.model_manager.load_requested.emit(tiny_v1["Q4_0"])


def test_screenshot_script_catches_a_download_in_progress(tmp_path: Path, qapp, monkeypatch) -> None:
    import huggingface_hub.constants

    from tests.gui.screenshot_models import main

    for name in ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_OFFLINE"):
        monkeypatch.setattr(huggingface_hub.constants, name, getattr(huggingface_hub.constants, name))
    assert main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "model-manager.png").stat().st_size > 20_000


def test_hub_details_fill_in_after_the_window_opens(qtbot, served, tiny_v1: dict[str, Path]) -> None:
    window = open_manager(qtbot, CPU_32)
    qtbot.waitUntil(lambda: not cell(window, ENTRY, 2).startswith("≈"), timeout=30_000)
    assert cell(window, ENTRY, 2) == "13 MiB"  # the served file's exact size replaced the catalog estimate
    assert "Exact" in tooltip(window, ENTRY, 2)
    assert cell(window, "mixtral-8x7b-instruct:Q8_0", 2).startswith("≈")  # the hub does not have that one
    assert "Computed" in tooltip(window, "mixtral-8x7b-instruct:Q8_0", 2)


def test_the_window_opens_without_a_network(qtbot) -> None:
    window = open_manager(qtbot, CPU_32)  # HF_HUB_OFFLINE is set by the test fixtures
    assert window.model.rowCount() >= 20 and cell(window, ENTRY, 2).startswith("≈ ")


def test_esc_closes_the_model_manager(qtbot) -> None:
    window = open_manager(qtbot, CPU_32)
    window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow)
    qtbot.keyClick(window.focusWidget() or window, Qt.Key.Key_Escape)  # wherever the focus is
    assert not window.isVisible()


def test_the_demo_shows_its_measured_speed_and_cannot_be_deleted(qtbot, demo_window) -> None:
    from app.core.models.demo import demo_model_path
    from app.core.storage.speeds import measured_speed
    from tests.gui.helpers import send

    reply = send(qtbot, demo_window, "Count from one to twenty in words.")
    assert reply.stats.generated_tokens >= 16
    qtbot.waitUntil(lambda: measured_speed(demo_model_path()) is not None)  # written on a worker thread
    demo_window.show()
    choose(qtbot, demo_window.model_picker, "Manage models…")
    manager = demo_window.model_manager
    qtbot.waitUntil(lambda: manager.model.measured != {}, timeout=30_000)
    row = manager.model.row_of("demo:Q4_1")
    manager.table.scrollTo(manager.model.index(row, 0))
    spot = manager.table.visualRect(manager.model.index(row, 0)).center()
    qtbot.mouseClick(manager.table.viewport(), Qt.MouseButton.LeftButton, pos=spot)  # the demo's row, clicked
    assert manager.selected().entry.id == "demo:Q4_1"
    speed = manager.model.data(manager.model.index(row, 5))
    assert speed == f"{measured_speed(demo_model_path()):.0f} tok/s measured"
    assert manager.buttons["Load in chat"].isEnabled() and not manager.buttons["Delete"].isEnabled()


def test_an_imported_model_is_loaded_from_the_picker(qtbot, tiny_v1: dict[str, Path]) -> None:
    from app.core.models.local import import_model
    from app.gui.main_window import MainWindow

    import_model(tiny_v1["Q4_0"], "link")
    window = MainWindow(load_on_start=False)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.models_listed):  # the picker is filled from the disk on a worker thread
        window.show()
    with qtbot.waitSignal(window.controller.model_loaded, timeout=60_000) as loaded:
        choose(qtbot, window.model_picker, tiny_v1["Q4_0"].stem)
    assert loaded.args[0].path == str(tiny_v1["Q4_0"])
    assert window.model_picker.currentText() == tiny_v1["Q4_0"].stem
