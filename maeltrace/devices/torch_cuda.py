"""PyTorch: CUDA events from a growing pool, resolved lazily, never stalling the loop."""

from __future__ import annotations

import threading
import weakref
from collections import deque
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch

from maeltrace.devices.base import DeviceClock, DeviceTimes, SyncedCpuClock

if TYPE_CHECKING:
    from maeltrace.devices.registry import ClockOptions

__all__ = ["DEFAULT_MAX_OUTSTANDING", "CudaEventClock", "PeakMemory", "torch_clock"]

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
    """What the clock needs of ``torch.cuda``; tests pass a fake GPU instead.

    The two allocator calls are made only when the clock measures peak memory.
    """

    def Event(self, enable_timing: bool = ...) -> Event: ...  # torch's name
    def memory_stats_as_nested_dict(self) -> dict[str, Any]: ...
    def reset_peak_memory_stats(self) -> None: ...


class _Frame:
    """An open gpu region whose peak memory is measured: its start event and its peak so far."""

    __slots__ = ("__weakref__", "peak_bytes", "start")

    def __init__(self, start: Event) -> None:
        self.start = start
        self.peak_bytes = 0


class PeakMemory:
    """The peak of the CUDA caching allocator's allocated bytes over each open region, read from
    its statistics on the host: no host synchronisation.

    The allocator has one peak per device, which `open` resets so a region sees only its own
    peak. Before resetting, `open` credits the peak so far to every region still open, on any
    thread, and `close` credits its reading to every open region as well, so an outer region
    keeps the peaks its inner regions reset. A reset sets the peak to the bytes allocated now
    (as the caching allocator does), so a region's peak counts the tensors alive when it opened.
    The allocator counts a tensor when the host asks for it, not when the GPU runs the kernel
    using it, so the figure is known at the region's end without waiting for the device. With
    torch's ``cudaMallocAsync`` allocator backend these statistics, and so the peaks, are zero.

    Regions running at the same time on other threads share the one allocator: each region's
    peak is then the peak of the whole device while it was open. An allocation on another thread
    between a read and the following reset (a few microseconds) can be missed.

    Per region: a reset at ``open``, preceded by a read when another region is open, and a read at
    ``close``. A read is ``torch.cuda.memory_stats_as_nested_dict()``, one call into the
    allocator returning its statistics as a nested dict; ``max_memory_allocated()`` builds the
    same dict and then flattens and sorts it in Python, which costs more.

    Args:
        cuda: ``torch.cuda`` or a stand-in with the allocator calls of `CudaApi`.
    """

    def __init__(self, cuda: CudaApi) -> None:
        self._cuda = cuda
        # Weak: a region that is discarded, not closed, drops out with its handle.
        self._open: weakref.WeakSet[_Frame] = weakref.WeakSet()
        self._lock = threading.Lock()

    def _read(self) -> int:
        """The allocator's peak allocated bytes since its last reset; 0 before CUDA starts."""
        stats = self._cuda.memory_stats_as_nested_dict()
        try:
            return int(stats["allocated_bytes"]["all"]["peak"])
        except KeyError:  # CUDA not initialised yet: the allocator has no statistics
            return 0

    def _credit(self, peak_bytes: int) -> None:
        for frame in self._open:
            if peak_bytes > frame.peak_bytes:
                frame.peak_bytes = peak_bytes

    def open(self, start: Event) -> _Frame:
        """Starts measuring a region: credits the open regions, then resets the peak."""
        frame = _Frame(start)
        with self._lock:
            if self._open:
                self._credit(self._read())
            self._cuda.reset_peak_memory_stats()
            self._open.add(frame)
        return frame

    def close(self, frame: _Frame) -> int:
        """Ends measuring ``frame``'s region; returns its peak allocated bytes."""
        with self._lock:
            self._credit(self._read())
            self._open.discard(frame)
        return frame.peak_bytes


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

    With ``memory``, each region's peak allocated device memory (`PeakMemory`) also goes to
    ``times`` (`DeviceTimes.add_memory`) when the region closes; without it, the clock makes no
    allocator call.

    Args:
        times: where resolved times go.
        cuda: ``torch.cuda`` or a stand-in with ``Event`` (and the allocator calls of `CudaApi`
            when ``memory`` is on).
        max_outstanding: regions that may wait for the GPU before the timer waits.
        memory: also measure each region's peak device memory.
    """

    name = "cuda-event"

    def __init__(
        self,
        times: DeviceTimes,
        cuda: CudaApi | None = None,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
        memory: bool = False,
    ) -> None:
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be at least 1, not {max_outstanding}")
        self._times = times
        self._cuda: Any = cuda if cuda is not None else torch.cuda
        self._max_outstanding = max_outstanding
        self._peaks = PeakMemory(self._cuda) if memory else None
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
        if memory:
            self.description += "; peak memory from the CUDA caching allocator's statistics"

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
        if self._peaks is None:
            return event
        return self._peaks.open(event)

    def close(self, seq: int, handle: object, status: int) -> None:
        end = self._event()
        end.record()
        if self._peaks is not None:
            assert isinstance(handle, _Frame)  # our own handle
            self._times.add_memory(seq, self._peaks.close(handle))
            handle = handle.start
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

    The ``torch`` entry of `maeltrace.devices.registry`; of its options it reads ``memory``
    (peak device memory per region, `PeakMemory`).
    """
    if torch.cuda.is_available():
        return CudaEventClock(times, memory=options is not None and options.memory)
    return SyncedCpuClock(times, "torch sees no CUDA device")
