"""GGUF headers: metadata and the tensor table, from a local file, all parts of a split model, or a remote
file on the Hugging Face Hub read by HTTP range requests (the header only, never the weights).

Bad input (wrong magic, truncated, absurd counts or lengths) raises :class:`GGUFError` quickly, without
reading or allocating more than fixed limits allow.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import BinaryIO

from app.core.errors import DeskError

MAGIC = b"GGUF"
MAX_KV_COUNT = 100_000
MAX_TENSOR_COUNT = 1_000_000
MAX_STRING_BYTES = 64 * 1024 * 1024  # chat templates are large; nothing legitimate comes close
MAX_ARRAY_ITEMS = 16 * 1024 * 1024  # vocabularies reach ~260k entries
MAX_DIMS = 4
MAX_REMOTE_HEADER_BYTES = 64 * 1024 * 1024
REMOTE_BLOCK = 1024 * 1024
DEFAULT_ALIGNMENT = 32

_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
SPLIT_PART = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_EXPERT_TENSOR = re.compile(r"^blk\.\d+\.ffn_(gate|down|up)(_exps|\.\d+)\.weight$")
_LAYER = re.compile(r"^blk\.(\d+)\.")


class GGUFError(DeskError):
    """A file is not a readable GGUF (the message says why and what to do)."""


@functools.cache
def _ggml_constants() -> ModuleType:
    """The ``gguf`` package's ``constants`` module (ggml type ids and block sizes) on its own.

    Importing the package runs all of it, vocab included, which imports mistral-common, numpy and pydantic:
    a third of a second and ~80,000 objects for the GUI's garbage collector to walk, when reading a header
    needs only this table."""
    loaded = sys.modules.get("gguf.constants")
    if loaded is not None:
        return loaded
    package = importlib.util.find_spec("gguf")  # finds the package without running it
    if package is None:
        raise GGUFError("The gguf package is missing: reinstall Mixtral Desk.")
    folders = package.submodule_search_locations or []
    path = Path(next(iter(folders), "")) / "constants.py"
    spec = importlib.util.spec_from_file_location("app.core.models._gguf_constants", path)
    if not path.is_file() or spec is None or spec.loader is None:  # a bundle keeps modules in its archive
        import gguf.constants

        return gguf.constants
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _type_sizes() -> dict[int, tuple[int, int]]:
    sizes = _ggml_constants().GGML_QUANT_SIZES
    return {int(kind): (int(block), int(size)) for kind, (block, size) in sizes.items()}


def ggml_type_name(kind: int) -> str:
    """``Q4_K``, ``F16``... for a ggml type id."""
    try:
        return str(_ggml_constants().GGMLQuantizationType(kind).name)
    except ValueError:
        return f"type{kind}"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the table: name, ggml type, shape (ggml order) and size in bytes."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.ggml_type)

    @property
    def layer(self) -> int | None:
        """The block index for ``blk.N.*`` tensors, else None (embeddings, output)."""
        match = _LAYER.match(self.name)
        return int(match.group(1)) if match else None

    @property
    def is_expert(self) -> bool:
        """An expert FFN matrix: merged ``ffn_*_exps`` or the older per-expert ``ffn_*.E`` layout."""
        return bool(_EXPERT_TENSOR.match(self.name))

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "type": self.type_name, "shape": list(self.shape), "bytes": self.nbytes}


@dataclass(frozen=True)
class GGUFHeader:
    """One GGUF file's header: version, metadata (arrays kept as lengths) and tensor table."""

    version: int
    tensor_count: int
    metadata: dict[str, object]
    array_lengths: dict[str, int]
    tensors: tuple[TensorInfo, ...] = ()
    data_offset: int = 0
    file_size: int | None = None

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_int(self, key: str, default: int = 0) -> int:
        """``{architecture}.{key}`` as an int (e.g. ``block_count``)."""
        value = self.metadata.get(f"{self.architecture}.{key}", default)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    @property
    def data_bytes(self) -> int:
        return max((t.offset + t.nbytes for t in self.tensors), default=0)


