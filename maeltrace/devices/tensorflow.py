"""TensorFlow: device time through a device synchronisation at region boundaries.

TensorFlow exposes no CUDA events or streams to Python, so the only honest device time is to
wait for the device (``tf.test.experimental.sync_devices()``) when a region opens and when it
closes: the GPU row then spans the region's work until the device finished it. Each sync
drains the device's queue, which costs the overlap of host and device work at that point (on
our CPU machines a sync took about 15 µs with an idle device). ``sync_every=N`` measures only
every N-th region of each key; the others carry CPU time only.
"""

from __future__ import annotations

from time import perf_counter_ns
from typing import TYPE_CHECKING, TypeVar

import tensorflow as tf

from maeltrace.devices.base import DeviceClock, DeviceTimes, SyncedCpuClock

if TYPE_CHECKING:
    from maeltrace.devices.registry import ClockOptions

__all__ = ["TfSyncClock", "tf_clock"]

T = TypeVar("T")


class TfSyncClock:
    """Device time from ``sync_devices()`` around every ``sync_every``-th region of a key.

    Args:
        times: where resolved times go.
        sync_every: measure every N-th region of each key (1: all).
    """

    name = "tf-sync"
    host_offset_ns = 0

    def __init__(self, times: DeviceTimes, sync_every: int = 1) -> None:
        if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
            raise ValueError(f"sync_every must be a positive int, not {sync_every!r}")
        self._times = times
        self._sync_every = sync_every
        self._counts: dict[int, int] = {}
        self.host_syncs = 0
        devices = ", ".join(d.name for d in tf.config.list_logical_devices()) or "none"
        every = "every region" if sync_every == 1 else f"every {sync_every}th region of a key"
        self.description = (
            f"tf.test.experimental.sync_devices() at both ends of {every} (devices: {devices})"
        )
        if not tf.config.list_logical_devices("GPU"):
            self.description += "; no GPU: the CPU clock of synchronous CPU work"

    def _sync(self) -> int:
        tf.test.experimental.sync_devices()
        self.host_syncs += 1
        return perf_counter_ns()

    def open(self, key_id: int) -> object:
        count = self._counts.get(key_id, 0)
        self._counts[key_id] = count + 1
        if count % self._sync_every:
            return None
        return self._sync()

    def close(self, seq: int, handle: object, status: int) -> None:
        if isinstance(handle, int):
            self._times.add(seq, handle, self._sync() - handle)

    def block(self, handle: object, value: T) -> T:
        return value  # close waits for the device anyway

    def poll(self) -> None:
        return None

    def flush(self) -> None:
        return None


def tf_clock(times: DeviceTimes, options: ClockOptions) -> DeviceClock:
    """The ``tensorflow`` entry of `maeltrace.devices.registry`: `TfSyncClock` where TensorFlow
    sees a GPU; else `SyncedCpuClock`, which records no device times."""
    if not tf.config.list_logical_devices("GPU"):
        return SyncedCpuClock(times, "TensorFlow sees no GPU")
    return TfSyncClock(times, sync_every=options.sync_every)
