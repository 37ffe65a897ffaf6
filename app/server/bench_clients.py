"""Aggregate tokens/s of the API server for 1, 4 and 8 concurrent clients: ours one request at a time
(``--parallel 1``) and decoding requests together (``--parallel N``), against llama.cpp's own ``llama-server``
(same model, threads, slots and context) when one is given, and a single client against the engine host's own
single-stream speed. Figures are ratios within one run (this machine is shared: +-25 % run to run).

Both servers run as their own processes, as users run them (``mixtral-desk serve``): the benchmark's client
threads then share no interpreter with either server. Every round starts both afresh, in alternating order:
one process's speed is a draw that holds for its life, so the rounds sample many of them.

    python -m app.server.bench_clients [--model PATH] [--parallel 4] [--tokens 64] [--llama-server PATH]

``llama-server`` comes from the llama-cpp-python sdist's ``vendor/llama.cpp`` (see the README); without it,
that column is skipped with a message.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.runtime.host import EngineHost

CLIENTS = (1, 4, 8)
PROMPT = "Write story number {index}, about a lighthouse."


def aggregate_tokens_per_s(url: str, clients: int, tokens: int, model: str | None = None) -> float:
    """Generated tokens per second over all ``clients`` asking at once (each ``tokens`` long at most)."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    model = model or client.models.list().data[0].id
    produced: list[int] = []

    def ask(index: int) -> None:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPT.format(index=index)}],
            max_tokens=tokens,
            temperature=0.7,
            extra_body={"ignore_eos": True},  # both servers write exactly `tokens` tokens: the same work
        )
        assert reply.usage is not None  # both servers report usage on a whole reply
        produced.append(reply.usage.completion_tokens)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(produced) / (time.perf_counter() - start)


def host_single_stream(engine: EngineHost, tokens: int) -> float:
    """The engine host's own decode speed for one reply, no HTTP (the ceiling for one API client)."""
    from app.core.prompts import Message
    from app.core.runtime.types import GenerationRequest, SamplingSettings

    request = GenerationRequest(
        (Message("user", PROMPT.format(index=0)),),
        SamplingSettings(temperature=0.7, repeat_penalty=1.0, max_new_tokens=tokens, ignore_eos=True),
    )
    ticket = engine.generate(request)
    start = time.perf_counter()
    for _ in ticket:
        pass
    assert ticket.stats is not None
    return ticket.stats.generated_tokens / (time.perf_counter() - start)


