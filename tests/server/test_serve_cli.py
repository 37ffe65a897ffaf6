"""`mixtral-desk serve` as a process: the key from a file, and SIGTERM ends it within 5 s mid-stream, the
stream closed cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from app.server.run import free_port

SECRET = "from-a-file"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_sigterm_ends_the_server_within_five_seconds_while_a_reply_streams(demo_model: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    port = free_port()
    command = ["serve", "--model", str(demo_model), "--port", str(port), "--ctx", "1024", "--api-key-file"]
    process = subprocess.Popen(
        [sys.executable, "-m", "app", *command, str(key_file)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MIXTRAL_DESK_API_KEY": "not-this-one"},
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # the server says where it serves once the model is loaded
            if "Serving" in line:
                break
        url = f"http://127.0.0.1:{port}"
        # uvicorn binds just after that line: the client retries refused connections with its own backoff
        with httpx.Client(transport=httpx.HTTPTransport(retries=8)) as http:
            assert http.get(url + "/health", timeout=5).status_code == 200
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="not-this-one", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        client = openai.OpenAI(base_url=url + "/v1", api_key=SECRET, max_retries=0, timeout=60)
        first_text, ended = threading.Event(), threading.Event()
        outcome: list[object] = []

        def read() -> None:
            try:
                stream = client.chat.completions.create(
                    model=demo_model.stem,
                    messages=[{"role": "user", "content": "Tell me a very long story."}],
                    max_tokens=3000,
                    stream=True,
                )
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        first_text.set()
                outcome.append("ended")
            except Exception as err:  # the connection closed under it: also an end
                outcome.append(err)
            finally:
                first_text.set()
                ended.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert first_text.wait(60) and not ended.is_set()
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) is not None
        took = time.monotonic() - started
        assert ended.wait(5)
        assert took < 5.0, f"SIGTERM took {took:.1f} s"
        assert outcome, "the stream did not end"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
