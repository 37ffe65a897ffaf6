"""`mixtral-desk bench`: how fast models run on this machine (pp512 / tg128, TTFT, memory), tuning, overhead."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.cli.format import human_bytes, table
from app.cli.options import add_cpu_moe_option, add_rpc_option
from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure prompt and generation speed on this machine",
        description="Prompt processing (pp) and generation (tg) tokens/s with a short prompt and with one that "
        "fills most of the context, time to first token and peak memory, as median and min..max of repeated runs.",
    )
    parser.add_argument("models", nargs="*", metavar="MODEL|PATH", help="GGUF files or names (default: the newest)")
    parser.add_argument("--ctx", type=int, default=2048, help="context length (default 2048)")
    parser.add_argument("--prompt", type=int, default=512, help="short prompt length (default 512, as pp512)")
    parser.add_argument("--generate", type=int, default=128, help="tokens to generate (default 128, as tg128)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (default 3)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--gpu-layers", type=int, default=None, metavar="N", help="whole layers to offload; -1 = all")
    add_cpu_moe_option(parser)
    add_rpc_option(parser)
    parser.add_argument("--no-long", action="store_true", help="skip the long-prompt scenario")
    parser.add_argument(
        "--overhead", action="store_true", help="compare our streaming path with a bare llama.cpp C-API loop"
    )
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="aggregate tokens/s for 1, 2, 4 and 8 concurrent streams, against the bare batched ceiling",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="find the fastest threads, batch and (with a GPU or --rpc) offload, and save them for the model",
    )
    parser.add_argument(
        "--mixtral-shaped",
        action="store_true",
        help="bench full-width 8x7B-shaped test models and extrapolate to 32 layers",
    )
    parser.add_argument("--chart", metavar="FILE.png", help="save a bar chart of the results")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def _trial_label(trial: dict[str, int]) -> str:
    """``threads 2, batch 512, 33 layers with the experts of 6 in RAM``."""
    label = f"threads {trial['n_threads']:>2}, batch {trial['n_batch']:>4}"
    if "n_gpu_layers" in trial:
        label += f", {trial['n_gpu_layers']:>2} layers offloaded"
    if trial.get("cpu_moe"):
        label += f", the experts of {trial['cpu_moe']} in RAM"
    return label


def run(args: argparse.Namespace) -> int:
    from app.core.models.local import resolve_model
    from app.core.runtime import bench
    from app.core.storage import paths

    payload: dict[str, Any] = {"results": []}
    if args.mixtral_shaped:
        folder = paths.ensure(paths.cache_dir() / "bench-models")
        from quant.tiny import mixtral_shaped_models

        models = mixtral_shaped_models(folder)
        speeds = {}
        for layers, path in models.items():
            engine = EngineHost()
            engine.load(LoadSettings(model_path=str(path), n_ctx=args.ctx, n_threads=args.threads))
            results = bench.run_bench(
                engine,
                prompt_tokens=min(args.prompt, args.ctx // 4),
                generate_tokens=args.generate,
                repeats=args.repeat,
                long_prompt=False,
            )
            engine.close()
            speeds[layers] = results[0].tg_tokens_per_s.median
            payload["results"] += [r.to_json() for r in results]
        estimate = bench.extrapolate(speeds, 32)
        payload["extrapolation"] = vars(estimate)
        if not args.json:
            print(
                f"Mixtral 8x7B shape, {estimate.target_layers} layers: ~{estimate.tokens_per_s} tokens/s generation "
                f"({estimate.note}; {estimate.seconds_per_layer * 1000:.1f} ms per layer)."
            )
    paths_to_run = [resolve_model(m) for m in args.models] or ([] if args.mixtral_shaped else [resolve_model(None)])
    for model in paths_to_run:
        settings = LoadSettings(
            model_path=str(model),
            n_ctx=args.ctx,
            n_threads=args.threads,
            n_gpu_layers=args.gpu_layers,
            cpu_moe=args.cpu_moe,
            rpc_workers=tuple(args.rpc),
        )
        if args.tune:
            best = bench.tune(
                settings,
                on_trial=lambda trial, pp, tg: print(
                    f"  {_trial_label(trial)}: pp {pp:8.1f}  tg {tg:7.2f} tok/s",
                    file=sys.stderr,
                ),
            )
            print(f"{model.name}: fastest is {_trial_label(best)} (saved)", file=sys.stderr)
            payload.setdefault("tuned", {})[model.name] = best
        if args.parallel:
            from dataclasses import replace

            settings = replace(settings, n_parallel=8, n_ctx=max(256, 32 + min(args.generate, 64) + 16))
        engine = EngineHost()
        engine.load(settings)
        results = bench.run_bench(
            engine,
            prompt_tokens=min(args.prompt, settings.n_ctx // 4),  # --parallel makes each stream's context small
            generate_tokens=args.generate,
            repeats=args.repeat,
            long_prompt=not args.no_long,
        )
        payload["results"] += [r.to_json() for r in results]
        if args.overhead:
            overhead = bench.measure_overhead(engine, generate_tokens=args.generate)
            payload.setdefault("overhead", {})[model.name] = overhead.to_json()
        if args.parallel:
            payload.setdefault("parallel", {})[model.name] = {
                str(f.streams): f.to_json()
                for f in bench.measure_batching(engine, generate_tokens=min(args.generate, 64))
            }
        engine.close()
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        rows = [
            [
                r["model"],
                r["scenario"],
                str(r["prompt_tokens"]),
                f"{r['pp_tokens_per_s']['median']:.1f} ({r['pp_tokens_per_s']['low']:.1f}..{r['pp_tokens_per_s']['high']:.1f})",
                f"{r['tg_tokens_per_s']['median']:.2f} ({r['tg_tokens_per_s']['low']:.2f}..{r['tg_tokens_per_s']['high']:.2f})",
                f"{r['time_to_first_token_s']['median']:.2f}s",
                human_bytes(r["peak_rss_bytes"]),
            ]
            for r in payload["results"]
        ]
        print(
            table(
                rows,
                [
                    "model",
                    "scenario",
                    "prompt",
                    "pp tok/s (min..max)",
                    "tg tok/s (min..max)",
                    "TTFT",
                    "peak RAM",
                    "VRAM",
                ],
            )
        )
        for name, speeds in payload.get("parallel", {}).items():
            print(
                f"{name}: aggregate generation, N streams through the host vs the bare batched loop: "
                + ", ".join(
                    f"{n}: {v['host_tokens_per_s']} / {v['bare_tokens_per_s']} tok/s ({v['ratio']:.2f})"
                    for n, v in speeds.items()
                )
            )
        for name, figures in payload.get("overhead", {}).items():
            print(
                f"{name}: streaming path {figures['host_tokens_per_s']} tok/s vs bare llama.cpp loop "
                f"{figures['bare_tokens_per_s']} tok/s -> ratio {figures['ratio']:.3f} (target >= 0.97), "
                f"{figures['per_token_overhead_us']} us per token"
            )
    if args.chart:
        from app.core.charts import bar_chart_png

        short = [r for r in payload["results"] if r["scenario"] == "short prompt"]
        bar_chart_png(
            Path(args.chart),
            "Generation and prompt speed on this machine",
            [r["model"].removesuffix(".gguf")[-20:] for r in short],
            {
                "tg": [r["tg_tokens_per_s"]["median"] for r in short],
                "pp / 10": [r["pp_tokens_per_s"]["median"] / 10 for r in short],
            },
        )
        print(f"chart: {args.chart}", file=sys.stderr)
    return 0
