"""`mixtral-desk rpc-worker`: lend this machine's memory and CPU to Mixtral Desk (or llama.cpp) on another one."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.cli.format import parse_size
from app.core.errors import DeskError
from app.core.planning.rpc_workers import DEFAULT_PORT

WARNING = (
    "warning: llama.cpp's RPC protocol has no authentication or encryption. Anyone who can reach this port can "
    "use this machine's memory and run computations on it. Bind to a private network only, never the internet."
)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "rpc-worker",
        help="serve this machine as an offload device (llama.cpp RPC)",
        description="Start a llama.cpp RPC worker: another machine running Mixtral Desk with --rpc HOST:PORT "
        "(or llama.cpp with --rpc) places model layers in this machine's memory and computes them here. "
        "Bound to 127.0.0.1 unless --host says otherwise. Runs until stopped (Ctrl-C).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--mem", type=parse_size, default=None, help="memory to offer, e.g. 8GiB (reported to clients and enforced)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for computing (default: cores)")
    parser.add_argument("--cache-dir", default=None, help="keep received weights here to skip sending them again")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.core.runtime.devices import serve_worker
    from app.core.runtime.loading import default_thread_counts

    if not 0 < args.port < 65536:
        raise DeskError(f"--port {args.port} is not a port; use 1-65535.")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(WARNING, file=sys.stderr)
    threads = args.threads or default_thread_counts()[0]
    sys.stdout.flush()
    serve_worker(args.host, args.port, threads=threads, memory_limit=args.mem, cache_dir=args.cache_dir)
    return 0
