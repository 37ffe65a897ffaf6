"""User settings: one typed dataclass in one JSON file under the config dir, saved atomically, versioned.

A malformed or unreadable file is moved aside (``settings.json.bad-<time>``) and defaults are used, with a
notice for the user: settings never stop the app from starting.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from app.core.storage import paths
from app.core.storage.jsonfile import write_json_atomic

SETTINGS_VERSION = 2
SETTINGS_FILE = "settings.json"
THEMES = ("system", "light", "dark")


@dataclass(frozen=True)
class Settings:
    """Everything the user can set in the settings dialog."""

    models_dir: str = ""  # empty: the default under the data dir
    context_length: int = 4096
    gpu_layers: int | None = None  # None: the memory planner decides
    threads: int | None = None
    flash_attention: bool = True  # as llama.cpp: faster everywhere here, less memory, and a quantized KV needs it
    kv_cache_type: str = "f16"
    theme: str = "system"
    font_size: int = 11
    last_model: str = ""
    max_parallel_downloads: int = 1
    download_connections: int = 4  # parallel byte ranges per file
    rpc_workers: tuple[str, ...] = ()  # llama.cpp RPC workers ("host:port") to offload to, in order
    cpu_moe: int | None = None  # experts of the first N layers in RAM; None: the planner decides; 0: whole layers

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rpc_workers"] = list(self.rpc_workers)
        return {"version": SETTINGS_VERSION, **data}


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    notice: str = ""  # set when the file was damaged and replaced


def settings_path() -> Path:
    return paths.config_dir() / SETTINGS_FILE


def _validated(data: dict[str, Any]) -> Settings:
    known = {f.name: f for f in fields(Settings)}
    values = {k: v for k, v in data.items() if k in known}
    settings = replace(Settings(), **values)
    if settings.theme not in THEMES:
        raise ValueError(f"theme {settings.theme!r}")
    if settings.kv_cache_type not in ("f16", "q8_0", "q4_0"):
        raise ValueError(f"kv_cache_type {settings.kv_cache_type!r}")
    for name in ("context_length", "font_size", "max_parallel_downloads", "download_connections"):
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} {value!r}")
    if settings.gpu_layers is not None and not isinstance(settings.gpu_layers, int):
        raise ValueError(f"gpu_layers {settings.gpu_layers!r}")
    if settings.cpu_moe is not None and (not isinstance(settings.cpu_moe, int) or settings.cpu_moe < 0):
        raise ValueError(f"cpu_moe {settings.cpu_moe!r}")
    if not isinstance(settings.rpc_workers, (list, tuple)) or not all(isinstance(w, str) for w in settings.rpc_workers):
        raise ValueError(f"rpc_workers {settings.rpc_workers!r}")
    return replace(settings, rpc_workers=tuple(settings.rpc_workers))  # addresses are checked where they are entered


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring an older file up to :data:`SETTINGS_VERSION` (version 1 is the first).

    2: flash attention on. Version 1 saved its old default (off) for everyone, so it cannot tell a choice from
    the default; on is faster and smaller, so everyone gets it (the settings dialog turns it off).
    """
    version = data.get("version", 1)
    if not isinstance(version, int) or version > SETTINGS_VERSION:
        raise ValueError(f"settings version {version!r} is newer than this app")
    if version < 2:
        data = {**data, "flash_attention": True, "version": 2}
    return data


def load_settings() -> LoadedSettings:
    """The saved settings, or defaults (with a notice if the file had to be set aside)."""
    path = settings_path()
    if not path.exists():
        return LoadedSettings(Settings())
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return LoadedSettings(_validated(_migrate(data)))
    except (OSError, ValueError, TypeError) as err:
        backup = path.with_name(f"{path.name}.bad-{int(time.time())}")
        try:
            path.replace(backup)
        except OSError:
            backup = path
        return LoadedSettings(
            Settings(),
            f"Your settings file could not be read ({err}); it was kept as {backup.name} and defaults are in use.",
        )


def save_settings(settings: Settings) -> None:
    """Write ``settings`` atomically."""
    _validated(settings.to_json())
    write_json_atomic(settings_path(), settings.to_json())
