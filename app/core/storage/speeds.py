"""Decode speeds measured on this machine, per model file: the model manager shows them instead of the
planner's estimate once a model has answered a few times."""

from __future__ import annotations

import statistics
import threading
from pathlib import Path

from app.core.storage import paths
from app.core.storage.jsonfile import read_json_dict, write_json_atomic

SPEEDS_FILE = "measured-speeds.json"
MIN_TOKENS = 16  # shorter replies say more about the prompt than about decoding
KEPT = 7  # the latest replies per model; the median of them is shown

_lock = threading.Lock()


def _path() -> Path:
    return paths.data_dir() / SPEEDS_FILE


def _key(model_path: Path | str) -> str:
    return str(Path(model_path).expanduser().resolve())


def record_speed(model_path: Path | str, tokens_per_s: float, tokens: int) -> bool:
    """Remember one reply's decode speed; replies under ``MIN_TOKENS`` tokens are ignored (returns False)."""
    if tokens < MIN_TOKENS or tokens_per_s <= 0:
        return False
    with _lock:
        data = read_json_dict(_path())
        kept = [float(v) for v in data.get(_key(model_path), []) if isinstance(v, int | float)]
        data[_key(model_path)] = [*kept, round(tokens_per_s, 2)][-KEPT:]
        write_json_atomic(_path(), data)
    return True


def measured_speeds() -> dict[str, float]:
    """Median measured tokens/s by resolved model path."""
    data = read_json_dict(_path())
    return {
        key: statistics.median(values)
        for key, values in (
            (k, [float(v) for v in vs if isinstance(v, int | float)]) for k, vs in data.items() if isinstance(vs, list)
        )
        if values
    }


def measured_speed(model_path: Path | str) -> float | None:
    """The median measured tokens/s of ``model_path``, or None before it has answered ``MIN_TOKENS`` tokens."""
    return measured_speeds().get(_key(model_path))
