"""House rules that keep the layers apart, read from the imports of every module.

- cli | gui | server -> core (the CLI also starts the window and the server; the window starts the server);
  core never imports gui, cli, server, quant or Qt; quant -> core and the catalog (models_manifest) only.
- Inside core, folders depend one way: runtime -> planning -> models -> storage (and all on core's root modules).
- Only app/core/runtime imports llama_cpp: the engine host owns every llama.cpp object.
- models_manifest holds data and its loader: it imports nothing from app.
- No import cycles between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QT_MODULES = ("PySide6", "PyQt5", "PyQt6", "qtpy", "shiboken6", "superqt")
PACKAGES = ("app", "quant", "models_manifest")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at top level or inside functions (lazy imports count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def all_modules() -> dict[str, set[str]]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            modules[module_name(path)] = imported_modules(path)
    return modules


MODULES = all_modules()


def internal(imports: set[str]) -> set[str]:
    """The project's own modules among ``imports`` (a ``from package import module`` resolves to the module)."""
    return {name for name in imports if name in MODULES}


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "app" or len(parts) < 2 or parts[1] == "__main__":
        return parts[0]
    if parts[1] == "core" and len(parts) > 3:
        return f"core.{parts[2]}"  # a core subpackage's module
    return parts[1] if parts[1] != "core" else "core"


# what each layer may import (besides itself)
ALLOWED = {
    "cli": {"app", "core", "core.runtime", "core.planning", "core.models", "core.storage", "gui", "server", "quant"},
    "gui": {"app", "core", "core.runtime", "core.planning", "core.models", "core.storage", "server"},
    "server": {"app", "core", "core.runtime", "core.planning", "core.models", "core.storage"},
    "core.runtime": {"core", "core.planning", "core.models", "core.storage", "models_manifest"},
    "core.planning": {"core", "core.models", "core.storage", "models_manifest"},
    "core.models": {"core", "core.storage", "models_manifest"},
    "core.storage": {"core"},
    "core": {"core"},
    "quant": {"core", "core.runtime", "core.planning", "core.models", "core.storage", "models_manifest"},
    "models_manifest": set(),
    "app": {"cli"},  # app/__main__.py
}


def test_every_import_follows_the_layers() -> None:
    wrong = []
    for module, imports in MODULES.items():
        mine = layer(module)
        for target in internal(imports):
            theirs = layer(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


@pytest.mark.parametrize("folder", ["app/core", "app/cli", "app/server", "quant", "models_manifest"])
def test_no_qt_outside_the_gui(folder: str) -> None:
    offenders = []
    for path in (ROOT / folder).rglob("*.py"):
        bad = {m for m in imported_modules(path) if m.split(".")[0] in QT_MODULES}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders, offenders


def test_only_the_runtime_imports_llama_cpp() -> None:
    offenders = []
    for package in (*PACKAGES, "tests"):
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("app/core/runtime/"):
                continue
            if any(m.split(".")[0] == "llama_cpp" for m in imported_modules(path)):
                offenders.append(rel)
    assert not offenders, offenders


def test_there_are_no_import_cycles() -> None:
    graph = {module: internal(imports) - {module} for module, imports in MODULES.items()}
    # a package's __init__ importing its own modules is not a cycle worth reporting
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target] if target in trail else [module, target])
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_the_checker_sees_a_wrong_arrow() -> None:
    # guard against a checker that passes because it reads nothing
    assert "app.core.runtime.host" in MODULES and "app.gui.main_window" in MODULES
    assert layer("app.gui.main_window") == "gui" and layer("app.core.runtime.host") == "core.runtime"
    assert "core.runtime" not in ALLOWED["core.planning"]
    assert internal({"app.core.runtime.host", "os"}) == {"app.core.runtime.host"}
