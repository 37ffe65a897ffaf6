"""Short human-readable texts for figures, shared by the CLI and the GUI."""

from __future__ import annotations

from app.core.planning.planner import VERDICT_CPU, VERDICT_FULL, VERDICT_PARTIAL, MemoryPlan
from models_manifest import CatalogQuant


def human_bytes(count: int | float) -> str:
    """1.5 GiB, 640 MiB, 12 KiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit in ("B", "KiB", "MiB") else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def size_label(quant: CatalogQuant) -> str:
    """``28.4 GiB``, or ``26.5 GiB (computed)`` until the hub has confirmed it; an unconfirmed file name says so."""
    text = human_bytes(quant.size) + ("" if quant.size_exact else " (computed)")
    return text if quant.name_verified else f"{text}, file name not verified"


def short_verdict(plan: MemoryPlan) -> str:
    """``full GPU``, ``29/33 on GPU``, ``GPU, experts of 6 in RAM``, ``CPU only`` or ``too big``; with RPC
    workers ``fits this PC + 1 worker``, ``29/33 on GPU + 1 worker``."""
    workers = sum(1 for p in plan.placements if p.endpoint and p.layers)
    on_gpu = any(not p.endpoint and p.layers for p in plan.placements) or (not plan.placements and plan.gpu_layers)
    where = " + ".join(
        (["GPU"] if on_gpu else []) + ([f"{workers} worker{'s' if workers > 1 else ''}"] if workers else [])
    )
    if plan.verdict == VERDICT_FULL:
        return f"fits this PC + {where.removeprefix('GPU + ')}" if workers else "full GPU"
    if plan.verdict == VERDICT_PARTIAL and plan.experts_in_ram:
        return f"{where}, experts of {plan.experts_in_ram} in RAM"
    if plan.verdict == VERDICT_PARTIAL:
        return f"{plan.gpu_layers}/{plan.full_offload_layers} on {where}"
    if plan.verdict == VERDICT_CPU:
        return "CPU only"
    return "too big"


def speed(plan: MemoryPlan) -> str:
    if plan.decode_tokens_per_s <= 0:
        return "-"
    value = plan.decode_tokens_per_s
    return f"~{value:.0f} tok/s" if value >= 10 else f"~{value:.1f} tok/s"
