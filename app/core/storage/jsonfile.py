"""Small JSON files under the app's folders: read leniently, written atomically (temp file + os.replace)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json_dict(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; an empty dict when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
