"""Old path of Deep500's ``timer``, which lives in `maeltrace.integrations.deep500.timer`."""

from __future__ import annotations

from maeltrace.integrations.deep500.timer import Timer, TimeStats, TimeType

__all__ = ["TimeStats", "TimeType", "Timer"]
