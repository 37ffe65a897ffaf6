"""The command line, run as a user runs it: real processes, real models, a real terminal for chat."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli.main import build_parser
from tests.gguf_defects import defective_gguf

SUBCOMMANDS = ["gui", "chat", "prompt", "hw", "plan", "models", "bench", "serve", "route", "rpc-worker"]


def run_cli(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


def test_version_and_help() -> None:
    from app import __version__

    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"mixtral-desk {__version__}"
    helped = run_cli("--help")
    assert helped.returncode == 0
    for name in SUBCOMMANDS:
        assert name in helped.stdout


def test_every_subcommand_has_help() -> None:
    parser = build_parser()
    registered = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert sorted(registered) == sorted(SUBCOMMANDS)
    for name in registered:
        result = run_cli(name, "--help")
        assert result.returncode == 0 and "usage: mixtral-desk " + name in result.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "mixtral-desk"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "mixtral-desk" in result.stdout


def test_one_shot_answer_with_the_demo_model_as_json() -> None:
    result = run_cli(
        "chat", "--prompt", "How many days are in a week?", "--temperature", "0", "--repeat-penalty", "1", "--json"
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert "7" in payload["reply"]
    assert payload["model"]["chat_format"] == "gguf-template"
    assert payload["stats"]["stop_reason"] == "eos" and payload["stats"]["generated_tokens"] > 0


def test_question_on_stdin_is_answered_once(tiny_v1: dict[str, Path]) -> None:
    result = run_cli("chat", "--model", str(tiny_v1["Q4_0"]), "--max-tokens", "5", "--json", stdin="Hello there")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["stats"]["generated_tokens"] == 5 and payload["stats"]["stop_reason"] == "max_tokens"
    assert payload["model"]["chat_format"] == "mistral-v1"


def test_raw_mode_continues_plain_text(tiny_v1: dict[str, Path]) -> None:
    result = run_cli(
        "chat", "--raw", "--model", str(tiny_v1["Q4_0"]), "--max-tokens", "3", "--json", "--prompt", "Once"
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["model"]["chat_format"] == "plain"
    assert payload["stats"]["prompt_tokens"] == 2  # BOS + "Once": no template around it


def test_prompt_tokens_match_mistral_common(tiny_v3: dict[str, Path], tmp_path: Path) -> None:
    from tests.core.test_prompts import CONVERSATIONS, mistral_common_tokens

    messages = CONVERSATIONS["multi-turn with system"]
    file = tmp_path / "messages.json"
    file.write_text(json.dumps([m.to_json() for m in messages]), encoding="utf-8")
    result = run_cli("prompt", "--model", str(tiny_v3["Q4_K_M"]), "--messages", str(file), "--tokens")
    assert result.returncode == 0, result.stderr
    assert [int(line) for line in result.stdout.split()] == mistral_common_tokens("v3", messages)
    text = run_cli("prompt", "--model", str(tiny_v3["Q4_K_M"]), "--messages", str(file))
    assert text.stdout.startswith("<s>[INST]") and "Be nice.\n\nTell me a joke.[/INST]" in text.stdout


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["chat", "--model", "/nowhere/model.gguf", "--prompt", "x"], None, "Model file not found"),
        (["chat", "--model", "mixtral-9000", "--prompt", "x"], None, "No model called"),
        (["chat", "--kv", "q8_0", "--no-flash-attn", "--prompt", "x"], None, "flash attention"),
        (["prompt", "--messages", "-"], "{not json", "not valid JSON"),
        (["prompt", "--messages", "/nowhere.json"], None, "Cannot read"),
        (["plan", "mixtral-9000"], None, "No catalog model"),
        (["plan", "mixtral-8x7b-instruct", "--quant", "Q1"], None, "has no Q1 file"),
        (["plan", "mixtral-8x7b-instruct", "--assume-vram", "lots"], None, "Cannot read the size"),
        (["plan", "/nowhere/model.gguf"], None, "not found"),
    ],
)
def test_errors_are_one_clear_line_and_exit_1(args: list[str], stdin: str | None, message: str) -> None:
    result = run_cli(*args, stdin=stdin)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_prompt_cache_size_reaches_the_engine_and_a_bad_size_is_refused() -> None:
    from app.cli.options import load_settings_from

    parser = build_parser()
    for given, expected in (([], None), (["--prompt-cache", "0"], 0), (["--prompt-cache", "512"], 512)):
        args = parser.parse_args(["serve", "--model", "demo", *given])
        assert load_settings_from(args).prompt_cache_mib == expected
    result = run_cli("serve", "--prompt-cache", "-1")
    assert result.returncode == 2 and "'-1' is not a size in MiB" in result.stderr


class Terminal:
    """A child process on a pseudo-terminal, read with select() against a deadline."""

    def __init__(self, *args: str) -> None:
        master, slave = os.openpty()
        self.fd = master
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", *args], stdin=slave, stdout=slave, stderr=slave, env=os.environ.copy()
        )
        os.close(slave)
        self.buffer = ""

    def expect(self, text: str, timeout: float = 60) -> str:
        import time

        deadline = time.monotonic() + timeout
        while text not in self.buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"did not see {text!r}; got:\n{self.buffer[-2000:]}"
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                assert chunk, f"terminal closed before {text!r}; got:\n{self.buffer[-2000:]}"
                self.buffer += chunk.decode("utf-8", errors="replace")
        index = self.buffer.index(text) + len(text)
        seen, self.buffer = self.buffer[:index], self.buffer[index:]
        return seen

    def send(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(30)
        finally:
            os.close(self.fd)


def test_interactive_chat_commands_and_ctrl_c_stops_only_the_reply(tiny_v1: dict[str, Path]) -> None:
    term = Terminal("chat", "--model", str(tiny_v1["Q4_0"]), "--max-tokens", "0", "--ctx", "8192")
    try:
        term.expect("Type /help")
        term.expect("> ")
        term.send("Write a very long story")
        term.expect("Write a very long story")  # the terminal's echo
        term.expect("\n")
        term.expect(" ")  # the reply has started streaming
        term.proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers
        assert "stopped]" in term.expect("]")
        term.expect("> ")
        assert term.proc.poll() is None  # the program is still running
        term.send("/stats")
        assert '"stop_reason": "cancelled"' in term.expect("}")
        term.send("/system Be brief.")
        term.expect("system prompt set")
        term.send("/reset")
        term.expect("conversation cleared")
        term.send("/quit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait()


def test_quant_tiny_command_writes_loadable_models(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quant", "tiny", "--tokenizer", "v3", "--out", str(tmp_path), "--quants", "Q4_0,Q2_K"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.glob("*.gguf"))
    assert names == ["mixtral-tiny-v3-F16.gguf", "mixtral-tiny-v3-Q2_K.gguf", "mixtral-tiny-v3-Q4_0.gguf"]
    assert "Q2_K" in result.stdout and not list(tmp_path.glob("*.tmp"))


def test_interactive_chat_says_when_old_turns_leave_the_context(tiny_v1: dict[str, Path]) -> None:
    term = Terminal("chat", "--model", str(tiny_v1["Q4_0"]), "--max-tokens", "40", "--ctx", "256", "--seed", "1")
    try:
        term.expect("> ")
        seen = ""
        for turn in range(8):
            term.send(f"Turn {turn}: " + "word " * 30)
            seen += term.expect("tok/s")  # the stats line after each reply
            term.expect("> ")
            if "left out of the prompt" in seen:
                break
        assert "the oldest 2 messages (1 turn) were left out of the prompt" in seen
        term.send("/quit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait()


def test_hw_reports_this_machine_as_json() -> None:
    result = run_cli("hw", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ram_total_bytes"] > 0 and report["llama_backend"] == "cpu" and report["gpus"] == []
    assert report["ram_bandwidth_gbps"] > 0
    human = run_cli("hw")
    assert "RAM:" in human.stdout and "GPU:      none found" in human.stdout


def test_plan_a_local_file(tiny_v1: dict[str, Path]) -> None:
    result = run_cli("plan", str(tiny_v1["Q4_K_M"]), "--ctx", "8192", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["verdict"] == "cpu_only" and plan["source"] == "from llama.cpp"  # its no_alloc KV and compute
    one_conversation = 2 * 8192 * 2 * 32 * 2 * 2  # layers x ctx x kv heads x dim x (K+V) x f16
    assert plan["ram"]["kv_cache"] == 2 * one_conversation  # by default the chat and one API client
    alone = json.loads(run_cli("plan", str(tiny_v1["Q4_K_M"]), "--ctx", "8192", "--parallel", "1", "--json").stdout)
    assert alone["ram"]["kv_cache"] == one_conversation
    human = run_cli("plan", str(tiny_v1["Q4_K_M"]))
    assert "Runs on the CPU only" in human.stdout and "KV cache" in human.stdout
    assert "context 4096 x 2 conversations" in human.stdout


def test_plan_every_quant_for_an_assumed_4090() -> None:
    args = [
        "plan",
        "mixtral-8x7b-instruct",
        "--assume-vram",
        "24GiB",
        "--assume-ram",
        "64GiB",
        "--assume-gpu",
        "RTX 4090",
    ]
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    verdicts = {p["entry"]["quant"]: p["plan"]["verdict"] for p in payload["plans"]}
    assert verdicts["Q2_K"] == "full_gpu" and verdicts["Q8_0"] == "partial"
    assert payload["recommended"].startswith("mixtral-8x7b-instruct:")
    human = run_cli(*args)
    assert "<- recommended" in human.stdout and "estimated from catalog" in human.stdout


def test_plan_8x22b_on_an_assumed_mac() -> None:
    result = run_cli(
        "plan", "mixtral-8x22b-instruct", "--quant", "Q4_K_M", "--assume-backend", "metal", "--assume-ram", "128GiB"
    )
    assert result.returncode == 0, result.stderr
    assert "(metal)" in result.stdout and "Fits fully on the GPU" in result.stdout


def test_models_list_shows_every_entry_with_a_verdict() -> None:
    result = run_cli("models", "list", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    by_id = {m["id"]: m for m in listing["models"]}
    assert by_id["demo:Q4_1"]["installed"] and by_id["demo:Q4_1"]["plan"]["verdict"] == "cpu_only"
    assert not by_id["mixtral-8x22b-instruct:Q8_0"]["installed"]
    assert len(by_id) >= 20 and not any("thebloke" in key for key in by_id)  # unusable old layout: hidden
    everything = json.loads(run_cli("models", "list", "--all", "--json").stdout)
    assert len(everything["models"]) >= 30
    assert by_id["mixtral-8x7b-instruct:Q4_K_M"]["size_source"] == "computed"
    assert not by_id["mixtral-8x22b-instruct:Q3_K_M"]["name_verified"]
    human = run_cli("models", "list")
    assert "installed" in human.stdout and "old layout" in run_cli("models", "list", "--all").stdout
    row = next(line for line in human.stdout.splitlines() if line.startswith("mixtral-8x7b-instruct:Q4_K_M"))
    assert "26.5 GiB (computed)" in row  # 28 448 466 016 bytes, as the published file within 2.4 KB
    assert "file name not verified" in next(
        line for line in human.stdout.splitlines() if line.startswith("mixtral-8x22b-instruct:Q3_K_M")
    )


def hub_env(hub, home: Path) -> dict[str, str]:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "MIXTRAL_DESK_HOME": str(home)}
    env.pop("HF_HUB_OFFLINE", None)
    return env


def test_download_verify_and_remove_a_catalog_model(fake_hub, tiny_v1: dict[str, Path], isolated_home: Path) -> None:
    from app.core.models import catalog

    item = catalog.entry("mixtral-8x7b-instruct", "Q2_K")
    fake_hub.add(item.model.repo, tiny_v1["Q2_K"], item.quant.files[0].name)
    env = hub_env(fake_hub, isolated_home)
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=120, env=env
    )
    downloaded = run("models", "download", "mixtral-8x7b-instruct:Q2_K")
    assert downloaded.returncode == 0, downloaded.stderr
    target = Path(downloaded.stdout.strip())
    assert target.name == item.quant.files[0].name and target.is_file()
    listing = json.loads(run("models", "list", "--json").stdout)
    assert {m["id"]: m["installed"] for m in listing["models"]}["mixtral-8x7b-instruct:Q2_K"]
    again = run("models", "download", "mixtral-8x7b-instruct", "--quant", "Q2_K")
    assert "already installed" in again.stdout
    verified = run("models", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("ok")
    target.write_bytes(target.read_bytes()[:-1] + b"\0")
    damaged = run("models", "verify", "mixtral-8x7b-instruct:Q2_K")
    assert damaged.returncode == 1 and "DAMAGED" in damaged.stdout
    removed = run("models", "remove", "mixtral-8x7b-instruct:Q2_K")
    assert removed.returncode == 0 and not target.exists()


def test_download_errors_are_one_line(fake_hub, isolated_home: Path) -> None:
    env = hub_env(fake_hub, isolated_home)
    result = subprocess.run(
        [sys.executable, "-m", "app", "models", "download", "nobody/nothing/missing.gguf"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "not found" in result.stderr


def test_import_and_scan_commands(tiny_v1: dict[str, Path], tmp_path: Path) -> None:
    source = tmp_path / "mine.gguf"
    source.write_bytes(tiny_v1["Q2_K"].read_bytes())
    imported = run_cli("models", "import", str(source), "--mode", "link")
    assert imported.returncode == 0 and Path(imported.stdout.strip()) == source.resolve()
    scan = run_cli("models", "import", "--scan")
    assert scan.returncode == 0
    answer = run_cli("chat", "--model", "mine", "--prompt", "hi", "--max-tokens", "2", "--json")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["model"]["path"] == str(source.resolve())


@pytest.mark.parametrize(
    ("defect", "message"),
    [
        ("unknown architecture", "architecture 'notanarch'"),
        ("missing tensor", "the tensor blk.1.ffn_down_exps.weight is missing"),
        ("duplicate tensor", "holds the tensor blk.1.attn_k.weight twice"),
        ("wrong shape", "its tensor blk.0.ffn_gate_exps.weight has the shape"),
    ],
)
def test_plan_names_the_defect_of_a_file_llama_cpp_would_refuse(tmp_path: Path, defect: str, message: str) -> None:
    path = defective_gguf(tmp_path, defect)
    result = run_cli("plan", str(path))
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_import_refuses_a_file_llama_cpp_cannot_load_and_names_the_defect(tmp_path: Path) -> None:
    path = defective_gguf(tmp_path, "missing tensor")
    for mode in ("link", "copy"):
        result = run_cli("models", "import", str(path), "--mode", mode)
        assert result.returncode == 1 and "the tensor blk.1.ffn_down_exps.weight is missing" in result.stderr
    from app.core.models.local import registered
    from app.core.storage import paths

    assert registered() == {} and not (paths.models_dir() / "imported").exists()  # nothing registered or copied
    assert path.exists()  # and the user's file is left where it was


def test_download_connections_option(fake_hub, isolated_home: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.gguf"
    with big.open("wb") as out:  # 130 MiB of zeros, a sparse hole: two 65 MiB ranges
        out.truncate(130 * 2**20)
    fake_hub.add("someone/big", big)
    env = hub_env(fake_hub, isolated_home)
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=120, env=env
    )
    refused = run("models", "download", "someone/big/big.gguf", "--connections", "0")
    assert refused.returncode == 1 and "--connections must be between 1 and 16" in refused.stderr
    assert fake_hub.requested_from == []
    downloaded = run("models", "download", "someone/big/big.gguf", "--connections", "2")
    assert downloaded.returncode == 0, downloaded.stderr
    assert sorted(fake_hub.requested_from) == [("big.gguf", 0), ("big.gguf", 65 * 2**20)]
    assert Path(downloaded.stdout.strip()).stat().st_size == 130 * 2**20
