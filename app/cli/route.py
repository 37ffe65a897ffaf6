"""`mixtral-desk route`: which experts Mixtral's router picks, per layer and per token."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.cli.format import table
from app.core.prompts import Message
from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "route",
        help="show which experts the router chooses for each token and layer",
        description="Trace a prompt and a short reply through a mixture-of-experts model and report, per layer, how "
        "often each expert was chosen (with entropy, max/min share and unused experts) and, per token, its experts.",
    )
    parser.add_argument("--model", metavar="PATH|ID", help="an MoE GGUF (default: the newest installed model)")
    parser.add_argument("--prompt", required=True, help="the user message (or text, with --raw)")
    parser.add_argument("--raw", action="store_true", help="trace the text as is, without the chat template")
    parser.add_argument("--generate", type=int, default=16, help="reply tokens to trace (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="0 = greedy; another number samples with that seed")
    parser.add_argument("--tokens", action="store_true", help="also list every token's experts")
    parser.add_argument("--compare-speed", action="store_true", help="measure generation speed without tracing too")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--png", metavar="FILE", help="save a layers x experts heatmap")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.core.models.local import resolve_model
    from app.core.prompts import FORMAT_PLAIN
    from app.core.runtime.routing import trace_routing

    engine = EngineHost()
    engine.load(
        LoadSettings(
            model_path=str(resolve_model(args.model)), n_ctx=1024, chat_format=FORMAT_PLAIN if args.raw else None
        )
    )
    tokens = engine.prompt_tokens([Message("user", args.prompt)])
    trace = trace_routing(engine, tokens, generate=args.generate, seed=args.seed)
    payload = trace.to_json()
    if args.compare_speed:
        from app.core.runtime.bench import measure_speed

        plain = measure_speed(engine, len(tokens), max(2, args.generate))
        traced = sum(1 for t in trace.tokens if not t.in_prompt)
        payload["speed"] = {
            "without_tracing_tokens_per_s": round(plain.generation_tokens_per_s, 2),
            "with_tracing_tokens_per_s": round((len(trace.tokens)) / trace.seconds, 2),
            "note": "with tracing: prompt and reply tokens through the traced context",
        }
        payload["speed"]["traced_reply_tokens"] = traced
    if args.png:
        from app.core.charts import heatmap_png

        shares = [list(b.shares) for b in trace.balance()]
        heatmap_png(Path(args.png), f"Share of routed tokens per expert ({len(trace.tokens)} tokens)", shares)
        print(f"heatmap: {args.png}", file=sys.stderr)
    if args.json:
        print(json.dumps(payload, indent=1))
        return 0
    rows = [
        [
            str(b.layer),
            " ".join(f"{s:4.0%}" for s in b.shares),
            f"{b.entropy_bits:.2f}",
            f"{b.max_share:.0%}/{b.min_share:.0%}",
            ",".join(map(str, b.unused)) or "-",
        ]
        for b in trace.balance()
    ]
    print(
        f"{len(trace.tokens)} tokens ({sum(t.in_prompt for t in trace.tokens)} prompt), {trace.n_expert_used} of "
        f"{trace.n_expert} experts per layer; even routing = {__import__('math').log2(trace.n_expert):.2f} bits"
    )
    print(table(rows, ["layer", "share per expert", "entropy", "max/min", "unused"]))
    if args.tokens:
        for t in trace.tokens:
            marks = " ".join("/".join(map(str, e)) for e in t.experts)
            print(f"{'P' if t.in_prompt else 'R'} {t.text!r:>16}  {marks}")
    if "speed" in payload:
        s = payload["speed"]
        print(
            f"speed: {s['without_tracing_tokens_per_s']} tok/s without tracing, {s['with_tracing_tokens_per_s']} with"
        )
    return 0
