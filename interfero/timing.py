"""Wall-clock timing for the benchmarks (``benchmarks/``): the median of repeated runs after a warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """The median wall time (s) of ``repeats`` calls of ``fn``, after one uncounted call if ``warmup``
    (the machine is noisy: medians, not means)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
