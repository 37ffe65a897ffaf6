"""Aggregate tokens/s of the API server for 1, 2, 4 and 8 concurrent clients, one request at a time
(``--parallel 1``) against requests decoded together (``--parallel N``).

    python -m app.server.bench_clients [--model PATH] [--parallel 4] [--tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence


def aggregate_tokens_per_s(url: str, clients: int, tokens: int) -> float:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    produced: list[int] = []

    def ask(index: int) -> None:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Write story number {index}."}],
            max_tokens=tokens,
            temperature=0.7,
        )
        produced.append(reply.usage.completion_tokens)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(produced) / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.server.bench_clients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="GGUF to serve (default: the demo model)")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--ctx", type=int, default=1024)
    args = parser.parse_args(argv)
    from app.core.models.local import resolve_model
    from app.core.runtime.host import EngineHost
    from app.core.runtime.types import LoadSettings
    from app.server.run import start_in_background

    rows = []
    for parallel in (1, args.parallel):
        engine = EngineHost()
        engine.load(
            LoadSettings(model_path=str(resolve_model(args.model or "demo")), n_ctx=args.ctx, n_parallel=parallel)
        )
        server = start_in_background(engine, "bench")
        try:
            rows.append((parallel, [aggregate_tokens_per_s(server.url, n, args.tokens) for n in (1, 2, 4, 8)]))
        finally:
            server.stop()
            engine.close()
    print(f"aggregate generation tokens/s ({args.tokens} tokens per request)")
    print(f"{'server':>14} " + " ".join(f"{n:>2} client{'s' if n > 1 else ' '}" for n in (1, 2, 4, 8)))
    for parallel, speeds in rows:
        print(f"{'--parallel ' + str(parallel):>14} " + " ".join(f"{s:>10.1f}" for s in speeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
