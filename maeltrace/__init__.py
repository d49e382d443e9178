"""maeltrace: time the regions of a training loop on the CPU and GPU clocks, with almost no
overhead, and print the seed report's summary tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

from maeltrace._version import __version__
from maeltrace.errors import (
    DeviceClockWarning,
    ExportWarning,
    MaeltraceError,
    MaeltraceWarning,
    RegionError,
)
from maeltrace.keys import Key, TimeType
from maeltrace.records import Records
from maeltrace.stats import TimeStats
from maeltrace.timer import Region, Timer

if TYPE_CHECKING:
    from maeltrace.report import Summary

__all__ = [
    "DeviceClockWarning",
    "ExportWarning",
    "Key",
    "MaeltraceError",
    "MaeltraceWarning",
    "Records",
    "Region",
    "RegionError",
    "Summary",
    "TimeStats",
    "TimeType",
    "Timer",
    "__version__",
]


def __getattr__(name: str) -> object:
    # The reports (json, csv, tempfile...) load when first read, not with the package.
    if name == "Summary":
        from maeltrace.report import Summary

        return Summary
    raise AttributeError(f"module 'maeltrace' has no attribute {name!r}")
