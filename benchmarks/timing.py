"""Timing contenders side by side: rounds in rotating order, and ratios of calls made moments apart."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable


def at_least_one(value: str) -> int:
    """An argparse type for counts of timed rounds or requests: a median of none would fail only at the end."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return number


def interleaved(contenders: dict[str, Callable[[int], Any]], rounds: int, *,
                sync: Callable[[], None] = lambda: None,
                log: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each contender; round r calls all of them with r, the order rotating each round so
    that none always runs first (two contenders alternate). `sync` runs inside each timing (a device's queue)."""
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contenders[name](r)
            sync()
            times[name].append(time.perf_counter() - start)
        if log is not None and ((r + 1) % 10 == 0 or r + 1 == rounds):
            log(f"  round {r + 1}/{rounds}, load {os.getloadavg()[0]:.2f}")
    return times


def paired_ratio(times: dict[str, list[float]], top: str, bottom: str) -> float:
    """Median over rounds of top/bottom: each ratio compares calls made moments apart."""
    return round(statistics.median(a / b for a, b in zip(times[top], times[bottom])), 3)
