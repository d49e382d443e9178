"""maeltrace: time the regions of a training loop on the CPU and GPU clocks, with almost no
overhead, and print the seed report's summary tables."""

from __future__ import annotations

from maeltrace._version import __version__
from maeltrace.errors import MaeltraceError, RegionError
from maeltrace.keys import Key, TimeType
from maeltrace.records import Records
from maeltrace.report import Summary
from maeltrace.stats import TimeStats
from maeltrace.timer import Region, Timer

__all__ = [
    "Key",
    "MaeltraceError",
    "Records",
    "Region",
    "RegionError",
    "Summary",
    "TimeStats",
    "TimeType",
    "Timer",
    "__version__",
]
