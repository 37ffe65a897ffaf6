"""Every path the app uses, from platformdirs; ``MIXTRAL_DESK_HOME`` moves them all under one root."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_DIR_NAME = "mixtral-desk"
HOME_ENV = "MIXTRAL_DESK_HOME"


def _root_override() -> Path | None:
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """Conversations, settings-independent user data and downloaded models live here."""
    root = _root_override()
    return root / "data" if root else Path(platformdirs.user_data_dir(APP_DIR_NAME, appauthor=False))


def config_dir() -> Path:
    """Settings live here."""
    root = _root_override()
    return root / "config" if root else Path(platformdirs.user_config_dir(APP_DIR_NAME, appauthor=False))


def cache_dir() -> Path:
    """Disposable data: header caches, measured buffer sizes, partial downloads."""
    root = _root_override()
    return root / "cache" if root else Path(platformdirs.user_cache_dir(APP_DIR_NAME, appauthor=False))


_models_dir_override: Path | None = None


def set_models_dir(path: str | Path | None) -> None:
    """Use ``path`` for models (the user's "models folder" setting); None or "" restores the default."""
    global _models_dir_override
    _models_dir_override = Path(path).expanduser() if path else None


def models_dir() -> Path:
    """Where downloaded and imported GGUF files are placed."""
    return _models_dir_override or data_dir() / "models"


def ensure(path: Path) -> Path:
    """Create ``path`` (a directory) if needed and return it."""
    path.mkdir(parents=True, exist_ok=True)
    return path
