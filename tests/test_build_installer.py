"""The desktop bundle: build it with PyInstaller and run the built executable with no Python involved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    result = subprocess.run(
        [sys.executable, str(ROOT / "build_installer.py"), "--with-demo-model", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def run_bundle(bundle: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    clean_env.update(MIXTRAL_DESK_HOME=str(home), QT_QPA_PLATFORM="offscreen", PATH="/usr/bin:/bin")
    return subprocess.run(
        [str(bundle / "dist" / "mixtral-desk" / "mixtral-desk"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env,
    )


@pytest.mark.slow
def test_the_bundle_runs_without_python(bundle: Path, tmp_path: Path) -> None:
    from app import __version__

    version = run_bundle(bundle, "--version", home=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"mixtral-desk {__version__}"
    hw = run_bundle(bundle, "hw", "--json", home=tmp_path)
    assert hw.returncode == 0, hw.stderr
    assert json.loads(hw.stdout[hw.stdout.index("{") :])["llama_backend"] == "cpu"
    chat = run_bundle(
        bundle,
        "chat",
        "--prompt",
        "How many days are in a week?",
        "--temperature",
        "0",
        "--repeat-penalty",
        "1",
        "--json",
        home=tmp_path,
    )
    assert chat.returncode == 0, chat.stderr
    assert "7" in json.loads(chat.stdout)["reply"]
    gui = subprocess.run(
        [str(bundle / "dist" / "mixtral-desk" / "mixtral-desk"), "gui"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "MIXTRAL_DESK_HOME": str(tmp_path),
            "QT_QPA_PLATFORM": "offscreen",
            "MIXTRAL_DESK_EXIT_AFTER_SHOW": "1",
        },
    )
    assert "window shown" in gui.stdout


@pytest.mark.slow
def test_the_bundle_has_what_it_needs_and_nothing_from_development(bundle: Path) -> None:
    folder = bundle / "dist" / "mixtral-desk"
    names = {p.name for p in folder.rglob("*")}
    assert {"libllama.so", "presets.json", "catalog.json", "SmolLM2-135M-Instruct.Q4_1.gguf"} <= names
    assert not any(name in names for name in ("pytest", "_pytest", "mypy", "ruff"))
    assert (folder / "mixtral-desk.desktop").is_file()
    assert list(bundle.glob("mixtral-desk-*-linux-*.tar.gz"))
