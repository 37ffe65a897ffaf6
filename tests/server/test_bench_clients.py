"""The API benchmark's statistics (the servers themselves are measured by running the script, not here)."""

from __future__ import annotations

import statistics

from app.server.bench_clients import median_interval


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
