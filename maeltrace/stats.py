"""Exact summary statistics of region durations.

Durations are integer nanoseconds, so sums, means, variances and interpolated percentiles are
computed in exact integer or rational arithmetic and rounded once, when converted to float
seconds. Pure functions: rendering lives in `maeltrace.report`.

Where the compiled helpers (``maeltrace._hotpath``) are built and ``MAELTRACE_PURE_PYTHON`` is
not set, the samples are sorted and summed in C (radix sort; sums in 128-bit integers, or in
Python where those might not hold them): the same exact values, for ten million samples in
well under a second and without a Python int per sample.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from types import ModuleType

from maeltrace.environment import MAELTRACE_PURE_PYTHON, env_flag

__all__ = ["PERCENTILES", "TimeStats", "compute_stats", "percentile_ns"]

NS_PER_S = 1_000_000_000

PERCENTILES = (90, 95, 99)
"""The percentiles every `TimeStats` carries."""


@dataclass(frozen=True, slots=True)
class TimeStats:
    """Summary of the durations recorded under one key, in seconds.

    The first five fields are the seed's; ``stdev`` is the sample standard deviation (0.0 for a
    single sample). Percentiles interpolate linearly between order statistics, as
    ``numpy.percentile`` does by default and ``statistics.quantiles(method="inclusive")`` does.

    Attributes:
        min: shortest duration.
        mean: arithmetic mean.
        median: middle value (mean of the two middle values for an even count).
        max: longest duration.
        stdev: sample standard deviation.
        count: number of durations.
        total: their sum.
        p90: 90th percentile.
        p95: 95th percentile.
        p99: 99th percentile.
    """

    min: float
    mean: float
    median: float
    max: float
    stdev: float
    count: int
    total: float
    p90: float
    p95: float
    p99: float

    def __str__(self) -> str:
        return (
            f"min: {self.min:.5f} mean: {self.mean:.5f} median: {self.median:.5f}"
            f" max: {self.max:.5f} stdev: {self.stdev:.5f}"
        )

    def to_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict, seconds for times."""
        return asdict(self)


def _seconds(ns: int | Fraction) -> float:
    # int / int and Fraction -> float are both correctly rounded.
    return float(Fraction(ns) / NS_PER_S)


def percentile_ns(ordered: Sequence[int], percent: int | Fraction) -> Fraction:
    """The linearly interpolated percentile of sorted nanosecond durations, exactly.

    Raises:
        ValueError: ``ordered`` is empty or ``percent`` is outside [0, 100].
    """
    if not ordered:
        raise ValueError("percentile of no samples")
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must lie in [0, 100], not {percent}")
    position = Fraction(percent) * (len(ordered) - 1) / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _compiled() -> ModuleType | None:
    """The compiled helpers, unless absent or ``MAELTRACE_PURE_PYTHON`` asks for none."""
    if env_flag(MAELTRACE_PURE_PYTHON):
        return None
    try:
        from maeltrace import _hotpath
    except ImportError:
        return None
    return _hotpath


def _sorted_with_sums(durations_ns: Sequence[int]) -> tuple[Sequence[int], int, int]:
    """The durations sorted, their sum and the sum of their squares, all exact."""
    compiled = _compiled()
    if compiled is not None:
        try:
            # A copy in any case: the caller's sequence is left as it was.
            ordered = array("q", durations_ns)
        except (OverflowError, TypeError):  # beyond int64, or not ints: Python handles it
            pass
        else:
            compiled.sort_int64(ordered)
            sums = compiled.sums_int64(ordered)
            if sums is not None:
                return ordered, sums[0], sums[1]
            return ordered, sum(ordered), sum(x * x for x in ordered)
    ordered_list = sorted(durations_ns)
    return ordered_list, sum(ordered_list), sum(x * x for x in ordered_list)


def compute_stats(durations_ns: Sequence[int]) -> TimeStats:
    """Summarises integer nanosecond durations.

    Raises:
        ValueError: no durations were given.
    """
    n = len(durations_ns)
    if n == 0:
        raise ValueError("cannot summarise zero samples")
    ordered, total, square_sum = _sorted_with_sums(durations_ns)
    if n > 1:
        # Sample variance in exact integers: (n*sum(x^2) - sum(x)^2) / (n*(n-1)).
        variance = Fraction(n * square_sum - total * total, n * (n - 1))
        stdev = math.sqrt(variance) / NS_PER_S
    else:
        stdev = 0.0
    middle = n // 2
    median = ordered[middle] if n % 2 else Fraction(ordered[middle - 1] + ordered[middle], 2)
    p90, p95, p99 = (_seconds(percentile_ns(ordered, p)) for p in PERCENTILES)
    return TimeStats(
        min=_seconds(ordered[0]),
        mean=_seconds(Fraction(total, n)),
        median=_seconds(median),
        max=_seconds(ordered[-1]),
        stdev=stdev,
        count=n,
        total=_seconds(total),
        p90=p90,
        p95=p95,
        p99=p99,
    )
