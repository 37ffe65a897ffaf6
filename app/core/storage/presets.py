"""System-prompt presets: built-ins from ``resources/presets.json`` plus the user's own, kept in the config
dir. Users can create, edit, duplicate and delete presets; editing a built-in stores an override that
"reset" removes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, replace
from importlib import resources

from app.core.errors import DeskError
from app.core.storage import paths
from app.core.storage.jsonfile import read_json_dict, write_json_atomic

USER_PRESETS_FILE = "presets.json"


@dataclass(frozen=True)
class Preset:
    """A named system prompt."""

    id: str
    name: str
    text: str
    language: str = "en"
    builtin: bool = False
    modified: bool = False  # a built-in the user edited


def builtin_presets() -> list[Preset]:
    data = json.loads(resources.files("resources").joinpath("presets.json").read_text(encoding="utf-8"))
    return [Preset(p["id"], p["name"], p["text"], p.get("language", "en"), builtin=True) for p in data["presets"]]


class PresetStore:
    """Built-in and user presets, merged; changes are saved at once."""

    def __init__(self) -> None:
        self._path = paths.config_dir() / USER_PRESETS_FILE

    def _user_data(self) -> dict[str, dict[str, str]]:
        data = read_json_dict(self._path).get("presets", {})
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, dict[str, str]]) -> None:
        write_json_atomic(self._path, {"version": 1, "presets": data})

    def all(self) -> list[Preset]:
        """Built-ins first (with the user's edits applied), then user presets by name."""
        user = self._user_data()
        result = []
        for preset in builtin_presets():
            override = user.get(preset.id)
            if override is not None and override.get("deleted"):
                continue
            if override is not None:
                preset = replace(
                    preset,
                    name=override.get("name", preset.name),
                    text=override.get("text", preset.text),
                    modified=True,
                )
            result.append(preset)
        builtin_ids = {p.id for p in builtin_presets()}
        own = [
            Preset(pid, str(v.get("name", "")), str(v.get("text", "")), str(v.get("language", "en")))
            for pid, v in user.items()
            if pid not in builtin_ids and not v.get("deleted")
        ]
        return result + sorted(own, key=lambda p: p.name.lower())

    def get(self, preset_id: str) -> Preset:
        for preset in self.all():
            if preset.id == preset_id:
                return preset
        raise DeskError(f"No preset {preset_id!r}.")

    def create(self, name: str, text: str, language: str = "en") -> Preset:
        if not name.strip():
            raise DeskError("A preset needs a name.")
        preset_id = f"user-{uuid.uuid4().hex[:8]}"
        data = self._user_data()
        data[preset_id] = {"name": name.strip(), "text": text, "language": language}
        self._save(data)
        return self.get(preset_id)

    def update(self, preset_id: str, *, name: str | None = None, text: str | None = None) -> Preset:
        current = self.get(preset_id)
        data = self._user_data()
        entry = {k: v for k, v in asdict(current).items() if k in ("name", "text", "language")}
        if name is not None:
            if not name.strip():
                raise DeskError("A preset needs a name.")
            entry["name"] = name.strip()
        if text is not None:
            entry["text"] = text
        data[preset_id] = entry
        self._save(data)
        return self.get(preset_id)

    def duplicate(self, preset_id: str) -> Preset:
        source = self.get(preset_id)
        return self.create(f"{source.name} (copy)", source.text, source.language)

    def delete(self, preset_id: str) -> None:
        current = self.get(preset_id)
        data = self._user_data()
        if current.builtin:
            data[preset_id] = {"deleted": "1"}
        else:
            data.pop(preset_id, None)
        self._save(data)

    def reset_builtins(self) -> None:
        """Undo every edit and deletion of built-in presets (user presets stay)."""
        builtin_ids = {p.id for p in builtin_presets()}
        self._save({k: v for k, v in self._user_data().items() if k not in builtin_ids})
