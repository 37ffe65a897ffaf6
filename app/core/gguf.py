"""GGUF header reading: metadata key/values from a local file, with hard limits on every count and length.

Bad input (wrong magic, truncated header, absurd counts or string lengths) raises :class:`GGUFError`
quickly, without reading or allocating more than the limits allow.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from app.core.errors import DeskError

MAGIC = b"GGUF"
MAX_KV_COUNT = 100_000
MAX_TENSOR_COUNT = 1_000_000
MAX_STRING_BYTES = 64 * 1024 * 1024  # chat templates are large, nothing legitimate comes close
MAX_ARRAY_ITEMS = 16 * 1024 * 1024  # vocabularies reach ~260k entries

# GGUF value types
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


class GGUFError(DeskError):
    """A file is not a readable GGUF."""


@dataclass(frozen=True)
class GGUFHeader:
    """Version, counts and scalar/string metadata of a GGUF file; arrays are kept as their lengths."""

    version: int
    tensor_count: int
    metadata: dict[str, object]
    array_lengths: dict[str, int]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_int(self, key: str, default: int = 0) -> int:
        """``{architecture}.{key}`` as an int (e.g. ``block_count``)."""
        value = self.metadata.get(f"{self.architecture}.{key}", default)
        return int(value) if isinstance(value, (int, float)) else default


class _Reader:
    def __init__(self, handle: BinaryIO, name: str) -> None:
        self._handle = handle
        self._name = name

    def read(self, size: int) -> bytes:
        data = self._handle.read(size)
        if len(data) != size:
            raise GGUFError(f"{self._name} is truncated: its GGUF header ends early. Download or copy it again.")
        return data

    def scalar(self, fmt: str) -> object:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.read(8))[0])

    def string(self) -> str:
        length = self.u64()
        if length > MAX_STRING_BYTES:
            raise GGUFError(f"{self._name} is corrupted: a header string claims {length} bytes.")
        return self.read(length).decode("utf-8", errors="replace")

    def skip(self, size: int) -> None:
        self._handle.seek(size, 1)


def read_header(path: Path) -> GGUFHeader:
    """Read the metadata of the GGUF at ``path`` (tensor infos are not read).

    Raises:
        GGUFError: not a GGUF, an unsupported version, truncated, or absurd counts/lengths.
    """
    name = path.name
    with path.open("rb") as handle:
        reader = _Reader(handle, name)
        if handle.read(4) != MAGIC:
            raise GGUFError(f"{name} is not a GGUF file.")
        version = int(reader.scalar("<I"))  # type: ignore[call-overload]
        if version not in (2, 3):
            raise GGUFError(f"{name} is GGUF version {version}; only versions 2 and 3 are supported.")
        tensor_count, kv_count = reader.u64(), reader.u64()
        if tensor_count > MAX_TENSOR_COUNT or kv_count > MAX_KV_COUNT:
            raise GGUFError(f"{name} is corrupted: its header claims {tensor_count} tensors and {kv_count} keys.")
        metadata: dict[str, object] = {}
        arrays: dict[str, int] = {}
        for _ in range(kv_count):
            key = reader.string()
            kind = int(reader.scalar("<I"))  # type: ignore[call-overload]
            if kind == _ARRAY:
                item_kind, count = int(reader.scalar("<I")), reader.u64()  # type: ignore[call-overload]
                if count > MAX_ARRAY_ITEMS:
                    raise GGUFError(f"{name} is corrupted: array {key!r} claims {count} items.")
                arrays[key] = count
                _skip_array(reader, item_kind, count, name)
            else:
                metadata[key] = _read_value(reader, kind, name)
    return GGUFHeader(version, tensor_count, metadata, arrays)


def _read_value(reader: _Reader, kind: int, name: str) -> object:
    if kind == _STRING:
        return reader.string()
    if kind in _SCALARS:
        return reader.scalar(_SCALARS[kind])
    raise GGUFError(f"{name} is corrupted: unknown GGUF value type {kind}.")


def _skip_array(reader: _Reader, kind: int, count: int, name: str) -> None:
    if kind in _SCALARS:
        reader.skip(struct.calcsize(_SCALARS[kind]) * count)
    elif kind == _STRING:
        for _ in range(count):
            length = reader.u64()
            if length > MAX_STRING_BYTES:
                raise GGUFError(f"{name} is corrupted: a header string claims {length} bytes.")
            reader.skip(length)
    else:
        raise GGUFError(f"{name} is corrupted: unsupported GGUF array type {kind}.")
