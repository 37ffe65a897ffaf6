"""The catalog of Mixtral GGUF files Mixtral Desk knows: data in ``catalog.json``, loaded into typed entries.

Every size says where it comes from (``size_source``): ``hub`` (the hub's own byte count, with sha256 where
known) or ``computed`` (the length of a shape-true file for the real architecture, every tensor in the type
llama.cpp's quantizer gives it: ``python -m quant full --update-catalog``); computed sizes are replaced by the
hub's when it answers (see :mod:`app.core.models.catalog`). A file name that no public source confirmed is
marked ``name_verified: false``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

CATALOG_VERSION = 1
TOKENIZERS = ("v1", "v3")
LAYOUT_MERGED = "merged"  # ffn_*_exps tensors: what current llama.cpp loads
LAYOUT_PER_EXPERT = "per-expert"  # ffn_*.E tensors from late 2023: current llama.cpp refuses them
LAYOUTS = (LAYOUT_MERGED, LAYOUT_PER_EXPERT)
SIZE_HUB = "hub"  # bytes the hub reported for the file(s)
SIZE_COMPUTED = "computed"  # a shape-true file's length: llama.cpp's quantizer on the real architecture
SIZE_SOURCES = (SIZE_HUB, SIZE_COMPUTED)
SIZE_FILE = "file"  # not in the catalog: the length of a file on this machine (a model imported or copied in)


class CatalogError(ValueError):
    """The catalog file is malformed; the message names the bad entry."""


@dataclass(frozen=True)
class CatalogFile:
    """One file on the hub (a whole model, or one part of a split model)."""

    name: str
    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class Architecture:
    """The shape fields the planner needs when no GGUF header is at hand."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_expert: int
    n_expert_used: int
    n_vocab: int


@dataclass(frozen=True)
class CatalogQuant:
    """One quantization level of a model: its file(s), total size and a one-line quality note."""

    quant: str
    files: tuple[CatalogFile, ...]
    size: int
    size_source: str
    note: str
    name_verified: bool = True  # False: no public source confirmed these file names

    @property
    def size_exact(self) -> bool:
        """The size is the hub's own figure, not computed."""
        return self.size_source == SIZE_HUB

    @property
    def is_split(self) -> bool:
        return len(self.files) > 1


@dataclass(frozen=True)
class CatalogModel:
    """A model the app can download (or, for the demo, has built in)."""

    id: str
    name: str
    repo: str | None
    revision: str | None
    instruct: bool
    tokenizer: str | None
    context_length: int
    architecture: Architecture
    quants: tuple[CatalogQuant, ...]
    package: str | None = None
    tensor_layout: str = LAYOUT_MERGED

    @property
    def loadable(self) -> bool:
        """False for files in the old per-expert layout, which current llama.cpp no longer loads."""
        return self.tensor_layout == LAYOUT_MERGED

    def quant(self, name: str) -> CatalogQuant:
        """The level called ``name`` (case-insensitive)."""
        for quant in self.quants:
            if quant.quant.lower() == name.lower():
                return quant
        levels = ", ".join(q.quant for q in self.quants)
        raise CatalogError(f"{self.name} has no {name} file; available: {levels}.")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_path() -> Path:
    return Path(str(resources.files("models_manifest").joinpath("catalog.json")))


def load_catalog(path: Path | None = None) -> tuple[CatalogModel, ...]:
    """Load and validate the catalog.

    Raises:
        CatalogError: unreadable JSON or a bad entry (named in the message).
    """
    source = path or default_path()
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CatalogError(f"The model catalog {source} cannot be read: {err}.") from err
    if not isinstance(data, dict) or data.get("version") != CATALOG_VERSION or not isinstance(data.get("models"), list):
        raise CatalogError(f"The model catalog {source} is not a version-{CATALOG_VERSION} catalog.")
    models = [_model(entry, index) for index, entry in enumerate(data["models"])]
    ids = [m.id for m in models]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise CatalogError(f"The model catalog lists {', '.join(duplicates)} more than once.")
    return tuple(models)


def _model(entry: Any, index: int) -> CatalogModel:
    where = f"catalog entry {index + 1}"
    if not isinstance(entry, dict):
        raise CatalogError(f"{where} is not an object.")
    where = f"catalog entry {entry.get('id', index + 1)!r}"
    try:
        arch = Architecture(**{k: int(v) for k, v in entry["architecture"].items()})
        quants = tuple(_quant(q, where) for q in entry["quants"])
        model = CatalogModel(
            id=str(entry["id"]),
            name=str(entry["name"]),
            repo=entry.get("repo"),
            revision=entry.get("revision"),
            instruct=bool(entry["instruct"]),
            tokenizer=entry.get("tokenizer"),
            context_length=int(entry["context_length"]),
            architecture=arch,
            quants=quants,
            package=entry.get("package"),
            tensor_layout=str(entry.get("tensor_layout", LAYOUT_MERGED)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CatalogError(f"{where} is malformed ({type(err).__name__}: {err}).") from err
    if model.tokenizer is not None and model.tokenizer not in TOKENIZERS:
        raise CatalogError(f"{where} has tokenizer {model.tokenizer!r}; use one of {', '.join(TOKENIZERS)}.")
    if not model.quants:
        raise CatalogError(f"{where} lists no files.")
    if model.tensor_layout not in LAYOUTS:
        raise CatalogError(f"{where} has tensor_layout {model.tensor_layout!r}; use one of {', '.join(LAYOUTS)}.")
    if model.repo is None and model.package is None:
        raise CatalogError(f"{where} names neither a hub repo nor a package.")
    return model


def _quant(entry: Any, where: str) -> CatalogQuant:
    files = tuple(
        CatalogFile(str(f["name"]), None if f.get("size") is None else int(f["size"]), f.get("sha256"))
        for f in entry["files"]
    )
    if not files:
        raise CatalogError(f"{where}: {entry.get('quant')} lists no files.")
    for file in files:
        if file.sha256 is not None and (
            len(file.sha256) != 64 or any(c not in "0123456789abcdef" for c in file.sha256)
        ):
            raise CatalogError(f"{where}: {file.name} has a malformed sha256.")
        if not file.name.endswith(".gguf"):
            raise CatalogError(f"{where}: {file.name} is not a .gguf file.")
    size = int(entry["size"])
    if size <= 0:
        raise CatalogError(f"{where}: {entry['quant']} has no size.")
    source = str(entry["size_source"])
    if source not in SIZE_SOURCES:
        raise CatalogError(
            f"{where}: {entry['quant']} has size_source {source!r}; use one of {', '.join(SIZE_SOURCES)}."
        )
    return CatalogQuant(
        str(entry["quant"]), files, size, source, str(entry["note"]), bool(entry.get("name_verified", True))
    )
