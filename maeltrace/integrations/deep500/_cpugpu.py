"""Deep500's ``CPUGPUTimer``, on one maeltrace timer with a device clock."""

from __future__ import annotations

from maeltrace.integrations.deep500.timer import Timer
from maeltrace.keys import Key

__all__ = ["CPUGPUTimer"]


class CPUGPUTimer(Timer):
    """Times regions on the CPU clock and, with ``gpu=True``, on the device clock too.

    Unlike Deep500's, which kept a CPU and a GPU timer side by side, one region started with
    ``gpu=True`` gives both its CPU and its GPU row; starting the same key twice at once (once
    for each clock) raises `maeltrace.RegionError`: start it once, with ``gpu=True``. Without
    a GPU it works instead of raising: GPU rows use the CPU clock, with one
    `maeltrace.errors.DeviceClockWarning` here, and the report names the clock.
    """

    _framework = "cpu"

    def __init__(self) -> None:
        super().__init__(device=self._framework)
        self.use_device()
        end_region = self.end

        def end(key: Key, gpu: bool = False) -> None:
            end_region(key)  # the region knows whether it measures the device

        self.end = end  # type: ignore[method-assign]  # Deep500's signature, bound once
