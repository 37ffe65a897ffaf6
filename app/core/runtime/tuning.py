"""What `bench --tune` found fastest per model file (threads, batch, GPU layers); later loads use it.
The search itself is :func:`app.core.runtime.bench.tune`."""

from __future__ import annotations

from pathlib import Path

from app.core.storage import paths
from app.core.storage.jsonfile import read_json_dict

TUNED_FILE = "tuned.json"


def tuned_settings(model_path: Path) -> dict[str, int]:
    """The fastest threads / batch (/ GPU layers) found by ``bench --tune`` for this file, if any."""
    key = str(model_path.resolve())
    value = read_json_dict(paths.cache_dir() / TUNED_FILE).get(key)
    return {k: int(v) for k, v in value.items()} if isinstance(value, dict) else {}
