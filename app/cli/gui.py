"""`mixtral-desk gui` (also what plain `mixtral-desk` does): open the desktop window."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "gui", help="open the desktop app (the default)", description="Open the Mixtral Desk window."
    )
    parser.add_argument("--model", metavar="PATH|ID", help="model to load (default: the last one, else the demo)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.gui.app import run as run_app

    return run_app(model=args.model)