def median_interval(values: Sequence[float], resamples: int = 2000) -> tuple[float, float]:
    """A 95 % bootstrap interval of the median of ``values`` (seeded: the same figures give the same interval).
    One run's rounds vary with the shared machine; this says how far their median alone can be trusted."""
    import random

    draw = random.Random(0)
    medians = sorted(statistics.median(draw.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def find_llama_server(given: str | None) -> Path | None:
    """``--llama-server``, ``$LLAMA_SERVER``, or ``llama-server`` on PATH."""
    for candidate in (given, os.environ.get("LLAMA_SERVER"), shutil.which("llama-server")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def run_llama_server(
    binary: Path, model: Path, parallel: int, ctx: int, threads: tuple[int, int], extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """Start llama-server with ``parallel`` slots of ``ctx`` tokens each; returns (process, url) once healthy."""
    from app.server.run import free_port

    port = free_port()
    command = [str(binary), "-m", str(model), "--port", str(port), "-np", str(parallel), "-c", str(ctx * parallel)]
    command += ["-t", str(threads[0]), "-tb", str(threads[1]), "--log-disable", *extra]
    return _started(command, port)


def run_our_server(model: Path, parallel: int, ctx: int, flash_attn: bool) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``mixtral-desk serve`` with ``parallel`` requests decoded together, ``ctx`` tokens each; returns
    (process, url) once healthy."""
    from app.server.run import free_port

    port = free_port()
    command = [sys.executable, "-m", "app", "serve", "--model", str(model), "--port", str(port), "--model-id", "bench"]
    command += ["--parallel", str(parallel), "--ctx", str(ctx), "--flash-attn" if flash_attn else "--no-flash-attn"]
    return _started(command, port)


def _started(command: list[str], port: int) -> tuple[subprocess.Popen[bytes], str]:
    import httpx2 as httpx

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # polling a child process for readiness, not synchronising threads
    process.kill()
    raise RuntimeError(f"The server did not start: {' '.join(command)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait()


def warm_up(url: str) -> None:
    """A fresh server's first replies run slow (pages faulted in, buffers grown): every shape once, short."""
    for clients in CLIENTS:
        aggregate_tokens_per_s(url, clients, 16, "bench")


def _start_in_turn(
    starters: Sequence[Callable[[], tuple[subprocess.Popen[bytes], str]]], first: int
) -> list[tuple[subprocess.Popen[bytes], str]]:
    """Start every server, beginning with ``starters[first]``; returns them in the order given (all or none:
    one that fails to start stops those already up)."""
    started: dict[int, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for index in [*range(first, len(starters)), *range(first)]:
            started[index] = starters[index]()
    except BaseException:
        for process, _url in started.values():
            _stop(process)
        raise
    return [started[index] for index in range(len(starters))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.server.bench_clients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="GGUF to serve (default: the demo model)")
    parser.add_argument("--parallel", type=int, default=4, help="requests decoded together (and llama-server's -np)")
    parser.add_argument("--tokens", type=int, default=64, help="reply length in tokens (default 64)")
    parser.add_argument("--ctx", type=int, default=1024, help="context per request (default 1024)")
    parser.add_argument(
        "--rounds", type=int, default=9, help="rounds, each on freshly started servers; medians are printed (default 9)"
    )
    parser.add_argument("--llama-server", default=None, help="llama.cpp's llama-server binary, the reference")
    parser.add_argument(
        "--llama-server-args", default="", help='more arguments for llama-server, e.g. "-fa off" (quoted, one string)'
    )
    parser.add_argument(
        "--flash-attn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="our engine with flash attention (default on; llama-server's default, auto, is on here too)",
    )
    args = parser.parse_args(argv)
    from app.core.models.local import resolve_model
    from app.core.runtime.host import EngineHost
    from app.core.runtime.loading import default_thread_counts
    from app.core.runtime.types import LoadSettings

    model = resolve_model(args.model or "demo")
    threads = default_thread_counts()  # what the engine host uses untuned; llama-server gets the same
    samples: dict[str, dict[int, list[float]]] = {}

    def measure(name: str, url: str, clients: int) -> None:
        speed = aggregate_tokens_per_s(url, clients, args.tokens, "bench")  # the name both servers answer to
        samples.setdefault(name, {}).setdefault(clients, []).append(speed)

    sequential = run_our_server(model, 1, args.ctx, args.flash_attn)  # one request at a time: what batching adds
    try:
        warm_up(sequential[1])
        for clients in CLIENTS:
            measure("ours --parallel 1", sequential[1], clients)
    finally:
        _stop(sequential[0])

    ours_name, reference_name = f"ours --parallel {args.parallel}", f"llama-server -np {args.parallel}"
    engine = EngineHost()  # in this process, idle while the servers are measured: the single-stream ceiling
    engine.load(
        LoadSettings(model_path=str(model), n_ctx=args.ctx, n_parallel=args.parallel, flash_attn=args.flash_attn)
    )
    binary = find_llama_server(args.llama_server)
    extra = args.llama_server_args.split()

    def start_ours() -> tuple[subprocess.Popen[bytes], str]:
        return run_our_server(model, args.parallel, args.ctx, args.flash_attn)

    def start_reference() -> tuple[subprocess.Popen[bytes], str]:
        assert binary is not None
        return run_llama_server(binary, model, args.parallel, args.ctx, threads, extra)

    try:
        for round_ in range(args.rounds):
            # Each round starts both servers afresh: two runs of one server differ by a few per cent for as long
            # as they live (and the one started first was the slower in 8 of 9 pairs of twin llama-servers), so
            # one pair of processes for the whole run would measure their luck. Start order alternates.
            servers = _start_in_turn([start_ours] + ([start_reference] if binary else []), first=round_ % 2)
            names = (ours_name, reference_name)[: len(servers)]
            pair = [(name, url) for name, (_process, url) in zip(names, servers, strict=True)]
            try:
                for _name, url in pair:
                    warm_up(url)
                for clients in CLIENTS:  # both up at once, measured in turn: drift hits both alike
                    for name, url in pair if round_ % 2 == 0 else reversed(pair):
                        measure(name, url, clients)
                host = host_single_stream(engine, args.tokens)
                samples.setdefault("engine host, no HTTP", {}).setdefault(1, []).append(host)
                measure("one client over HTTP", servers[0][1], 1)
            finally:
                for process, _url in servers:
                    _stop(process)
    finally:
        engine.close()

    def median(name: str, clients: int) -> float:
        return statistics.median(samples[name][clients])

    if binary is None:
        print("llama-server: not found (give --llama-server PATH or set LLAMA_SERVER); its row is skipped")
    print(
        f"model {model.name}; {args.tokens}-token replies at temperature 0.7; threads {threads[0]}/{threads[1]}; "
        f"medians of {args.rounds} rounds, each on freshly started servers; ours {'with' if args.flash_attn else 'without'} flash attention, "
        f"llama-server {' '.join(extra) or 'with its defaults'}"
    )
    print(f"{'aggregate generation tokens/s':<38}" + "".join(f"{n:>4} client{'s' if n > 1 else ' '}" for n in CLIENTS))
    for name in ("ours --parallel 1", ours_name, reference_name):
        if name in samples:
            print(f"{name:<38}" + "".join(f"{median(name, n):>12.1f}" for n in CLIENTS))
    if reference_name in samples:
        ratios = [median(ours_name, n) / median(reference_name, n) for n in CLIENTS]
        print(f"{'ratio ours / llama-server':<38}" + "".join(f"{r:>12.2f}" for r in ratios))
        # each round's two figures were taken seconds apart: their ratio shrugs off the machine's drift
        per_round = [
            [a / b for a, b in zip(samples[ours_name][n], samples[reference_name][n], strict=True)] for n in CLIENTS
        ]
        print(
            f"{'  median of the per-round ratios':<38}" + "".join(f"{statistics.median(r):>12.2f}" for r in per_round)
        )
        intervals = [median_interval(r) for r in per_round]
        print(
            f"{'  95 % interval of that median':<38}" + "".join(f"{f'{lo:.2f}-{hi:.2f}':>12}" for lo, hi in intervals)
        )
    http, direct = median("one client over HTTP", 1), median("engine host, no HTTP", 1)
    print(
        f"one client: {http:.1f} tok/s over HTTP, {direct:.1f} from the engine host directly: ratio {http / direct:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
