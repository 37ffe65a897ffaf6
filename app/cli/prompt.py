"""`mixtral-desk prompt`: show exactly what the runner feeds the model for a conversation."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.core.errors import DeskError
from app.core.models.local import resolve_model
from app.core.prompts import FORMATS, messages_from_json
from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "prompt",
        help="print the exact prompt text or token ids fed to a model",
        description="Print the exact text (or, with --tokens, the token ids one per line) that the runner feeds "
        "the model for a conversation. Only the model's tokenizer is loaded, so this is quick even for 8x22B.",
    )
    parser.add_argument("--model", metavar="PATH|ID", help="GGUF file, a name in the models folder, or 'demo'")
    parser.add_argument(
        "--messages", required=True, metavar="FILE.json", help="JSON list of {role, content}; - for stdin"
    )
    parser.add_argument("--tokens", action="store_true", help="print token ids, one per line")
    parser.add_argument("--format", choices=FORMATS, default=None, help="prompt format (default: detected)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source = sys.stdin.read() if args.messages == "-" else _read(Path(args.messages))
    try:
        data = json.loads(source)
    except json.JSONDecodeError as err:
        raise DeskError(f"{args.messages} is not valid JSON ({err.msg} at line {err.lineno}).") from err
    messages = messages_from_json(data)
    engine = EngineHost()
    try:
        engine.load(LoadSettings(model_path=str(resolve_model(args.model)), vocab_only=True, chat_format=args.format))
        tokens = engine.prompt_tokens(messages)
        if args.tokens:
            sys.stdout.write("".join(f"{token}\n" for token in tokens))
        else:
            sys.stdout.write(engine.detokenize(tokens, special=True) + "\n")
    finally:
        engine.close()
    return 0


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise DeskError(f"Cannot read {path}: {err.strerror}.") from err
