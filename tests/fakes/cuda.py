"""FakeCudaDevice, a fake of ``torch.cuda``'s events, and FakeGpuClock, for machines without a GPU.

The fake models one stream: events complete in the order they were recorded, and only as far
as the test lets the "GPU" run (`FakeCudaDevice.run`). A blocking call (``synchronize``) runs it
up to that event and is counted as a host synchronisation, which is what the tests check.
Event ``i`` (in recording order) completes at ``i`` milliseconds of device time.

It also fakes the caching allocator's statistics: tests allocate and free bytes
(`FakeCudaDevice.allocate`, `FakeCudaDevice.free`) and the fake keeps the current and peak
allocated bytes as torch's allocator does, counting every allocator call the clock makes.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, TypeVar

from maeltrace.devices.base import DeviceTimes

if TYPE_CHECKING:
    from maeltrace.devices.registry import ClockOptions
    from maeltrace.devices.torch_cuda import CudaEventClock

T = TypeVar("T")


class FakeCudaEvent:
    """Stands in for ``torch.cuda.Event(enable_timing=True)``."""

    def __init__(self, device: FakeCudaDevice) -> None:
        self._device = device
        self.index = -1

    def record(self) -> None:
        self.index = self._device.enqueue()

    def query(self) -> bool:
        self._device.queries += 1
        return 0 <= self.index < self._device.completed

    def synchronize(self) -> None:
        self._device.host_syncs += 1
        self._device.completed = max(self._device.completed, self.index + 1)

    def elapsed_time(self, end_event: FakeCudaEvent) -> float:
        if not (self.query() and end_event.query()):
            raise RuntimeError("elapsed_time() needs both events completed")  # as torch does
        return float(end_event.index - self.index)


class FakeCudaDevice:
    """Stands in for the ``torch.cuda`` module: ``Event``, the allocator's statistics, and the
    counters tests read.

    Attributes:
        recorded: events recorded so far (the stream's length).
        completed: events the device has finished.
        host_syncs: blocking waits the host made.
        created: event objects created.
        queries: non-blocking completion queries made.
        allocated_bytes: bytes allocated now.
        peak_bytes: most bytes allocated since the last peak reset.
        allocator_calls: statistics reads and peak resets made.
    """

    def __init__(self) -> None:
        self.recorded = 0
        self.completed = 0
        self.host_syncs = 0
        self.created = 0
        self.queries = 0
        self.allocated_bytes = 0
        self.peak_bytes = 0
        self.allocator_calls = 0

    def allocate(self, nbytes: int) -> None:
        """Allocates ``nbytes``, as creating a tensor does (on the host, before the GPU runs)."""
        self.allocated_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.allocated_bytes)

    def free(self, nbytes: int) -> None:
        """Frees ``nbytes``; the peak stays."""
        assert nbytes <= self.allocated_bytes
        self.allocated_bytes -= nbytes

    def memory_stats_as_nested_dict(self) -> dict[str, Any]:
        """The ``allocated_bytes`` part of torch's nested allocator statistics."""
        self.allocator_calls += 1
        return {
            "allocated_bytes": {"all": {"current": self.allocated_bytes, "peak": self.peak_bytes}}
        }

    def reset_peak_memory_stats(self) -> None:
        """Sets the peak to the bytes allocated now, as torch's caching allocator does."""
        self.allocator_calls += 1
        self.peak_bytes = self.allocated_bytes

    def max_memory_allocated(self) -> int:
        """The peak since the last reset, as ``torch.cuda.max_memory_allocated``."""
        return int(self.memory_stats_as_nested_dict()["allocated_bytes"]["all"]["peak"])

    def Event(self, enable_timing: bool = True) -> FakeCudaEvent:  # torch's name
        assert enable_timing
        self.created += 1
        return FakeCudaEvent(self)

    def enqueue(self) -> int:
        self.recorded += 1
        return self.recorded - 1

    def run(self, events: int | None = None) -> None:
        """Lets the device finish ``events`` more events (all recorded ones by default)."""
        target = self.recorded if events is None else self.completed + events
        self.completed = min(self.recorded, target)


class FakeGpuClock:
    """A fake GPU that runs each region's work as the CPU does: its device time is the region's
    CPU time, as the CPU stand-in clock measured before it stopped recording device times.

    Tests of what GPU rows become (tables, ``[gpu]`` spans, ``/gpu`` metrics, Chrome tracks) use
    it where no GPU is present; it measures nothing a real device did.

    Args:
        times: where resolved times go.
    """

    name = "fake-gpu"
    description = "a fake GPU: the region's CPU time, time.perf_counter_ns around it"
    host_syncs = 0
    host_offset_ns = 0

    def __init__(self, times: DeviceTimes) -> None:
        self._times = times

    def open(self, key_id: int) -> object:
        return perf_counter_ns()

    def close(self, seq: int, handle: object, status: int) -> None:
        assert isinstance(handle, int)
        self._times.add(seq, handle, perf_counter_ns() - handle)

    def block(self, handle: object, value: T) -> T:
        return value

    def poll(self) -> None:
        return None

    def flush(self) -> None:
        return None


def fake_gpu_clock(times: DeviceTimes) -> FakeGpuClock:
    """A device-clock factory for ``Timer(device=fake_gpu_clock)``: `FakeGpuClock`."""
    return FakeGpuClock(times)


def fake_cuda_clock(times: DeviceTimes, options: ClockOptions | None = None) -> CudaEventClock:
    """A registry factory (`maeltrace.devices.registry.ClockBuilder`): the CUDA-event clock on
    a new `FakeCudaDevice` (the clock's ``_cuda``), a GPU in use for tests of the clock's choice
    and of the timer's options; it measures peak memory when ``options.memory`` (imports torch).
    """
    from maeltrace.devices.torch_cuda import CudaEventClock

    memory = options is not None and options.memory
    return CudaEventClock(times, cuda=FakeCudaDevice(), memory=memory)


def cuda_clock_on(
    device: FakeCudaDevice, *, memory: bool = False
) -> Callable[[DeviceTimes], CudaEventClock]:
    """A device-clock factory for ``Timer(device=...)``: the CUDA-event clock on ``device``,
    measuring peak memory when ``memory`` (imports torch)."""
    from maeltrace.devices.torch_cuda import CudaEventClock

    def factory(times: DeviceTimes) -> CudaEventClock:
        return CudaEventClock(times, cuda=device, memory=memory)

    return factory
