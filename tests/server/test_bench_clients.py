"""The API benchmark's statistics and server handling (the servers' speed is measured by running the script,
not here)."""

from __future__ import annotations

import statistics
import subprocess
import sys
from functools import partial

import pytest

from app.server.bench_clients import _start_in_turn, _stop, median_interval


def test_interval_holds_the_median_and_narrows_with_agreeing_rounds() -> None:
    scattered = [0.90, 1.10, 0.95, 1.06, 1.00, 0.93, 1.08]
    agreeing = [0.99, 1.01, 1.00, 1.00, 0.99, 1.01, 1.00]
    low, high = median_interval(scattered)
    assert low <= statistics.median(scattered) <= high
    assert low < 1.0 < high  # rounds this scattered cannot tell a lead from a deficit
    tight = median_interval(agreeing)
    assert tight[1] - tight[0] < (high - low) / 3
    assert median_interval(scattered) == (low, high)  # seeded: one set of rounds, one interval


def test_one_round_gives_no_spread() -> None:
    assert median_interval([1.03]) == (1.03, 1.03)


def _sleeper(started: list[str], name: str) -> tuple[subprocess.Popen[bytes], str]:
    started.append(name)
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]), name


def test_servers_start_in_the_given_turn_and_come_back_in_order() -> None:
    started: list[str] = []
    servers = _start_in_turn([partial(_sleeper, started, "ours"), partial(_sleeper, started, "reference")], first=1)
    try:
        assert started == ["reference", "ours"]  # the second one first, on odd rounds
        assert [url for _process, url in servers] == ["ours", "reference"]
    finally:
        for process, _url in servers:
            _stop(process)
    assert all(process.returncode is not None for process, _url in servers)


def test_a_server_that_fails_to_start_stops_those_already_up() -> None:
    started: list[str] = []
    up: list[subprocess.Popen[bytes]] = []

    def first() -> tuple[subprocess.Popen[bytes], str]:
        process, url = _sleeper(started, "ours")
        up.append(process)
        return process, url

    def broken() -> tuple[subprocess.Popen[bytes], str]:
        raise RuntimeError("The server did not start: llama-server")

    with pytest.raises(RuntimeError, match="did not start"):
        _start_in_turn([first, broken], first=0)
    assert up[0].poll() is not None  # stopped, not left running behind the benchmark
