"""Command-line options shared by the commands that load a model or sample from it."""

from __future__ import annotations

import argparse
from typing import Any

from app.core.context import POLICIES, POLICY_ROLLING
from app.core.models.local import resolve_model
from app.core.prompts import FORMATS
from app.core.runtime.types import KV_CACHE_TYPES, LoadSettings, SamplingSettings


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --ctx, --gpu-layers, --flash-attn, --kv, --threads, --format."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        metavar="PATH|ID",
        help="GGUF file, a file name in the models folder, or 'demo' "
        "(default: the newest installed model, else the built-in demo model)",
    )
    group.add_argument("--ctx", type=int, default=4096, metavar="N", help="context length in tokens (default 4096)")
    group.add_argument(
        "--gpu-layers", type=int, default=None, metavar="N", help="whole layers to offload to the GPU; -1 = all"
    )
    add_cpu_moe_option(group)
    group.add_argument(
        "--flash-attn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="flash attention (default on, as llama.cpp; a quantized KV cache needs it)",
    )
    group.add_argument("--kv", choices=sorted(KV_CACHE_TYPES), default="f16", help="KV cache type (default f16)")
    group.add_argument(
        "--prompt-cache",
        type=mebibytes,
        default=None,
        metavar="MIB",
        help="RAM for conversations moved out of the KV cache, copied back when they return instead of "
        "evaluated again (default: a quarter of the RAM free beyond the model, at most 4096; 0 = off)",
    )
    group.add_argument(
        "--threads", type=int, default=None, metavar="N", help="CPU threads (default: llama.cpp's choice)"
    )
    group.add_argument(
        "--format", choices=FORMATS, default=None, help="prompt format (default: detected from the GGUF)"
    )
    add_rpc_option(group)


def _whole_number(text: str, what: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return int(text)


def mebibytes(text: str) -> int:
    """argparse type for a size in MiB: a whole number, 0 or more."""
    return _whole_number(text, "a size in MiB (a whole number, 0 or more)")


def layer_count(text: str) -> int:
    """argparse type for a count of layers: a whole number, 0 or more."""
    return _whole_number(text, "a number of layers (0 or more)")


def add_cpu_moe_option(group: Any) -> None:
    """--cpu-moe N: the experts of the first N layers in RAM, everything else offloaded."""
    group.add_argument(
        "--cpu-moe",
        type=layer_count,
        default=None,
        metavar="N",
        help="keep the experts of the first N layers in RAM and offload everything else (llama.cpp's "
        "--n-cpu-moe); 0 = whole layers only (default: the planner picks the faster way)",
    )


def worker_addresses(text: str) -> tuple[str, ...]:
    """argparse type for --rpc: comma-separated host:port addresses."""
    from app.core.planning.rpc_workers import RpcWorkerError, parse_endpoints

    try:
        return parse_endpoints(text)
    except RpcWorkerError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_rpc_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--rpc HOST:PORT[,HOST:PORT...]: llama.cpp RPC workers to offload layers to."""
    parser.add_argument(
        "--rpc",
        type=worker_addresses,
        default=(),
        metavar="HOST:PORT,...",
        help="llama.cpp RPC workers (`mixtral-desk rpc-worker` on another machine) to place layers on",
    )


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """Sampling and context-policy options."""
    defaults = SamplingSettings()
    group = parser.add_argument_group("sampling")
    group.add_argument("--temperature", type=float, default=defaults.temperature, metavar="T", help="0 = greedy")
    group.add_argument("--top-p", type=float, default=defaults.top_p, metavar="P")
    group.add_argument("--top-k", type=int, default=defaults.top_k, metavar="K")
    group.add_argument("--min-p", type=float, default=defaults.min_p, metavar="P")
    group.add_argument("--repeat-penalty", type=float, default=defaults.repeat_penalty, metavar="R")
    group.add_argument(
        "--max-tokens",
        type=int,
        default=defaults.max_new_tokens,
        metavar="N",
        help="reply length limit; 0 = until the context is full",
    )
    group.add_argument("--seed", type=int, default=None, metavar="N", help="sampling seed for reproducible replies")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    group.add_argument(
        "--context-policy",
        choices=POLICIES,
        default=POLICY_ROLLING,
        help="when the conversation outgrows the context: drop the oldest turns (rolling) or stop",
    )


def load_settings_from(args: argparse.Namespace, *, chat_format: str | None = None) -> LoadSettings:
    """LoadSettings for the options in ``args``; ``chat_format`` overrides --format."""
    return LoadSettings(
        model_path=str(resolve_model(args.model)),
        n_ctx=args.ctx,
        n_gpu_layers=args.gpu_layers,
        flash_attn=args.flash_attn,
        kv_type=args.kv,
        n_threads=args.threads,
        seed=args.seed,
        chat_format=chat_format or args.format,
        rpc_workers=tuple(getattr(args, "rpc", ())),
        cpu_moe=getattr(args, "cpu_moe", None),
        prompt_cache_mib=getattr(args, "prompt_cache", None),
    )


def sampling_from(args: argparse.Namespace) -> SamplingSettings:
    """SamplingSettings for the options in ``args``."""
    return SamplingSettings(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        max_new_tokens=args.max_tokens,
        seed=args.seed,
        stop=tuple(args.stop),
    )
