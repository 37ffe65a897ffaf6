"""Files being downloaded: what of them is on disk, and the sha256 of what is known to be there.

Two shapes, both kept in a download's staging folder until the file is complete and verified:

- :class:`PartialFile` — one ``.part`` filled from the start by one connection, hashed as it grows;
- :class:`RangedPart` — a ``.part`` of the file's full (sparse) size filled at several offsets at once by
  parallel connections, with a ``.ranges`` sidecar that records, for each byte range, how far it is filled.
  The sidecar only ever claims bytes that were written before it was saved, so a killed process (kill -9)
  resumes each range from where its last record says. The file is hashed by following the contiguous filled
  prefix (:meth:`RangedPart.hash_up_to_frontier`), reading back bytes that are still in the page cache.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 1024 * 1024
HASH_STEP_BYTES = 8 * 1024 * 1024  # one read-back step: small enough to keep progress and pause responsive
SIDECAR_SUFFIX = ".ranges"


class DiskFullError(OSError):
    """The disk filled up while writing downloaded bytes."""


def _write_guard(err: OSError) -> OSError:
    return DiskFullError(err.errno, "no space left on the disk") if err.errno == errno.ENOSPC else err


class PartialFile:
    """A ``.part`` file and the sha256 of exactly the bytes in it, kept in step on every append."""

    def __init__(self, path: Path, expected_size: int | None) -> None:
        self.path = path
        self.hasher = hashlib.sha256()
        self.size = path.stat().st_size if path.exists() else 0
        if expected_size is not None and self.size > expected_size:
            self.restart()
        elif self.size:
            with path.open("rb") as existing:  # resumed after a restart: the hash must cover the old bytes
                for block in iter(lambda: existing.read(CHUNK_BYTES), b""):
                    self.hasher.update(block)

    def restart(self) -> None:
        self.path.unlink(missing_ok=True)
        self.hasher = hashlib.sha256()
        self.size = 0

    def append(self, handle: BinaryIO, chunk: bytes) -> None:
        try:
            handle.write(chunk)
        except OSError as err:
            raise _write_guard(err) from err
        self.hasher.update(chunk)
        self.size += len(chunk)

    def digest(self) -> str:
        return self.hasher.hexdigest()


class ByteRange:
    """``[start, end)`` of a file, filled up to ``next``."""

    __slots__ = ("end", "next", "start")

    def __init__(self, start: int, end: int, next_byte: int | None = None) -> None:
        self.start, self.end = start, end
        self.next = start if next_byte is None else next_byte

    @property
    def done(self) -> bool:
        return self.next >= self.end

    @property
    def filled(self) -> int:
        return self.next - self.start


def split_ranges(size: int, connections: int, min_range_bytes: int) -> list[ByteRange]:
    """``size`` bytes cut into at most ``connections`` ranges of at least ``min_range_bytes`` (the last may be
    shorter only when the file is)."""
    count = max(1, min(connections, size // max(1, min_range_bytes)))
    step = -(-size // count)
    return [ByteRange(start, min(start + step, size)) for start in range(0, size, step)]


class RangedPart:
    """A ``.part`` of the whole file's size, filled by range, with its ``.ranges`` record and a hash that
    follows the contiguous filled prefix. Thread-safe: connections :meth:`write` concurrently."""

    def __init__(self, path: Path, size: int, ranges: list[ByteRange]) -> None:
        self.path = path
        self.sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
        self.size = size
        self.ranges = ranges
        self._lock = threading.Lock()
        self.hasher = hashlib.sha256()
        self.hashed = 0
        # unbuffered handles (positioned writes under a lock, works everywhere): a write is in the page cache
        # when it returns, so the reader and a process started after a kill -9 see it
        self._writer: BinaryIO | None = open(path, "r+b" if path.exists() else "w+b", buffering=0)  # noqa: SIM115
        if os.fstat(self._writer.fileno()).st_size != size:
            self._writer.truncate(size)  # sparse where the file system allows: blocks are allocated as bytes arrive
        self._reader: BinaryIO | None = open(path, "rb", buffering=0)  # noqa: SIM115
        self._write_lock = threading.Lock()

    # -- creation ---------------------------------------------------------------------------------

    @classmethod
    def resume(cls, path: Path, size: int | None) -> RangedPart | None:
        """The ranged part recorded next to ``path``, or None when there is none. A record that does not fit
        (another size, an unknown size, ranges that do not add up) is deleted with its part, never trusted."""
        sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
        try:
            text = sidecar.read_text()
        except OSError:
            return None  # no record: a one-connection .part, if any, is left alone
        try:
            record = json.loads(text)
            ranges = [ByteRange(int(s), int(e), int(n)) for s, e, n in record["ranges"]]
            fits = size is not None and int(record["size"]) == size and path.exists()
            fits = fits and all(r.start <= r.next <= r.end for r in ranges) and not _gaps(ranges, size or 0)
        except (ValueError, KeyError, TypeError):
            fits = False
        if not fits:
            cls.drop(path)
            return None
        return cls(path, size or 0, ranges)

    @classmethod
    def create(cls, path: Path, size: int, connections: int, min_range_bytes: int) -> RangedPart:
        """A fresh ranged part (any old ``.part`` or record is dropped)."""
        path.unlink(missing_ok=True)
        path.with_name(path.name + SIDECAR_SUFFIX).unlink(missing_ok=True)
        part = cls(path, size, split_ranges(size, connections, min_range_bytes))
        part.save()
        return part

    @staticmethod
    def filled_bytes(path: Path) -> int | None:
        """Bytes a ranged part at ``path`` holds by its record; None when ``path`` has no record."""
        sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
        try:
            record = json.loads(sidecar.read_text())
            return sum(int(n) - int(s) for s, _e, n in record["ranges"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # -- filling ----------------------------------------------------------------------------------

    def write(self, index: int, data: bytes) -> int:
        """Write ``data`` at range ``index``'s next byte (cut at the range's end); returns bytes written."""
        byte_range = self.ranges[index]
        data = data[: byte_range.end - byte_range.next]
        assert self._writer is not None, "write after close"
        try:
            with self._write_lock:
                self._writer.seek(byte_range.next)
                view = memoryview(data)
                while view:  # a raw write may take fewer bytes than offered
                    view = view[self._writer.write(view) or 0 :]
        except OSError as err:
            raise _write_guard(err) from err
        with self._lock:
            byte_range.next += len(data)
        return len(data)

    @property
    def filled(self) -> int:
        with self._lock:
            return sum(r.filled for r in self.ranges)

    @property
    def complete(self) -> bool:
        with self._lock:
            return all(r.done for r in self.ranges)

    def frontier(self) -> int:
        """The end of the prefix of the file that is filled without a gap."""
        with self._lock:
            for byte_range in sorted(self.ranges, key=lambda r: r.start):
                if not byte_range.done:
                    return byte_range.next
        return self.size

    def save(self) -> None:
        """Record how far each range is filled (atomically: temp file + rename)."""
        with self._lock:
            record = {"size": self.size, "ranges": [[r.start, r.end, r.next] for r in self.ranges]}
        temp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        temp.write_text(json.dumps(record))
        os.replace(temp, self.sidecar)

    # -- hashing ----------------------------------------------------------------------------------

    def hash_up_to_frontier(self, limit: int = HASH_STEP_BYTES) -> int:
        """Hash up to ``limit`` more bytes of the filled prefix; returns how many were hashed."""
        end = min(self.frontier(), self.hashed + limit)
        start = self.hashed
        assert self._reader is not None, "hash after close"
        self._reader.seek(self.hashed)
        while self.hashed < end:
            block = self._reader.read(min(CHUNK_BYTES, end - self.hashed))
            if not block:
                raise OSError(f"{self.path} is shorter than its record says")
            self.hasher.update(block)
            self.hashed += len(block)
        return self.hashed - start

    def digest(self) -> str:
        """The file's sha256; only meaningful once every byte is hashed."""
        while self.hashed < self.size:
            if not self.hash_up_to_frontier():
                raise OSError(f"{self.path} is not complete")
        return self.hasher.hexdigest()

    def close(self) -> None:
        """Close the file (again is harmless); it must be closed before it is renamed on Windows."""
        for handle in (self._writer, self._reader):
            if handle is not None:
                handle.close()
        self._writer = self._reader = None

    def discard(self) -> None:
        """Close and delete the part and its record."""
        self.close()
        self.drop(self.path)

    @staticmethod
    def drop(path: Path) -> None:
        """Delete the part at ``path`` and its record."""
        path.unlink(missing_ok=True)
        path.with_name(path.name + SIDECAR_SUFFIX).unlink(missing_ok=True)


def _gaps(ranges: list[ByteRange], size: int) -> bool:
    position = 0
    for byte_range in sorted(ranges, key=lambda r: r.start):
        if byte_range.start != position:
            return True
        position = byte_range.end
    return position != size
