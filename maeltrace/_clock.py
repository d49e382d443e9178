"""The clocks regions are timed on, and the anchor that places them on the wall clock."""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["ClockAnchor"]


@dataclass(frozen=True, slots=True)
class ClockAnchor:
    """One reading of the wall clock paired with the monotonic clock that times regions.

    Regions are timed with `time.perf_counter_ns`, which never jumps; this pair turns such a
    reading into nanoseconds since the Unix epoch without reading the wall clock per region.

    Attributes:
        wall_time_unix_nano: `time.time_ns` at the anchor.
        perf_counter_ns: `time.perf_counter_ns` at the same instant.
        uncertainty_ns: half the gap between the two monotonic reads around the wall read.
    """

    wall_time_unix_nano: int
    perf_counter_ns: int
    uncertainty_ns: int

    @classmethod
    def take(cls, tries: int = 5) -> ClockAnchor:
        """Reads both clocks, keeping the tightest of a few tries."""
        best: ClockAnchor | None = None
        for _ in range(max(1, tries)):
            before = time.perf_counter_ns()
            wall = time.time_ns()
            after = time.perf_counter_ns()
            half_gap = (after - before) // 2
            if best is None or half_gap < best.uncertainty_ns:
                best = cls(wall, before + half_gap, half_gap)
        assert best is not None
        return best

    def to_unix_nano(self, perf_ns: int) -> int:
        """Converts a `time.perf_counter_ns` reading to ns since the Unix epoch."""
        return self.wall_time_unix_nano + (perf_ns - self.perf_counter_ns)
