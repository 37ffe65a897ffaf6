"""`mixtral-desk` entry point: global options and the subcommand table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app import APP_NAME, __version__
from app.core.errors import DeskError

COMMAND_MODULES = (
    "app.cli.gui",
    "app.cli.chat",
    "app.cli.prompt",
    "app.cli.hw",
    "app.cli.plan",
    "app.cli.models",
    "app.cli.bench",
    "app.cli.serve",
    "app.cli.route",
    "app.cli.rpc_worker",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every command group registered."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="mixtral-desk",
        description=f"{APP_NAME}: run Mixtral 8x7B / 8x22B on your own machine, offline.",
    )
    parser.add_argument("--version", action="version", version=f"mixtral-desk {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from app.core.storage import paths
    from app.core.storage.settings import load_settings

    paths.set_models_dir(load_settings().settings.models_dir)  # the user's models folder, as in the app
    if not getattr(args, "func", None):  # no command: open the desktop app
        from app.cli.gui import run as run_gui

        args.model = None
        args.func = run_gui
    try:
        return int(args.func(args) or 0)
    except DeskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
