"""`mixtral-desk serve`: an OpenAI-compatible API for other apps, on this machine by default."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from app.cli.options import add_model_options, load_settings_from
from app.core.errors import DeskError

KEY_ENV = "MIXTRAL_DESK_API_KEY"


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve the model over an OpenAI-compatible HTTP API",
        description="Serve GET /v1/models, POST /v1/chat/completions (streaming or not), POST /v1/completions and "
        "GET /health. Binds to 127.0.0.1 unless --host says otherwise; --api-key makes every request need it. "
        "Up to --parallel requests are decoded together in one batch per step (continuous batching); each has its "
        "own --ctx tokens of KV cache (memory grows with N), a client resending a growing conversation reuses its "
        "cached prefix, and prompts pushed out of the KV cache are kept in RAM for when they return "
        "(--prompt-cache).",
    )
    add_model_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080)
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' (visible to other users in `ps`: prefer --api-key-file or {KEY_ENV})",
    )
    keys.add_argument("--api-key-file", type=Path, default=None, metavar="FILE", help="read the key from FILE")
    parser.add_argument("--model-id", default=None, help="the name clients use (default: the file name)")
    parser.add_argument(
        "--any-model-name",
        action="store_true",
        help="answer whatever model name a client asks for (for clients that send a fixed one, e.g. gpt-4o-mini)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let a browser page from ORIGIN (e.g. http://localhost:3000, or *) call the API; off by default",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=4,
        metavar="N",
        help="decode up to N requests together in one batch (default 4)",
    )
    parser.set_defaults(func=run, seed=None)


def _api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key, --api-key-file or the environment (in that order), or None."""
    if args.api_key:
        return str(args.api_key)
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise DeskError(f"Cannot read the API key file {args.api_key_file}: {err.strerror or err}.") from err
        if not key:
            raise DeskError(f"The API key file {args.api_key_file} is empty.")
        return key
    return os.environ.get(KEY_ENV) or None


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from app.core.runtime.host import EngineHost
    from app.server.run import serve_forever

    api_key = _api_key(args)
    settings = replace(load_settings_from(args), n_parallel=max(1, args.parallel))
    engine = EngineHost()
    info = engine.load(settings)
    model_id = args.model_id or Path(info.path).stem
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(
            "warning: serving beyond this machine without --api-key; anyone who can reach it can use it.",
            file=sys.stderr,
        )
    print(f"Serving {model_id} at http://{args.host}:{args.port}/v1 (Ctrl-C stops)", file=sys.stderr)
    try:
        serve_forever(
            engine,
            model_id,
            host=args.host,
            port=args.port,
            api_key=api_key,
            cors_origins=tuple(args.cors_origin),
            any_model_name=args.any_model_name,
        )
    finally:
        engine.close()
    return 0
