"""Device clocks: how a region's GPU time is measured, per framework, without stalling the loop.

`DeviceClock` is the interface; `DeviceTimes` is where clocks put what they resolved. The
framework clocks live in their own modules and import their framework only when chosen;
`maeltrace.devices.registry` names them (adding a clock: its module, and one line there).
"""

from __future__ import annotations

from maeltrace.devices.base import DeviceClock, DeviceTimes, SyncedCpuClock
from maeltrace.devices.registry import CLOCK_NAMES, ClockEntry, make_clock, register

__all__ = [
    "CLOCK_NAMES",
    "ClockEntry",
    "DeviceClock",
    "DeviceTimes",
    "SyncedCpuClock",
    "make_clock",
    "register",
]
