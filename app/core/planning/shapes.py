"""The best-known memory shape of a catalog entry, before (or without) a download.

In order: the local file's header (exact), a cached remote header read (exact), a fresh remote header read
over HTTP ranges when allowed (exact), else the catalog's architecture fields and file size ("estimated from
catalog").
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from app.core.models.catalog import CatalogEntry
from app.core.models.gguf import GGUFError, GGUFModel, read_model, read_remote_header
from app.core.planning.planner import ModelShape
from app.core.storage import paths
from app.core.storage.jsonfile import read_json_dict, write_json_atomic

SHAPE_CACHE_DIR = "shapes"


def shape_for(entry: CatalogEntry, *, remote: bool = False, token: str | None = None) -> ModelShape:
    """The best-known shape of a catalog entry (see the module docstring for the order)."""
    label = f"{entry.model.name} {entry.quant.quant}"
    if entry.installed:
        try:
            return ModelShape.from_gguf(read_model(entry.first_path), label)
        except GGUFError:
            pass  # a damaged local file: fall back to what we know without it
    cached = _cached_shape(entry)
    if cached is not None:
        return replace(cached, name=label)
    if remote and entry.model.repo:
        parts = tuple(
            read_remote_header(entry.model.repo, f.name, revision=entry.model.revision, file_size=f.size, token=token)
            for f in entry.quant.files
        )
        shape = ModelShape.from_gguf(GGUFModel(parts), label)
        _store_shape(entry, shape)
        return shape
    arch = entry.model.architecture
    return ModelShape.from_architecture(
        label,
        n_layer=arch.n_layer,
        n_embd=arch.n_embd,
        n_head=arch.n_head,
        n_head_kv=arch.n_head_kv,
        n_ff=arch.n_ff,
        n_expert=arch.n_expert,
        n_expert_used=arch.n_expert_used,
        n_vocab=arch.n_vocab,
        file_size=entry.quant.size,
    )


def _shape_cache_path(entry: CatalogEntry) -> Path:
    safe = entry.id.replace(":", "__").replace("/", "_")
    return paths.cache_dir() / SHAPE_CACHE_DIR / f"{safe}.json"


def _cached_shape(entry: CatalogEntry) -> ModelShape | None:
    data = read_json_dict(_shape_cache_path(entry))
    if not data:
        return None
    try:
        fields = {
            **data,
            "layer_bytes": tuple(data["layer_bytes"]),
            "layer_active_bytes": tuple(data["layer_active_bytes"]),
            "layer_expert_bytes": tuple(data["layer_expert_bytes"]),  # absent from caches before expert placement
        }
        return ModelShape(**fields)
    except (KeyError, TypeError):
        return None


def _store_shape(entry: CatalogEntry, shape: ModelShape) -> None:
    write_json_atomic(_shape_cache_path(entry), asdict(shape))
