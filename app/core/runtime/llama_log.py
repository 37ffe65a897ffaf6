"""llama.cpp's log, captured in process instead of printed to stderr.

llama.cpp reports load failures, buffer sizes and warnings only through its log callback. We install one
callback for the whole process that keeps the recent lines, so errors can quote llama.cpp's own reason and
the planner can read the buffer sizes it reports. Set ``MIXTRAL_DESK_LLAMA_LOG=1`` to also echo the log.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

_lock = threading.RLock()
_recent: collections.deque[str] = collections.deque(maxlen=400)
_captures: list[list[str]] = []
_partial = ""
_callback: Any = None  # keeps the ctypes callback alive for the life of the process


def _on_log(level: int, text: bytes | None, user_data: Any) -> None:
    global _partial
    if not text:
        return
    chunk = text.decode("utf-8", errors="replace")
    if os.environ.get("MIXTRAL_DESK_LLAMA_LOG"):
        sys.stderr.write(chunk)
    with _lock:
        _partial += chunk
        *lines, _partial = _partial.split("\n")
        for line in lines:
            _recent.append(line)
            for capture in _captures:
                capture.append(line)


def install() -> None:
    """Route llama.cpp's log into this module (idempotent)."""
    global _callback
    if _callback is not None:
        return
    import llama_cpp

    _callback = llama_cpp.llama_log_callback(_on_log)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


class _Listener(list[str]):
    """A capture list that also calls ``on_line`` for each line as it arrives."""

    def __init__(self, on_line: Callable[[str], None] | None) -> None:
        super().__init__()
        self._on_line = on_line

    def append(self, line: str) -> None:
        super().append(line)
        if self._on_line is not None:
            self._on_line(line)


@contextlib.contextmanager
def capture(on_line: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """Collect every complete log line written while the block runs; ``on_line`` hears each one at once."""
    install()
    lines: list[str] = _Listener(on_line)
    with _lock:
        _captures.append(lines)
    try:
        yield lines
    finally:
        with _lock:
            # by identity: two captures may hold equal lines
            _captures[:] = [c for c in _captures if c is not lines]


def recent(limit: int = 50) -> list[str]:
    """The last ``limit`` log lines."""
    with _lock:
        return list(_recent)[-limit:]
