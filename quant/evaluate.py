"""Quality of a quantization: perplexity over a text, and against a higher-precision reference of the same
model the mean KL divergence of the next-token distributions and how often the top token agrees.

    python -m quant eval --model A.gguf [--reference B.gguf] [--text FILE] [--ctx 512] [--json]

Like llama.cpp's perplexity tool, the text is cut into windows of ``--ctx`` tokens and only the second half
of each window is scored, so every scored token has at least half a window of context. Reference
log-probabilities are kept in a temporary file, so only one model is in memory at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from app.core.runtime.host import EngineHost
    from app.core.runtime.loading import LoadedModel


@dataclass(frozen=True)
class EvalResult:
    """Quality figures for one model over one text."""

    model: str
    tokens_scored: int
    perplexity: float
    reference: str | None = None
    mean_kl: float | None = None
    max_kl: float | None = None
    top1_agreement: float | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def default_text() -> str:
    """The evaluation text shipped in ``resources/`` (original prose, CC0)."""
    return resources.files("resources").joinpath("eval_text.txt").read_text(encoding="utf-8")


def _open(path: Path, n_ctx: int, threads: int | None) -> EngineHost:
    """An engine host with ``path`` loaded for scoring whole windows (one sequence, a batch per window)."""
    from app.core.runtime.host import EngineHost
    from app.core.runtime.types import LoadSettings

    host = EngineHost(name="quant-eval")
    host.load(
        LoadSettings(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_gpu_layers=-1, n_parallel=1)
    )
    return host


def _windows(host: EngineHost, text: str, n_ctx: int) -> Iterator[list[int]]:
    tokens = host.tokenize(text)
    bos = host.with_model(lambda loaded: loaded.vocab.bos_id)
    size = n_ctx - 1
    if len(tokens) < size:
        raise ValueError(f"The text has {len(tokens)} tokens; at least {size} are needed for a {n_ctx}-token window.")
    for start in range(0, len(tokens) - size + 1, size):
        yield [bos, *tokens[start : start + size]]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def _scored_logprobs(host: EngineHost, window: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities at the scored positions (second half) and the tokens that actually followed."""
    first = len(window) // 2

    def score(loaded: LoadedModel) -> np.ndarray:
        from app.core.runtime.native import Batch

        context = loaded.context
        assert context is not None
        context.clear()
        batch = Batch(len(window))
        try:
            for position, token in enumerate(window):
                batch.add(token, position, 0, True)
            if context.decode(batch) != 0:
                raise RuntimeError("llama.cpp could not evaluate the window")
            n_vocab = loaded.vocab.size
            return np.stack([context.logits_row(i, n_vocab) for i in range(first, len(window) - 1)]).astype(np.float32)
        finally:
            batch.close()

    logits = host.with_model(score, exclusive=True)
    return _log_softmax(logits), np.asarray(window[first + 1 :])


def evaluate(
    model: Path, text: str | None = None, *, reference: Path | None = None, n_ctx: int = 512, threads: int | None = None
) -> EvalResult:
    """Perplexity of ``model`` over ``text`` and, with a ``reference``, KL divergence and top-1 agreement."""
    return evaluate_many([model], text, reference=reference, n_ctx=n_ctx, threads=threads)[0]


def evaluate_many(
    models: Sequence[Path],
    text: str | None = None,
    *,
    reference: Path | None = None,
    n_ctx: int = 512,
    threads: int | None = None,
) -> list[EvalResult]:
    """:func:`evaluate` for several models of one family; the reference is run once for all of them."""
    text = text if text is not None else default_text()
    with tempfile.TemporaryDirectory(prefix="quant-eval-") as scratch:
        ref_store: list[np.ndarray] = []
        if reference is not None:
            ref = _open(reference, n_ctx, threads)
            for index, window in enumerate(_windows(ref, text, n_ctx)):
                logprobs, _ = _scored_logprobs(ref, window)
                stored = np.lib.format.open_memmap(  # type: ignore[no-untyped-call]
                    Path(scratch) / f"ref-{index}.npy", mode="w+", dtype=np.float32, shape=logprobs.shape
                )
                stored[:] = logprobs
                ref_store.append(stored)
            ref.close()
        results = [_score(model, text, n_ctx, threads, ref_store, reference) for model in models]
        del ref_store
    return results


def _score(
    model: Path, text: str, n_ctx: int, threads: int | None, ref_store: list[np.ndarray], reference: Path | None
) -> EvalResult:
    host = _open(model, n_ctx, threads)
    nll, count, kls, agree = 0.0, 0, [], 0
    for index, window in enumerate(_windows(host, text, n_ctx)):
        logprobs, targets = _scored_logprobs(host, window)
        nll -= float(logprobs[np.arange(len(targets)), targets].sum())
        count += len(targets)
        if ref_store:
            ref_logprobs = np.asarray(ref_store[index], dtype=np.float32)
            kl = (np.exp(ref_logprobs) * (ref_logprobs - logprobs)).sum(axis=-1)
            kls.append(np.maximum(kl, 0.0))
            agree += int((ref_logprobs.argmax(axis=-1) == logprobs.argmax(axis=-1)).sum())
    host.close()
    all_kl = np.concatenate(kls) if kls else None
    return EvalResult(
        model=model.name,
        tokens_scored=count,
        perplexity=math.exp(nll / count),
        reference=reference.name if reference else None,
        mean_kl=float(all_kl.mean()) if all_kl is not None else None,
        max_kl=float(all_kl.max()) if all_kl is not None else None,
        top1_agreement=agree / count if reference is not None else None,
    )


def format_table(results: Sequence[EvalResult]) -> str:
    lines = [f"{'model':40} {'tokens':>7} {'PPL':>10} {'mean KL':>10} {'max KL':>9} {'top-1 agree':>12}"]
    for r in results:
        kl = f"{r.mean_kl:10.5f}" if r.mean_kl is not None else f"{'-':>10}"
        mx = f"{r.max_kl:9.4f}" if r.max_kl is not None else f"{'-':>9}"
        top = f"{r.top1_agreement:12.1%}" if r.top1_agreement is not None else f"{'-':>12}"
        lines.append(f"{r.model[:40]:40} {r.tokens_scored:>7} {r.perplexity:10.3f} {kl} {mx} {top}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quant eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, action="append", help="model to evaluate (repeatable)")
    parser.add_argument("--reference", default=None, help="higher-precision file of the same model")
    parser.add_argument("--text", default=None, help="UTF-8 text file (default: the text in resources/)")
    parser.add_argument("--ctx", type=int, default=512, help="window length in tokens (default 512)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    text = Path(args.text).read_text(encoding="utf-8") if args.text else None
    try:
        results = [
            evaluate(
                Path(m),
                text,
                reference=Path(args.reference) if args.reference else None,
                n_ctx=args.ctx,
                threads=args.threads,
            )
            for m in args.model
        ]
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps([r.to_json() for r in results], indent=2) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
