"""A screenshot of the model manager with a download in progress, for review.

It serves a tiny test model from a local fake hub (slowly, so the download is caught mid-way), plans for
an assumed 24 GB CUDA machine, and saves ``model-manager.png``.

    QT_QPA_PLATFORM=offscreen python -m tests.gui.screenshot_models --out shots/
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gui.screenshot_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="screenshots", help="folder for the PNG")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("MIXTRAL_DESK_HOME", tempfile.mkdtemp(prefix="mixtral-desk-shots-"))
    import huggingface_hub.constants as hub_constants
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from app.core.models import catalog
    from app.core.planning.planner import GIB, Device
    from app.core.storage import paths
    from app.gui.downloads import DownloadService
    from app.gui.model_manager import ModelManagerWindow
    from quant.fakehub import FakeHub
    from quant.tiny import build_tiny

    models = build_tiny(paths.cache_dir() / "screenshot-models", "v1", ("Q8_0",))
    entry = catalog.entry("mixtral-8x7b-instruct", "Q4_K_M")
    hub = FakeHub(throttle_bytes_per_s=2_000_000)
    hub.add(entry.model.repo or "", models["Q8_0"], entry.quant.files[0].name)
    hub.start()
    hub_constants.ENDPOINT = hub.url
    hub_constants.HUGGINGFACE_CO_URL_TEMPLATE = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    hub_constants.HF_HUB_OFFLINE = False
    app = QApplication.instance() or QApplication(sys.argv[:1])
    device = Device.assumed_machine(backend="cuda", vram_bytes=24 * GIB, ram_bytes=64 * GIB, gpu_name="RTX 4090")
    service = DownloadService()
    window = ModelManagerWindow(
        service,
        device=device,
        confirm=lambda question: True,
        hardware_text="GPU: NVIDIA GeForce RTX 4090 (assumed for this screenshot): 23.5 GiB free of 24.0 GiB. "
        "RAM: 64 GiB. llama.cpp built for cuda. Free disk in the models folder: 812 GiB.",
    )
    window.resize(1280, 720)
    window.show()
    loop = QEventLoop()
    window.plans_updated.connect(loop.quit)
    QTimer.singleShot(30_000, loop.quit)
    loop.exec()
    window.select(entry.id)
    window.download_selected()
    progress = QEventLoop()
    service.progressed.connect(lambda p: progress.quit() if p.state == "downloading" and p.done > 4_000_000 else None)
    QTimer.singleShot(60_000, progress.quit)
    progress.exec()
    app.processEvents()
    path = out / "model-manager.png"
    window.grab().save(str(path))
    print(path)
    service.pause(entry.id)
    window.close()
    hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
