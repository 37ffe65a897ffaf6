"""`mixtral-desk models`: the catalog, what is installed, and what fits this machine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.cli.format import human_bytes, short_verdict, size_label, speed, table
from app.cli.plan import add_planning_options, planning_inputs
from app.core.errors import DeskError
from app.core.models import catalog
from app.core.planning.fit import plan_entry


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
    listing.add_argument(
        "--all", action="store_true", help="also files in the old per-expert layout that llama.cpp cannot load"
    )
    add_planning_options(listing)
    listing.set_defaults(func=run_list)

    download = group.add_parser(
        "download",
        help="download a catalog model (all its parts) or OWNER/REPO/FILE.gguf, resumably and verified",
        description="Download into the models folder. Progress shows speed and time left; Ctrl-C pauses and "
        "keeps what was fetched (run the same command to resume, also after a restart). Files appear only "
        "when complete and their sha256 checks out. Without --quant, the best quantization for this machine "
        "is chosen.",
    )
    download.add_argument("model", metavar="ID|OWNER/REPO/FILE", help="e.g. mixtral-8x7b-instruct:Q4_K_M")
    download.add_argument("--quant", metavar="Q", help="quantization, e.g. Q4_K_M")
    download.add_argument("--revision", metavar="REV", help="for OWNER/REPO/FILE: a branch, tag or commit")
    download.add_argument(
        "--connections",
        type=int,
        metavar="N",
        help="parallel byte ranges per file, 1-16 (default: the settings' value, 4)",
    )
    download.set_defaults(func=run_download)

    remove = group.add_parser("remove", help="delete a downloaded model (or forget one used in place)")
    remove.add_argument("model", metavar="ID|PATH", help="catalog id with quant (ID:Q) or a file path")
    remove.set_defaults(func=run_remove)

    verify = group.add_parser("verify", help="re-check the sha256 of model files on disk")
    verify.add_argument("model", nargs="?", metavar="ID|PATH", help="one model (default: every installed model)")
    verify.set_defaults(func=run_verify)

    importing = group.add_parser(
        "import",
        help="add a local GGUF (copy, move or use in place)",
        description="Register a local GGUF after reading its header. --mode link uses it where it is (nothing "
        "copied); --scan lists models other apps (Hugging Face cache, LM Studio, Ollama) already downloaded.",
    )
    importing.add_argument("path", nargs="?", metavar="PATH", help="a .gguf file (the first part of a split model)")
    importing.add_argument("--mode", choices=["copy", "move", "link"], default="copy")
    importing.add_argument("--scan", action="store_true", help="list GGUF files in other apps' stores")
    importing.set_defaults(func=run_import)


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
        if not (item.model.loadable or item.installed or args.all):
            continue
        plan = plan_entry(item, device, settings)
        payload.append({**item.to_json(), "plan": plan.to_json()})
        size = size_label(item.quant)
        fits = short_verdict(plan) if item.model.loadable else "old layout"
        rows.append(
            [item.id, size, "installed" if item.installed else "-", fits, speed(plan) if item.model.loadable else "-"]
        )
    if args.json:
        print(json.dumps({"device": device.name, "settings": vars(settings), "models": payload}, indent=2))
        return 0
    print(f"For {device.name}, context {settings.n_ctx}, KV {settings.kv_type}:")
    print(table(rows, ["model", "size", "on disk", "fits", "speed"]))
    return 0


def _entry_for(text: str, quant: str | None) -> catalog.CatalogEntry | None:
    """A catalog entry for ``ID``, ``ID:Q`` or ``ID --quant Q``; None when ``text`` is not a catalog id."""
    model_id, _, inline_quant = text.partition(":")
    try:
        model = catalog.find_model(model_id)
    except DeskError:
        return None
    chosen = quant or inline_quant
    if not chosen:
        from app.core.planning.fit import advise, device_for
        from app.core.planning.planner import PlanSettings
        from app.core.runtime.types import LoadSettings

        advice = advise(model, device_for(), PlanSettings(n_parallel=LoadSettings.n_parallel))
        if advice.recommended is None:
            raise DeskError(f"No quantization of {model.name} fits this machine; see `mixtral-desk plan {model.id}`.")
        print(f"Choosing {advice.recommended.quant.quant}, the best fit for this machine.", file=sys.stderr)
        return advice.recommended
    return catalog.entry(model.id, chosen)


def run_download(args: argparse.Namespace) -> int:
    from app.core.models.downloads import (
        MAX_CONNECTIONS,
        Control,
        Downloader,
        DownloadError,
        spec_for_catalog_entry,
        spec_for_repo_file,
    )
    from app.core.storage.settings import load_settings

    item = _entry_for(args.model, args.quant)
    if item is not None and item.installed:
        print(f"{item.id} is already installed: {item.first_path}")
        return 0
    spec = spec_for_catalog_entry(item) if item is not None else spec_for_repo_file(args.model, args.revision)
    connections = load_settings().settings.download_connections if args.connections is None else args.connections
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise DeskError(f"--connections must be between 1 and {MAX_CONNECTIONS}.")
    control = Control()
    bar = _ProgressBar()
    import signal

    previous = signal.signal(signal.SIGINT, lambda signum, frame: control.pause())
    try:
        placed = Downloader(spec, on_progress=bar.update, control=control, connections=connections).run()
    except DownloadError as err:
        bar.close()
        if err.reason == "paused":
            print(f"Paused. What was fetched is kept; run the same command to resume {spec.id}.", file=sys.stderr)
            return 130
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    bar.close()
    for path in placed:
        print(path)
    return 0


class _ProgressBar:
    """A terminal progress line from download events (tqdm does the drawing)."""

    def __init__(self) -> None:
        self._bar = None
        self._shown = 0

    def update(self, progress: Any) -> None:
        from tqdm import tqdm

        if progress.state in ("downloading", "retrying") and progress.total:
            if self._bar is None:
                self._bar = tqdm(
                    total=progress.total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=progress.id,
                    initial=progress.done,
                    file=sys.stderr,
                )
                self._shown = progress.done
            self._bar.update(progress.done - self._shown)
            self._shown = progress.done
            if progress.state == "retrying":
                self._bar.write(f"  {progress.message}")
        elif progress.state == "verifying" and self._bar is not None:
            self._bar.set_postfix_str("verifying")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _paths_for(text: str) -> list[Path]:
    path = Path(text).expanduser()
    if path.exists():
        return [path]
    item = _entry_for(text, None) if ":" in text else None
    if item is None:
        raise DeskError(f"No installed model {text!r}: give ID:QUANT (see `models list`) or a file path.")
    if not item.installed:
        raise DeskError(f"{item.id} is not installed.")
    return [item.first_path]


def run_remove(args: argparse.Namespace) -> int:
    from app.core.models.local import remove_model

    for path in _paths_for(args.model):
        deleted = remove_model(path)
        print("\n".join(f"deleted {p}" for p in deleted) or f"forgot {path} (the file stays where it is)")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from app.core.models.local import installed_models, model_parts, verify_file

    targets = _paths_for(args.model) if args.model else installed_models()
    bad = 0
    for first in targets:
        for path in model_parts(first):
            result = verify_file(path)
            mark = {True: "ok", False: "DAMAGED", None: "unverified"}[result.ok]
            print(f"{mark:10} {path}  ({result.message})")
            bad += result.ok is False
    if not targets:
        print("No models installed.")
    return 1 if bad else 0


def run_import(args: argparse.Namespace) -> int:
    from app.core.models.local import import_model, scan_other_apps

    if args.scan:
        found = scan_other_apps()
        rows = [[f.app, f.name, human_bytes(f.size), str(f.path)] for f in found]
        print(table(rows, ["app", "model", "size", "path"]) if rows else "No GGUF files found in other apps' stores.")
        if rows:
            print("Use one in place with: mixtral-desk models import PATH --mode link")
        return 0
    if not args.path:
        raise DeskError("Give a PATH to import, or --scan to look for models other apps downloaded.")
    from app.core.runtime.loading import check_loadable

    placed = import_model(Path(args.path), args.mode, check=check_loadable)
    print(placed)
    return 0
