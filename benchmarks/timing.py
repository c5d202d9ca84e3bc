"""Timing helpers for a noisy shared machine: interleaved rounds, medians and percentiles."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Comparison:
    """Seconds per call of each candidate, one sample per round, rounds interleaved."""

    samples: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratio(self, name: str, reference: str) -> float:
        """Median of the per-round ratios: each round times both candidates within moments of each
        other, so a burst of load from another process hits both and cancels out."""
        return statistics.median(a / b for a, b in zip(self.samples[name], self.samples[reference]))

    def to_dict(self) -> dict[str, Any]:
        return {
            name: {"median_s": self.median(name), "min_s": min(s), "max_s": max(s), "rounds": len(s)}
            for name, s in self.samples.items()
        }


def compare(
    candidates: dict[str, Callable[[], object]], rounds: int, calls_per_round: int, warmup: int = 3
) -> Comparison:
    """Time each candidate `calls_per_round` times per round, for `rounds` rounds, in rotating order."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    names = list(candidates)
    result = Comparison({name: [] for name in names})
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = candidates[name]
            start = time.perf_counter()
            for _ in range(calls_per_round):
                fn()
            result.samples[name].append((time.perf_counter() - start) / calls_per_round)
    return result


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, like numpy's default."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
