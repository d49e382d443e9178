"""Old path of `maeltrace.integrations.deep500.timer_torch`, where Deep500's timer_torch lives."""

from __future__ import annotations

from maeltrace.integrations.deep500.timer_torch import CPUGPUTimer, Timer, TimeStats, TimeType

__all__ = ["CPUGPUTimer", "TimeStats", "TimeType", "Timer"]
