"""`mixtral-desk models`: the catalog, what is installed, and what fits this machine."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from app.cli.format import human_bytes, short_verdict, speed, table
from app.cli.plan import add_planning_options, planning_inputs
from app.core import catalog
from app.core.errors import DeskError
from app.core.fit import plan_entry


def register(commands: Any) -> None:
    parser = commands.add_parser("models", help="list catalog models, their sizes and what fits here")
    group = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = group.add_parser(
        "list",
        help="every catalog model and quantization with size, local status and the verdict for this machine",
        description="Every catalog entry with its size, whether it is on disk, and whether it fits this machine "
        "(fully on the GPU, partly, CPU only, or not at all) with an expected speed. Works offline; --refresh asks "
        "the hub for exact sizes and hashes first.",
    )
    listing.add_argument("--json", action="store_true", help="print as JSON")
    listing.add_argument("--refresh", action="store_true", help="fetch file sizes and sha256 from the hub first")
    add_planning_options(listing)
    listing.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    if args.refresh:
        for model in catalog.catalog():
            if model.repo:
                try:
                    catalog.refresh_from_hub(model)
                except DeskError as err:
                    print(f"note: {err}", file=sys.stderr)
    device, settings = planning_inputs(args)
    rows, payload = [], []
    for item in catalog.entries():
        plan = plan_entry(item, device, settings)
        payload.append({**item.to_json(), "plan": plan.to_json()})
        size = human_bytes(item.quant.size) + ("" if item.quant.size_exact else " (est.)")
        fits = short_verdict(plan) if item.model.loadable else "old layout"
        rows.append([item.id, size, "installed" if item.installed else "-", fits, speed(plan)])
    if args.json:
        print(json.dumps({"device": device.name, "settings": vars(settings), "models": payload}, indent=2))
        return 0
    print(f"For {device.name}, context {settings.n_ctx}, KV {settings.kv_type}:")
    print(table(rows, ["model", "size", "on disk", "fits", "speed"]))
    return 0
