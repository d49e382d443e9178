"""PyTorch: CUDA events from a growing pool, resolved lazily, never stalling the loop."""

from __future__ import annotations

from collections import deque
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch

from maeltrace.devices.base import DeviceClock, DeviceTimes, SyncedCpuClock

if TYPE_CHECKING:
    from maeltrace.devices.registry import ClockOptions

__all__ = ["DEFAULT_MAX_OUTSTANDING", "CudaEventClock", "torch_clock"]

T = TypeVar("T")

DEFAULT_MAX_OUTSTANDING = 8192
"""Regions whose events may wait for the GPU before the timer waits for the oldest one."""

POLL_BATCH = 16
"""Most events resolved per region end, so resolution work per region stays bounded."""


class Event(Protocol):
    """What the clock needs of ``torch.cuda.Event(enable_timing=True)``."""

    def record(self) -> None: ...
    def query(self) -> bool: ...
    def synchronize(self) -> None: ...
    def elapsed_time(self, end_event: Any) -> float: ...


class CudaApi(Protocol):
    """What the clock needs of ``torch.cuda``; tests pass a fake GPU instead."""

    def Event(self, enable_timing: bool = ...) -> Event: ...  # torch's name


class CudaEventClock:
    """Device time from a pair of CUDA events around each region, on the current stream.

    ``open`` records a start event and ``close`` an end event; neither waits. Each region end
    then queries the oldest outstanding end events (`POLL_BATCH` at most) and resolves those
    the GPU has passed, in order, returning their events to the pool; the pool grows only while
    the GPU is behind. If more than ``max_outstanding`` regions are waiting, the timer waits
    for the oldest (a host synchronisation, counted in `host_syncs`): the GPU is then so far
    behind that the loop would soon block on it anyway. `flush` waits once for what is
    outstanding, and not at all when nothing is.

    Start times are placed on the host clock through a reference event: the first event
    recorded; `flush` measures its host time with one more event after the wait.

    Args:
        times: where resolved times go.
        cuda: ``torch.cuda`` or a stand-in with ``Event``.
        max_outstanding: regions that may wait for the GPU before the timer waits.
    """

    name = "cuda-event"

    def __init__(
        self,
        times: DeviceTimes,
        cuda: CudaApi | None = None,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
    ) -> None:
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be at least 1, not {max_outstanding}")
        self._times = times
        self._cuda: Any = cuda if cuda is not None else torch.cuda
        self._max_outstanding = max_outstanding
        self._pool: list[Event] = []
        self._pending: deque[tuple[int, Event, Event]] = deque()
        self._reference: Event | None = None
        self._calibrated = False
        self.events_created = 0
        self.host_syncs = 0
        self.host_offset_ns = 0
        self.description = "CUDA events (torch.cuda.Event) on the current stream"
        if cuda is None and torch.cuda.is_available():
            self.description += f", {torch.cuda.get_device_name()}"

    def _event(self) -> Event:
        if self._pool:
            return self._pool.pop()
        self.events_created += 1
        event: Event = self._cuda.Event(enable_timing=True)
        return event

    @property
    def outstanding(self) -> int:
        """Regions whose end event the GPU has not passed (as far as last seen)."""
        return len(self._pending)

    def open(self, key_id: int) -> object:
        if self._reference is None:
            self._reference = self._cuda.Event(enable_timing=True)
            self.events_created += 1
            self._reference.record()
        event = self._event()
        event.record()
        return event

    def close(self, seq: int, handle: object, status: int) -> None:
        end = self._event()
        end.record()
        self._pending.append((seq, handle, end))  # type: ignore[arg-type]  # our own handle
        self.poll()
        if len(self._pending) > self._max_outstanding:
            self._pending[0][2].synchronize()
            self.host_syncs += 1
            self.poll()

    def block(self, handle: object, value: T) -> T:
        return value  # events time the stream; nothing to wait for on the host

    def poll(self) -> None:
        pending = self._pending
        for _ in range(POLL_BATCH):
            if not pending or not pending[0][2].query():
                return
            self._resolve(*pending.popleft())

    def _resolve(self, seq: int, start: Event, end: Event) -> None:
        assert self._reference is not None
        duration_ns = round(start.elapsed_time(end) * 1e6)
        offset_ns = round(self._reference.elapsed_time(start) * 1e6)
        self._times.add(seq, offset_ns, duration_ns)
        self._pool.append(start)
        self._pool.append(end)

    def flush(self) -> None:
        if self._reference is None or (self._calibrated and not self._pending):
            return  # nothing to wait for: reading a report twice costs no second sync
        # One wait covers both: the marker runs after every event recorded before it.
        marker = self._event()
        marker.record()
        marker.synchronize()
        host_ns = perf_counter_ns()
        self.host_syncs += 1
        while self._pending:
            self._resolve(*self._pending.popleft())
        # The GPU was idle when the marker ran, so it ran at about host_ns.
        self.host_offset_ns = host_ns - round(self._reference.elapsed_time(marker) * 1e6)
        self._calibrated = True
        self._pool.append(marker)


def torch_clock(times: DeviceTimes, options: ClockOptions | None = None) -> DeviceClock:
    """CUDA events where torch sees a GPU; else `SyncedCpuClock`, which records no device times.

    The ``torch`` entry of `maeltrace.devices.registry`; it takes no options.
    """
    if torch.cuda.is_available():
        return CudaEventClock(times)
    return SyncedCpuClock(times, "torch sees no CUDA device")
