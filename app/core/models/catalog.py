"""The catalog joined with what is on disk and what the hub says: sizes, local status, and plans for every
quantization before anything is downloaded.

Shapes for planning come from, in order: the local file's header (exact), a cached remote header read
(exact), a fresh remote header read over HTTP ranges when allowed (exact), else the catalog's architecture
fields and file size ("estimated from catalog").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.core.errors import DeskError
from app.core.models.demo import demo_model_path
from app.core.storage import paths
from app.core.storage.jsonfile import read_json_dict, write_json_atomic
from models_manifest import (
    SIZE_HUB,
    CatalogError,
    CatalogFile,
    CatalogModel,
    CatalogQuant,
    load_catalog,
)

HUB_CACHE_FILE = "hub_files.json"
HUB_TIMEOUT_S = 10.0  # an unanswering hub is given up on after this, not after the network stack's minutes


@dataclass(frozen=True)
class CatalogEntry:
    """One downloadable (or built-in) file set: a model at one quantization, with its local status."""

    model: CatalogModel
    quant: CatalogQuant
    local_paths: tuple[Path, ...]

    @property
    def id(self) -> str:
        return f"{self.model.id}:{self.quant.quant}"

    @property
    def installed(self) -> bool:
        return bool(self.local_paths) and all(p.is_file() for p in self.local_paths)

    @property
    def first_path(self) -> Path:
        """The path to load (the first part of a split model)."""
        return self.local_paths[0] if self.local_paths else local_path(self.model, self.quant.files[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model.id,
            "name": self.model.name,
            "quant": self.quant.quant,
            "repo": self.model.repo,
            "files": [f.name for f in self.quant.files],
            "size": self.quant.size,
            "size_exact": self.quant.size_exact,
            "size_source": self.quant.size_source,
            "name_verified": self.quant.name_verified,
            "note": self.quant.note,
            "installed": self.installed,
            "path": str(self.first_path) if self.installed else None,
        }


def local_path(model: CatalogModel, file: CatalogFile) -> Path:
    """Where a catalog file lives once downloaded (the demo model: inside its package)."""
    if model.package:
        demo = demo_model_path()
        if demo is not None:
            return demo
    return paths.models_dir() / model.id / file.name


def catalog() -> tuple[CatalogModel, ...]:
    """The catalog with sizes and hashes the hub reported earlier filled in."""
    try:
        models = load_catalog()
    except CatalogError as err:
        raise DeskError(f"The model catalog is damaged: {err}") from err
    cache = read_json_dict(paths.cache_dir() / HUB_CACHE_FILE)
    return tuple(_with_hub_metadata(m, cache.get(m.repo or "", {})) for m in models)


def _with_hub_metadata(model: CatalogModel, files: dict[str, Any]) -> CatalogModel:
    if not files:
        return model
    commits = {item.get("revision") for item in files.values() if isinstance(item, dict)}
    if model.revision is None and len(commits) == 1 and None not in commits:
        model = replace(model, revision=commits.pop())  # pinned to the commit the figures describe
    quants = []
    for quant in model.quants:
        new_files = tuple(
            CatalogFile(
                f.name,
                f.size if f.size is not None else files.get(f.name, {}).get("size"),
                f.sha256 or files.get(f.name, {}).get("sha256"),
            )
            for f in quant.files
        )
        sizes = [f.size for f in new_files]
        if all(s is not None for s in sizes):
            quant = replace(quant, files=new_files, size=sum(s for s in sizes if s is not None), size_source=SIZE_HUB)
        else:
            quant = replace(quant, files=new_files)
        quants.append(quant)
    return replace(model, quants=tuple(quants))


def entries() -> list[CatalogEntry]:
    """Every model at every quantization, smallest first within a model."""
    result = []
    for model in catalog():
        for quant in sorted(model.quants, key=lambda q: q.size):
            result.append(CatalogEntry(model, quant, tuple(local_path(model, f) for f in quant.files)))
    return result


def find_model(model_id: str) -> CatalogModel:
    """The catalog model called ``model_id``.

    Raises:
        DeskError: no such model, listing the ids that exist.
    """
    models = catalog()
    for model in models:
        if model.id == model_id:
            return model
    raise DeskError(f"No catalog model called {model_id!r}; known: {', '.join(m.id for m in models)}.")


def entry(model_id: str, quant: str) -> CatalogEntry:
    """One catalog entry by model id and quantization."""
    model = find_model(model_id)
    try:
        chosen = model.quant(quant)
    except CatalogError as err:
        raise DeskError(str(err)) from err
    return CatalogEntry(model, chosen, tuple(local_path(model, f) for f in chosen.files))


def refresh_from_hub(model: CatalogModel, token: str | None = None) -> int:
    """Fill in sizes and sha256 from the hub's file metadata (``files_metadata=True``) and cache them, with
    the commit they describe: later downloads of the model ask for that commit, so the bytes that arrive are
    the bytes the sha256 is of even if the repo changes (MaziyarPanahi's 8x22B repo was re-split in 2024).

    Returns the number of catalog files the hub described. Raises :class:`DeskError` when the hub cannot be
    reached (offline is a normal state: callers show the cached or estimated figures).
    """
    if not model.repo:
        return 0
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(
            model.repo, revision=model.revision, files_metadata=True, token=token, timeout=HUB_TIMEOUT_S
        )
    except Exception as err:  # network errors, offline mode, HTTP errors: all mean "not now"
        raise DeskError(f"Could not read {model.repo} from the hub ({type(err).__name__}: {err}).") from err
    wanted = {f.name for q in model.quants for f in q.files}
    found: dict[str, dict[str, Any]] = {}
    for sibling in info.siblings or []:
        if sibling.rfilename in wanted:
            lfs = getattr(sibling, "lfs", None)
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            found[sibling.rfilename] = {"size": sibling.size, "sha256": sha, "revision": info.sha}
    cache_path = paths.cache_dir() / HUB_CACHE_FILE
    cache = read_json_dict(cache_path)
    cache[model.repo] = {**cache.get(model.repo, {}), **found}
    write_json_atomic(cache_path, cache)
    return len(found)
