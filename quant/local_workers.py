"""llama.cpp RPC workers on 127.0.0.1 for checks and tests: ``mixtral-desk rpc-worker`` in its own process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(*options: str, timeout: float = 30.0) -> tuple[subprocess.Popen[str], str]:
    """Start a worker with ``options`` (``--mem 1GiB``, ``--threads 2``, ...; one thread unless told); return
    its process and address once it answers.

    Raises:
        RuntimeError: the worker exited or did not answer within ``timeout`` seconds.
    """
    from app.core.planning.rpc_workers import RpcWorkerError, probe_worker

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "rpc-worker", "--port", str(port), "--threads", "1", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:  # the worker names its transport just before it listens
        if "transport" in line:
            break
    else:
        raise RuntimeError(f"the RPC worker did not start (exit {process.wait()})")
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:  # that line comes just before the port opens: ask until it answers
        try:
            probe_worker(address, timeout=timeout)
            return process, address
        except RpcWorkerError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"the RPC worker at {address} did not answer") from None
            time.sleep(0.02)


@contextmanager
def local_workers(*limits: str, threads: int = 1) -> Iterator[list[str]]:
    """Workers with these memory limits ("" = unlimited) for the duration of the block; their addresses."""
    started = [start_worker("--threads", str(threads), *(("--mem", limit) if limit else ())) for limit in limits]
    try:
        yield [address for _, address in started]
    finally:
        for process, _ in started:
            process.kill()
            process.wait()
