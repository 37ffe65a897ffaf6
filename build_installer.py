"""Build a self-contained Mixtral Desk for this OS with PyInstaller (no Python needed to run it).

    python build_installer.py [--onedir|--onefile] [--out DIR] [--with-demo-model]

PyInstaller is used because it handles PySide6 (Qt plugins included by its hooks) and ctypes-loaded shared
libraries well on Linux, macOS and Windows, and it is what llama-cpp-python users already rely on (with the
library files added by hand: llama-cpp-python #1475). The bundle contains llama.cpp's shared libraries as built
(a CUDA or Metal build of llama-cpp-python gives a CUDA or Metal bundle), `resources/` and the model catalog.
It never contains Mixtral weights; the small demo model only with --with-demo-model.

On Linux the result is a folder, a .tar.gz of it, and a .desktop entry.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import shutil
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

from app.cli.main import COMMAND_MODULES  # every command module, imported by name at run time

ROOT = Path(__file__).resolve().parent
NAME = "mixtral-desk"
# imported lazily by name (command modules, GUI, server) or by plugin machinery PyInstaller cannot see
HIDDEN = [
    *COMMAND_MODULES,
    "app.gui.app",
    "app.gui.main_window",
    "app.gui.model_manager",
    "app.server.api",
    "app.server.run",
    "pynvml",
    "psutil",
    "markdown_it",
    "tqdm",
]
COLLECT_SUBMODULES = ["app", "uvicorn", "pygments", "llama_cpp"]
EXCLUDE = ["pytest", "pytestqt", "mypy", "ruff", "mistral_common", "torch", "tkinter", "matplotlib", "IPython"]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed; run: pip install -e .")
    return Path(next(iter(spec.submodule_search_locations)))


def pyinstaller_args(mode: str, out: Path, with_demo: bool) -> list[str]:
    """The PyInstaller command line for this build."""
    from app import __version__

    separator = ";" if platform.system() == "Windows" else ":"
    llama_libs = _package_dir("llama_cpp") / "lib"
    args = [
        str(ROOT / "app" / "__main__.py"),
        "--name",
        NAME,
        f"--{mode}",
        "--noconfirm",
        "--clean",
        "--distpath",
        str(out / "dist"),
        "--workpath",
        str(out / "build"),
        "--specpath",
        str(out),
        "--add-data",
        f"{ROOT / 'resources'}{separator}resources",
        "--add-data",
        f"{ROOT / 'models_manifest' / 'catalog.json'}{separator}models_manifest",
        "--add-binary",
        f"{llama_libs}{separator}llama_cpp/lib",
        "--icon",
        str(ROOT / "resources" / "icon.png"),
        "--copy-metadata",
        "huggingface_hub",
        "--copy-metadata",
        "tqdm",
    ]
    for name in HIDDEN:
        args += ["--hidden-import", name]
    for name in COLLECT_SUBMODULES:
        args += ["--collect-submodules", name]
    for name in EXCLUDE:
        args += ["--exclude-module", name]
    if with_demo:
        from app.core.models.demo import DEMO_FILE, DEMO_PACKAGE

        demo = _package_dir(DEMO_PACKAGE) / DEMO_FILE
        args += ["--add-data", f"{demo}{separator}{DEMO_PACKAGE}"]
    if platform.system() == "Darwin":
        args += ["--windowed", "--osx-bundle-identifier", "org.mixtral-desk.app"]
    print(f"building {NAME} {__version__} ({mode})", file=sys.stderr)
    return args


LLAMA_BACKENDS = {"cpu": "", "cuda": "-DGGML_CUDA=on", "metal": "-DGGML_METAL=on", "vulkan": "-DGGML_VULKAN=on"}


def rebuild_llama(backend: str) -> None:
    """Reinstall llama-cpp-python from source for ``backend`` (the bundle then carries that build)."""
    import os
    import subprocess

    env = {**os.environ, "CMAKE_ARGS": LLAMA_BACKENDS[backend]}
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--force-reinstall",
        "--no-cache-dir",
        "--no-deps",
        "llama-cpp-python",
    ]
    print(f"CMAKE_ARGS={env['CMAKE_ARGS']!r} {' '.join(command)}", file=sys.stderr)
    subprocess.run(command, env=env, check=True)


def linux_extras(dist: Path, out: Path) -> list[Path]:
    """A .desktop entry and a .tar.gz of the folder."""
    from app import __version__

    desktop = dist / NAME / f"{NAME}.desktop"
    desktop.write_text(
        "[Desktop Entry]\nType=Application\nName=Mixtral Desk\nComment=Run Mixtral on your own machine\n"
        f"Exec={NAME}\nIcon=_internal/resources/icon.png\nTerminal=false\nCategories=Utility;Development;\n",
        encoding="utf-8",
    )
    archive = out / f"{NAME}-{__version__}-linux-{platform.machine()}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(dist / NAME, arcname=NAME)
    return [desktop, archive]


def cold_start_seconds(executable: Path, runs: int = 3) -> float:
    """Launch to main window shown (offscreen), best of ``runs``: the app prints a line once the window shows."""
    import os
    import subprocess
    import tempfile

    best = float("inf")
    for _ in range(runs):
        env = {
            **os.environ,
            "QT_QPA_PLATFORM": "offscreen",
            "MIXTRAL_DESK_EXIT_AFTER_SHOW": "1",
            "MIXTRAL_DESK_HOME": tempfile.mkdtemp(prefix="cold-start-"),
        }
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(executable), "gui", "--model", "demo"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("window shown"):
                best = min(best, time.perf_counter() - started)
                break
        process.wait(60)
    return best


def measure(executable: Path) -> int:
    folder = executable.parent
    print(f"bundle: {folder} {folder_size(folder) / 2**20:.0f} MiB")
    print(f"cold start (launch to window shown, offscreen, best of 3): {cold_start_seconds(executable):.2f} s")
    return 0


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--onedir", dest="mode", action="store_const", const="onedir", help="a folder (default)")
    mode.add_argument("--onefile", dest="mode", action="store_const", const="onefile", help="a single executable")
    parser.add_argument("--out", default="build-installer", help="output folder (default build-installer/)")
    parser.add_argument("--with-demo-model", action="store_true", help="include the 98 MB demo model")
    parser.add_argument("--no-archive", action="store_true", help="skip the .tar.gz on Linux")
    parser.add_argument("--measure", metavar="EXECUTABLE", help="only report size and cold start of a built bundle")
    parser.add_argument(
        "--rebuild-llama",
        choices=sorted(LLAMA_BACKENDS),
        help="first rebuild llama-cpp-python in this environment for that backend (minutes)",
    )
    args = parser.parse_args(argv)
    if args.measure:
        return measure(Path(args.measure))
    if args.rebuild_llama:
        rebuild_llama(args.rebuild_llama)
    import PyInstaller.__main__

    out = Path(args.out).resolve()
    mode_name = args.mode or "onedir"
    started = time.perf_counter()
    PyInstaller.__main__.run(pyinstaller_args(mode_name, out, args.with_demo_model))
    dist = out / "dist"
    target = dist / NAME
    extras = (
        linux_extras(dist, out)
        if platform.system() == "Linux" and mode_name == "onedir" and not args.no_archive
        else []
    )
    print(f"built {target} ({folder_size(target) / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s")
    for path in extras:
        print(path)
    if shutil.which("strip") is None:
        print("note: 'strip' not found; binaries were not stripped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
