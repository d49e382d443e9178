"""ToyClock: a device clock registered by tests, on which every region lasts one microsecond."""

from __future__ import annotations

from typing import TypeVar

from maeltrace.devices.base import DeviceTimes
from maeltrace.devices.registry import ClockOptions

T = TypeVar("T")

TICK_NS = 1_000
"""Device time of every region on the toy clock."""


class ToyClock:
    """Puts each region at the next tick of a counter, one `TICK_NS` long.

    Args:
        times: where resolved times go.
        sync_every: the timer's option, kept to show that the options reach the factory.
    """

    name = "toy"
    description = "a toy device whose regions each take one microsecond"
    host_syncs = 0
    host_offset_ns = 0

    def __init__(self, times: DeviceTimes, sync_every: int) -> None:
        self._times = times
        self._ticks = 0
        self.sync_every = sync_every

    def open(self, key_id: int) -> object:
        self._ticks += 1
        return self._ticks * TICK_NS

    def close(self, seq: int, handle: object, status: int) -> None:
        assert isinstance(handle, int)
        self._times.add(seq, handle, TICK_NS)

    def block(self, handle: object, value: T) -> T:
        return value

    def poll(self) -> None:
        return None

    def flush(self) -> None:
        return None


def make(times: DeviceTimes, options: ClockOptions) -> ToyClock:
    """The factory the tests register as ``tests.fakes.toy_clock:make``."""
    return ToyClock(times, options.sync_every)


def gpu_in_use() -> bool:
    """A ``gpu_probe`` of a framework with a GPU in use."""
    return True


def no_gpu() -> bool:
    """A ``gpu_probe`` of a framework without one."""
    return False