@dataclass(frozen=True)
class GGUFModel:
    """A whole model: the header of every part (one for an ordinary file) and the combined tensor table."""

    parts: tuple[GGUFHeader, ...]
    paths: tuple[str, ...] = field(default_factory=tuple)

    @property
    def header(self) -> GGUFHeader:
        """The first part's header, which carries the model metadata."""
        return self.parts[0]

    @property
    def metadata(self) -> dict[str, object]:
        return self.header.metadata

    @property
    def tensors(self) -> tuple[TensorInfo, ...]:
        return tuple(t for part in self.parts for t in part.tensors)

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def expert_layout(self) -> str:
        """``merged`` (``ffn_*_exps``), ``per-expert`` (older ``ffn_*.E``) or ``none`` (a dense model)."""
        names = [t.name for t in self.tensors if t.is_expert]
        if not names:
            return "none"
        return "merged" if any("_exps." in n for n in names) else "per-expert"


class _Source:
    """Sequential reads over a file or a remote byte range, with a clear error when it runs out."""

    def __init__(self, name: str, read_at: Callable[[int, int], bytes], size: int | None) -> None:
        self.name = name
        self._read_at = read_at
        self.size = size
        self.pos = 0
        self._buffer = b""
        self._buffer_start = 0

    def read(self, count: int) -> bytes:
        end = self.pos + count
        if self.size is not None and end > self.size:
            raise GGUFError(f"{self.name} is truncated: its GGUF header ends early. Download or copy it again.")
        if not (self._buffer_start <= self.pos and end <= self._buffer_start + len(self._buffer)):
            self._buffer_start = self.pos
            self._buffer = self._read_at(self.pos, max(count, REMOTE_BLOCK))
        start = self.pos - self._buffer_start
        data = self._buffer[start : start + count]
        if len(data) != count:
            raise GGUFError(f"{self.name} is truncated: its GGUF header ends early. Download or copy it again.")
        self.pos = end
        return data

    def skip(self, count: int) -> None:
        self.pos += count
        if self.size is not None and self.pos > self.size:
            raise GGUFError(f"{self.name} is truncated: its GGUF header ends early. Download or copy it again.")

    def scalar(self, fmt: str) -> object:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def u32(self) -> int:
        return int(struct.unpack("<I", self.read(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.read(8))[0])

    def string(self) -> str:
        length = self.u64()
        if length > MAX_STRING_BYTES:
            raise GGUFError(f"{self.name} is corrupted: a header string claims {length} bytes.")
        return self.read(length).decode("utf-8", errors="replace")


def _parse(source: _Source) -> GGUFHeader:
    name = source.name
    if source.read(4) != MAGIC:
        raise GGUFError(f"{name} is not a GGUF file.")
    version = source.u32()
    if version not in (2, 3):
        raise GGUFError(f"{name} is GGUF version {version}; only versions 2 and 3 are supported.")
    tensor_count, kv_count = source.u64(), source.u64()
    if tensor_count > MAX_TENSOR_COUNT or kv_count > MAX_KV_COUNT:
        raise GGUFError(f"{name} is corrupted: its header claims {tensor_count} tensors and {kv_count} keys.")
    metadata: dict[str, object] = {}
    arrays: dict[str, int] = {}
    for _ in range(kv_count):
        key = source.string()
        kind = source.u32()
        if kind == _ARRAY:
            item_kind, count = source.u32(), source.u64()
            if count > MAX_ARRAY_ITEMS:
                raise GGUFError(f"{name} is corrupted: array {key!r} claims {count} items.")
            arrays[key] = count
            _skip_array(source, item_kind, count)
        else:
            metadata[key] = _read_value(source, kind)
    sizes = _type_sizes()
    tensors = []
    for _ in range(tensor_count):
        tensor_name = source.string()
        n_dims = source.u32()
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(f"{name} is corrupted: tensor {tensor_name!r} has {n_dims} dimensions.")
        shape = tuple(source.u64() for _ in range(n_dims))
        kind, offset = source.u32(), source.u64()
        if kind not in sizes:
            raise GGUFError(f"{name} uses tensor type {kind}, which this version does not know; update the app.")
        elements = 1
        for dim in shape:
            elements *= dim
        block, type_size = sizes[kind]
        if elements > 2**48 or elements % block:
            raise GGUFError(f"{name} is corrupted: tensor {tensor_name!r} has an impossible shape {shape}.")
        tensors.append(TensorInfo(tensor_name, kind, shape, offset, elements // block * type_size))
    alignment_value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    alignment = int(alignment_value) if isinstance(alignment_value, int) and alignment_value > 0 else DEFAULT_ALIGNMENT
    data_offset = -(-source.pos // alignment) * alignment
    header = GGUFHeader(version, tensor_count, metadata, arrays, tuple(tensors), data_offset, source.size)
    if source.size is not None and data_offset + header.data_bytes > source.size:
        raise GGUFError(
            f"{name} is incomplete: its header describes {data_offset + header.data_bytes} bytes but the file has "
            f"only {source.size}. Delete it and download it again."
        )
    return header


def _read_value(source: _Source, kind: int) -> object:
    if kind == _STRING:
        return source.string()
    if kind in _SCALARS:
        return source.scalar(_SCALARS[kind])
    raise GGUFError(f"{source.name} is corrupted: unknown GGUF value type {kind}.")


def _skip_array(source: _Source, kind: int, count: int) -> None:
    if kind in _SCALARS:
        source.skip(struct.calcsize(_SCALARS[kind]) * count)
    elif kind == _STRING:
        for _ in range(count):
            length = source.u64()
            if length > MAX_STRING_BYTES:
                raise GGUFError(f"{source.name} is corrupted: a header string claims {length} bytes.")
            source.skip(length)
    else:
        raise GGUFError(f"{source.name} is corrupted: unsupported GGUF array type {kind}.")


def read_header(path: Path) -> GGUFHeader:
    """Read the header and tensor table of one local GGUF file, checking the data fits in the file.

    Raises:
        GGUFError: not a GGUF, an unsupported version, truncated, or absurd counts/lengths.
    """
    with path.open("rb") as handle:
        return _parse(_Source(path.name, _file_reader(handle), path.stat().st_size))


def _file_reader(handle: BinaryIO) -> Callable[[int, int], bytes]:
    def read_at(offset: int, count: int) -> bytes:
        handle.seek(offset)
        return handle.read(count)

    return read_at


def split_part_paths(path: Path, count: int) -> list[Path]:
    """All part paths of a split model, given any one part."""
    match = SPLIT_PART.match(path.name)
    if not match:
        raise GGUFError(
            f"{path.name} says it is one of {count} parts, but its name has no -0000N-of-0000M part number."
        )
    stem = match.group("stem")
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def read_model(path: Path) -> GGUFModel:
    """Read a local model: one file, or every part of a split model (given any part).

    Raises:
        GGUFError: a bad or missing part, naming it.
    """
    first = read_header(path)
    count_value = first.metadata.get("split.count", 1)
    count = int(count_value) if isinstance(count_value, int) else 1
    if count <= 1:
        return GGUFModel((first,), (str(path),))
    parts = []
    paths = split_part_paths(path, count)
    for part_path in paths:
        if not part_path.is_file():
            raise GGUFError(f"Part {part_path.name} of this split model is missing; download every part.")
        parts.append(first if part_path == path else read_header(part_path))
    parts.sort(key=lambda h: int(h.metadata.get("split.no", 0)))  # type: ignore[call-overload]
    return GGUFModel(tuple(parts), tuple(str(p) for p in paths))


def read_remote_header(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    file_size: int | None = None,
    token: str | None = None,
) -> GGUFHeader:
    """Read the header of a GGUF on the Hugging Face Hub (``HF_ENDPOINT`` respected) with range requests.

    Only the header bytes are fetched, in 1 MiB blocks and never more than 64 MiB.
    """
    from huggingface_hub import get_session, hf_hub_url
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    url = hf_hub_url(repo_id, filename, revision=revision)
    session = get_session()
    headers = build_hf_headers(token=token)
    fetched = 0

    def read_at(offset: int, count: int) -> bytes:
        nonlocal fetched
        if offset + count > MAX_REMOTE_HEADER_BYTES:
            count = MAX_REMOTE_HEADER_BYTES - offset
            if count <= 0:
                raise GGUFError(f"{filename}: the GGUF header is larger than {MAX_REMOTE_HEADER_BYTES} bytes.")
        request_headers = {**headers, "Range": f"bytes={offset}-{offset + count - 1}"}
        with session.stream("GET", url, headers=request_headers, follow_redirects=True) as response:
            if response.status_code in (401, 403):
                raise GGUFError(f"{repo_id} needs a Hugging Face token (set HF_TOKEN) to read {filename}.")
            if response.status_code == 404:
                raise GGUFError(f"{filename} was not found in {repo_id}.")
            if response.status_code not in (200, 206):
                raise GGUFError(f"The hub answered {response.status_code} for {repo_id}/{filename}.")
            if response.status_code == 206:
                body = response.read()
            else:  # the server ignored Range: read only as far as needed, then hang up
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) >= offset + count:
                        break
                body = bytes(data[offset : offset + count])
        fetched += len(body)
        return bytes(body)

    return _parse(_Source(filename, read_at, file_size))
