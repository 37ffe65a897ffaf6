"""`mixtral-desk plan`: will a model fit on this (or an assumed) machine, and how fast will it run?"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.cli.format import parse_size, plan_report, short_verdict, size_label, speed, table
from app.cli.options import add_cpu_moe_option, add_rpc_option
from app.core.errors import DeskError
from app.core.models import catalog
from app.core.models.gguf import GGUFError
from app.core.planning.fit import WhatIf, advise, device_for, plan_entry, plan_file
from app.core.planning.planner import PlanSettings, check_kv_settings
from app.core.runtime.types import KV_CACHE_TYPES, LoadSettings


def add_planning_options(parser: argparse.ArgumentParser) -> None:
    """Context and KV options, and the what-if machine."""
    group = parser.add_argument_group("settings")
    group.add_argument("--ctx", type=int, default=4096, metavar="N", help="context length (default 4096)")
    group.add_argument("--kv", choices=sorted(KV_CACHE_TYPES), default="f16", help="KV cache type")
    group.add_argument(
        "--flash-attn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="plan with flash attention (default on)",
    )
    group.add_argument(
        "--parallel",
        type=int,
        default=LoadSettings.n_parallel,
        metavar="N",
        help=f"conversations served at once, each with its own context (default {LoadSettings.n_parallel}: "
        "the chat and one API client; `serve --parallel`)",
    )
    group.add_argument("--gpu-layers", type=int, default=None, metavar="N", help="plan this many GPU layers (-1 = all)")
    add_cpu_moe_option(group)
    what_if = parser.add_argument_group("what-if machine (plan before you buy)")
    what_if.add_argument("--assume-vram", metavar="SIZE", help="GPU memory, e.g. 24GiB")
    what_if.add_argument("--assume-ram", metavar="SIZE", help="system RAM, e.g. 64GiB")
    what_if.add_argument("--assume-backend", choices=["cuda", "metal", "cpu"], help="GPU backend")
    what_if.add_argument("--assume-gpu", metavar="NAME", default="", help="GPU name for its bandwidth, e.g. 'RTX 4090'")
    add_rpc_option(parser)


def planning_inputs(args: argparse.Namespace) -> tuple[Any, PlanSettings]:
    what_if = WhatIf(
        vram_bytes=parse_size(args.assume_vram) if args.assume_vram else None,
        ram_bytes=parse_size(args.assume_ram) if args.assume_ram else None,
        backend=args.assume_backend,
        gpu_name=args.assume_gpu,
    )
    if args.ctx < 64:
        raise DeskError("The context must be at least 64 tokens.")
    check_kv_settings(args.kv, args.flash_attn)
    if args.parallel < 1:
        raise DeskError("--parallel must be at least 1.")
    settings = PlanSettings(
        n_ctx=args.ctx,
        kv_type=args.kv,
        flash_attn=args.flash_attn,
        gpu_layers=args.gpu_layers,
        n_parallel=args.parallel,
        cpu_moe=args.cpu_moe,
    )
    workers = []
    if getattr(args, "rpc", ()):
        from app.core.planning.rpc_workers import probe_worker

        workers = [probe_worker(endpoint) for endpoint in args.rpc]
    return device_for(what_if, workers=workers), settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "plan",
        help="will a model fit, how many GPU layers, how fast",
        description="Plan memory for a GGUF file or a catalog model: GPU layers, GPU and RAM use broken down "
        "(weights, KV cache, compute buffers, reserve), a verdict and an expected decode speed. Without --quant, "
        "every quantization of a catalog model is planned and the best one for this machine is marked.",
    )
    parser.add_argument("model", metavar="MODEL|PATH", help="a catalog model id (see `models list`) or a .gguf path")
    parser.add_argument("--quant", metavar="Q", help="one quantization, e.g. Q4_K_M")
    parser.add_argument("--remote", action="store_true", help="read GGUF headers from the hub for exact figures")
    parser.add_argument("--json", action="store_true", help="print as JSON")
    add_planning_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device, settings = planning_inputs(args)
    path = Path(args.model).expanduser()
    if path.suffix == ".gguf" or path.exists():
        if not path.is_file():
            raise DeskError(f"Model file not found: {path}.")
        from app.core.runtime.loading import simulate_memory

        # a file llama.cpp would refuse gets its defect named, not a plan; one it accepts gets llama.cpp's own
        # KV and compute figures (a load that allocates nothing)
        simulated = simulate_memory(path, settings)
        try:
            plan = plan_file(path, device, settings, from_llama_cpp=simulated)
        except GGUFError as err:
            raise DeskError(str(err)) from err
        print(json.dumps(plan.to_json(), indent=2) if args.json else plan_report(plan))
        return 0
    if args.quant:
        item = catalog.entry(args.model, args.quant)
        plan = plan_entry(item, device, settings, remote=args.remote)
        print(json.dumps(plan.to_json(), indent=2) if args.json else plan_report(plan))
        return 0
    advice = advise(catalog.find_model(args.model), device, settings, remote=args.remote)
    if args.json:
        payload = {
            "model": advice.model.id,
            "device": device.name,
            "recommended": advice.recommended.id if advice.recommended else None,
            "plans": [{"entry": item.to_json(), "plan": plan.to_json()} for item, plan in advice.plans],
        }
        print(json.dumps(payload, indent=2))
        return 0
    rows = []
    for item, plan in advice.plans:
        mark = "<- recommended" if advice.recommended and item.id == advice.recommended.id else ""
        rows.append([item.quant.quant, size_label(item.quant), short_verdict(plan), speed(plan), plan.source, mark])
    print(f"{advice.model.name} on {device.name}, context {settings.n_ctx}, KV {settings.kv_type}")
    print(table(rows, ["quant", "size", "fits", "speed", "figures", ""]))
    if advice.recommended is None:
        print("Nothing fits this machine at this context; try a smaller context or a quantized KV cache.")
    return 0
