"""interfero.timing: the benchmarks' median of repeated runs."""

from __future__ import annotations

import pytest

import interfero.timing as timing


def test_median_seconds_counts_only_the_repeats_after_a_warm_up(monkeypatch):
    clock = iter([0.0, 5.0, 10.0, 11.0, 20.0, 22.0])  # the calls take 5, 1 and 2 s; the warm-up is not timed
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    calls = []
    assert timing.median_seconds(lambda: calls.append(1), 3) == 2.0
    assert len(calls) == 4
    with pytest.raises(ValueError, match="repeats"):
        timing.median_seconds(lambda: None, 0)
