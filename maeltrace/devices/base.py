"""The device-clock interface, the store of resolved device times, and the CPU stand-in clock."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from maeltrace.records import FLAG_COMPILED, SeqValues

if TYPE_CHECKING:
    from maeltrace.devices.registry import ClockOptions

__all__ = [
    "CLOCK_NAMES",
    "FLAG_COMPILED",
    "DeviceClock",
    "DeviceClockFactory",
    "DeviceTimes",
    "SyncedCpuClock",
    "block_any",
    "cpu_clock",
    "make_clock",
]

T = TypeVar("T")


class DeviceTimes(SeqValues):
    """Resolved device times, appended by a clock from any thread, and the peak device memory
    of regions where the clock measures it.

    A `maeltrace.records.SeqValues` of (start, duration, flags), 32 bytes per GPU region.
    ``start`` is on the clock's own time base: `DeviceClock.host_offset_ns` moves it onto the
    `time.perf_counter_ns` clock.
    """

    __slots__ = ("_memory",)

    def __init__(self) -> None:
        super().__init__(3)
        self._memory = SeqValues(1)

    def add(self, seq: int, start_ns: int, duration_ns: int, flags: int = 0) -> None:  # type: ignore[override]
        """Records the device time of the region with sequence number ``seq``."""
        super().add(seq, start_ns, duration_ns, flags)

    def by_seq(self, *, summed: bool = False) -> dict[int, tuple[int, int, int]]:  # type: ignore[override]
        """seq -> (start, duration, flags), for merging into `maeltrace.Records`."""
        return super().by_seq(summed=summed)  # type: ignore[return-value]  # width 3

    def add_memory(self, seq: int, peak_bytes: int) -> None:
        """Records the peak device memory of the region with sequence number ``seq``."""
        self._memory.add(seq, peak_bytes)

    def memory_by_seq(self) -> dict[int, int]:
        """seq -> peak device memory in bytes."""
        return {seq: values[0] for seq, values in self._memory.by_seq().items()}

    def clear(self) -> None:
        """Drops every resolved time and memory figure."""
        super().clear()
        self._memory.clear()


class DeviceClock(Protocol):
    """Measures the device time of regions opened with ``gpu=True``.

    The timer calls `open` before the region's CPU start and `close` after its CPU end, on the
    region's thread; the clock puts each resolved time into the `DeviceTimes` it was built
    with, when it can do so without stalling (`poll`) or, at the latest, in `flush`.

    Attributes:
        name: short name of the clock, written next to every GPU row.
        description: what the clock measures, for the report's footnote.
        host_syncs: host synchronisations the clock has made so far.
        host_offset_ns: add to a resolved start to place it on the perf_counter clock.
    """

    name: str
    description: str
    host_syncs: int
    host_offset_ns: int

    def open(self, key_id: int) -> object:
        """Starts a measurement; returns its handle (None to measure nothing)."""
        ...

    def close(self, seq: int, handle: object, status: int) -> None:
        """Ends the measurement of region ``seq``."""
        ...

    def block(self, handle: object, value: T) -> T:
        """Waits until ``value`` is computed on the device; returns it."""
        ...

    def poll(self) -> None:
        """Resolves what has completed, without waiting."""
        ...

    def flush(self) -> None:
        """Waits for every outstanding measurement and resolves it."""
        ...


DeviceClockFactory = Callable[[DeviceTimes], DeviceClock]


class SyncedCpuClock:
    """The stand-in for a device clock where no GPU is present: it records no device times.

    Without a GPU, a device time would only repeat the region's CPU time (framework operations
    on the CPU run synchronously, or are waited for with `block`), so ``gpu=True`` regions get
    their CPU time only: no GPU rows, ``[gpu]`` spans or ``/gpu`` metrics. The summary's
    metadata carries ``no_gpu_reason``, and the report says why in one line.

    Args:
        times: where resolved times would go (nothing goes there).
        reason: why there is no GPU, in a few words (``torch sees no CUDA device``).
    """

    name = "cpu-sync"
    host_syncs = 0
    host_offset_ns = 0

    def __init__(self, times: DeviceTimes, reason: str = "no GPU") -> None:
        self._times = times
        self.no_gpu_reason = reason
        self.description = f"no GPU ({reason}): gpu=True regions have CPU times only"

    def open(self, key_id: int) -> object:
        return None

    def close(self, seq: int, handle: object, status: int) -> None:
        return None

    def block(self, handle: object, value: T) -> T:
        return block_any(value)

    def poll(self) -> None:
        return None

    def flush(self) -> None:
        return None


def block_any(value: T) -> T:
    """Waits for ``value`` with the framework that made it, where one does that."""
    jax = sys.modules.get("jax")
    if jax is not None:
        return jax.block_until_ready(value)  # type: ignore[no-any-return]  # jax is untyped here
    return value


def cpu_clock(times: DeviceTimes, options: ClockOptions) -> DeviceClock:
    """The ``cpu`` clock: `SyncedCpuClock`, recording no device times."""
    return SyncedCpuClock(times, "no framework imported")


# The old import path of the clock choice, which now lives in the registry.
from maeltrace.devices.registry import CLOCK_NAMES, make_clock  # noqa: E402
