"""Human-readable figures and tables for the terminal."""

from __future__ import annotations

import re
from collections.abc import Sequence

from app.core.errors import DeskError
from app.core.planning.planner import MemoryPlan
from app.core.planning.text import human_bytes, short_verdict, size_label, speed

__all__ = ["human_bytes", "parse_size", "plan_report", "short_verdict", "size_label", "speed", "table"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """``24GiB``, ``24GB``, ``24G`` (= GiB), ``512MiB`` or plain bytes, as bytes."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise DeskError(f"Cannot read the size {text!r}; write it like 24GiB, 24GB or 512MiB.")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """A plain left-aligned text table."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in rows]
    return "\n".join(lines)


def plan_report(plan: MemoryPlan) -> str:
    """The full breakdown of one plan."""
    settings = plan.settings
    lines = [
        f"{plan.model} on {plan.device} ({plan.backend}), context {settings.n_ctx}"
        f"{f' x {settings.n_parallel} conversations' if settings.n_parallel > 1 else ''}, KV {settings.kv_type}"
        f"{', flash attention' if settings.flash_attn else ''} - {plan.source}",
        plan.summary(),
        "",
    ]
    rows = []
    sides = [p.memory for p in plan.placements] if plan.placements else [plan.gpu]
    headers = [p.device for p in plan.placements] if plan.placements else ["GPU"]
    for label, attr in (
        ("weights", "weights"),
        ("KV cache", "kv_cache"),
        ("compute", "compute"),
        ("reserve", "reserve"),
    ):
        rows.append(
            [label, *(human_bytes(getattr(side, attr)) for side in sides), human_bytes(getattr(plan.ram, attr))]
        )
    rows.append(["total", *(human_bytes(side.total) for side in sides), human_bytes(plan.ram.total)])
    lines.append(table(rows, ["", *headers, "RAM"]))
    if plan.notes:
        lines += ["", *(f"- {note}" for note in plan.notes)]
    return "\n".join(lines)
