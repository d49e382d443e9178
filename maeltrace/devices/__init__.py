"""Device clocks: how a region's GPU time is measured, per framework, without stalling the loop.

`DeviceClock` is the interface; `DeviceTimes` is where clocks put what they resolved. The
framework clocks live in their own modules and import their framework only when chosen.
"""

from __future__ import annotations

from maeltrace.devices.base import (
    CLOCK_NAMES,
    DeviceClock,
    DeviceTimes,
    SyncedCpuClock,
    make_clock,
)

__all__ = ["CLOCK_NAMES", "DeviceClock", "DeviceTimes", "SyncedCpuClock", "make_clock"]
