"""Old path of Deep500's ``timer_tf``, which lives in `maeltrace.integrations.deep500.timer_tf`."""

from __future__ import annotations

from maeltrace.integrations.deep500.timer_tf import (
    CPUGPUTimer,
    Timer,
    TimerCallback,
    TimeStats,
    TimeType,
)

__all__ = ["CPUGPUTimer", "TimeStats", "TimeType", "Timer", "TimerCallback"]
