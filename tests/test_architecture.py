"""House rules that keep the layers apart."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QT_MODULES = ("PySide6", "PyQt5", "PyQt6", "qtpy", "shiboken6", "superqt")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_and_quant_never_import_qt() -> None:
    offenders = []
    for folder in ("app/core", "app/cli", "quant"):
        for path in (ROOT / folder).rglob("*.py"):
            bad = {m for m in imported_modules(path) if m.split(".")[0] in QT_MODULES}
            if bad:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders, offenders


def test_only_the_engine_and_tooling_touch_llama_cpp_objects() -> None:
    # the engine and its batch decoder own llama.cpp objects; hardware reads build info only
    allowed = {
        "app/core/engine.py",
        "app/core/batching.py",
        "app/core/routing.py",
        "app/core/llama_log.py",
        "app/core/hardware.py",
    }
    offenders = []
    for path in (ROOT / "app").rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        if rel not in allowed and any(m.split(".")[0] == "llama_cpp" for m in imported_modules(path)):
            offenders.append(rel)
    assert not offenders, offenders
