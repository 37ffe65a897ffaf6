"""`mixtral-desk chat`: streaming console chat, one-shot answers and plain-text continuation."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from app.cli.options import add_model_options, add_sampling_options, load_settings_from, sampling_from
from app.core.errors import DeskError
from app.core.prompts import FORMAT_PLAIN
from app.core.runtime.host import EngineHost
from app.core.runtime.protocol import ChatEngine
from app.core.runtime.session import ChatSession
from app.core.runtime.types import GenerationStats

HELP_TEXT = """Commands:
  /reset          forget the conversation (keeps the system prompt)
  /system TEXT    set the system prompt (empty removes it) and start over
  /stats          statistics of the last reply
  /quit           leave (Ctrl-D works too)
Ctrl-C stops the reply being written."""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="Chat with a model in the terminal. With --prompt (or text on stdin) it answers once and "
        "exits. Ctrl-C stops the current reply, not the program.",
    )
    add_model_options(parser)
    add_sampling_options(parser)
    parser.add_argument("--system", metavar="TEXT", help="system prompt")
    parser.add_argument("--prompt", metavar="TEXT", help="answer this once and exit")
    parser.add_argument(
        "--raw", action="store_true", help="continue plain text instead of chatting (base models, stories)"
    )
    parser.add_argument(
        "--json", action="store_true", help="with --prompt or stdin: print the reply and its stats as JSON"
    )
    remote = parser.add_argument_group("remote model (an OpenAI-compatible server: vLLM, llama-server, Ollama, ...)")
    remote.add_argument("--remote", metavar="URL", help="base URL, e.g. http://gpu-box:8000/v1")
    remote.add_argument("--remote-model", metavar="NAME", help="the model name the server knows")
    remote.add_argument("--api-key", metavar="KEY", default="", help="the server's API key, if it needs one")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    one_shot_text = args.prompt
    if one_shot_text is None and not sys.stdin.isatty():
        one_shot_text = sys.stdin.read()
    engine: ChatEngine
    if args.remote:
        from app.core.runtime.remote import RemoteEngine, RemoteSettings

        if not args.remote_model:
            raise DeskError("--remote needs --remote-model NAME (see the server's /v1/models).")
        engine = RemoteEngine(RemoteSettings(args.remote, args.remote_model, args.api_key))
        info = engine.load()
    else:
        engine = EngineHost()
        info = engine.load(load_settings_from(args, chat_format=FORMAT_PLAIN if args.raw else None))
    session = ChatSession(engine, system=args.system, sampling=sampling_from(args), context_policy=args.context_policy)
    if one_shot_text is not None:
        return _answer_once(session, one_shot_text, as_json=args.json)
    print(
        f"{info.name} · {info.chat_format} · context {info.n_ctx} tokens · {info.path}\nType /help for commands.",
        file=sys.stderr,
    )
    return _interactive(session)


def _stream_reply(session: ChatSession, text: str, out: TextIO | None) -> None:
    """Stream the reply to ``text`` into ``out`` (None: only collect it); Ctrl-C stops it.

    A notice about turns left out of the prompt is printed before the reply starts.
    """
    noticed = False
    with _ctrl_c_cancels(session):
        for delta in session.stream(text):
            if not noticed:
                noticed = True
                _report_dropped(session)
            if out is not None:
                out.write(delta)
                out.flush()
    if not noticed:
        _report_dropped(session)


def _answer_once(session: ChatSession, text: str, *, as_json: bool) -> int:
    out = sys.stdout
    _stream_reply(session, text, None if as_json else out)
    generation = session.last
    assert generation is not None and generation.stats is not None
    if as_json:
        info = session.engine.info
        payload = {
            "model": info.to_json() if info else None,
            "reply": generation.text,
            "stats": generation.stats.to_json(),
        }
        json.dump(payload, out, ensure_ascii=False, indent=2)
    out.write("\n")
    return 0


def _interactive(session: ChatSession) -> int:
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("\n(Ctrl-D or /quit to leave)", file=sys.stderr)
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            if _command(session, line.strip()):
                return 0
            continue
        _stream_reply(session, line, sys.stdout)
        sys.stdout.write("\n")
        if session.last is not None and session.last.stats is not None:
            print(_stats_line(session.last.stats), file=sys.stderr)


def _command(session: ChatSession, line: str) -> bool:
    """Run a slash command; True means quit."""
    name, _, rest = line.partition(" ")
    if name in ("/quit", "/exit", "/q"):
        return True
    if name == "/reset":
        session.reset()
        print("(conversation cleared)", file=sys.stderr)
    elif name == "/system":
        session.set_system(rest.strip() or None)
        session.reset()
        print(
            "(system prompt set; conversation cleared)" if rest.strip() else "(system prompt removed)",
            file=sys.stderr,
        )
    elif name == "/stats":
        stats = session.last.stats if session.last else None
        print(json.dumps(stats.to_json(), indent=2) if stats else "(no reply yet)", file=sys.stderr)
    elif name == "/help":
        print(HELP_TEXT, file=sys.stderr)
    else:
        print(f"Unknown command {name}. {HELP_TEXT}", file=sys.stderr)
    return False


def _stats_line(stats: GenerationStats) -> str:
    note = {"cancelled": " · stopped", "context_full": " · context full", "max_tokens": " · length limit"}
    return (
        f"[{stats.generated_tokens} tokens · {stats.generation_tokens_per_s:.1f} tok/s · "
        f"first token {stats.time_to_first_token_s:.2f}s · context {stats.context_used}/{stats.context_size}"
        f"{note.get(stats.stop_reason, '')}]"
    )


def _report_dropped(session: ChatSession) -> None:
    prompt = session.last.prompt if session.last else None
    if prompt is not None and prompt.dropped:
        print(f"({prompt.describe_dropped()})", file=sys.stderr)


@contextmanager
def _ctrl_c_cancels(session: ChatSession) -> Iterator[None]:
    """While a reply streams, Ctrl-C stops the reply instead of the program."""
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: session.cancel())
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
