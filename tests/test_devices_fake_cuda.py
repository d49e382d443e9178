"""The CUDA-event clock on a fake GPU (FakeCudaDevice): no host sync in the loop, in-order
resolution, a bounded event pool, and the bound on outstanding events."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="the CUDA-event clock is part of the torch integration")

import itertools

from maeltrace import Timer
from maeltrace.devices import DeviceTimes
from maeltrace.devices.torch_cuda import POLL_BATCH, CudaEventClock
from tests.fakes.cuda import FakeCudaDevice

BOTH_RECORDERS = True
MS = 1_000_000


class OrderedTimes(DeviceTimes):
    """DeviceTimes that also notes the order in which regions were resolved."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[int] = []

    def add(self, seq: int, start_ns: int, duration_ns: int, flags: int = 0) -> None:
        self.order.append(seq)
        super().add(seq, start_ns, duration_ns, flags)


def _timer(gpu: FakeCudaDevice, max_outstanding: int = 8192) -> tuple[Timer, list[CudaEventClock]]:
    clocks: list[CudaEventClock] = []

    def factory(times: DeviceTimes) -> CudaEventClock:
        ordered = OrderedTimes()
        ordered._values = times._values  # share the timer's store
        clocks.append(CudaEventClock(ordered, cuda=gpu, max_outstanding=max_outstanding))
        return clocks[-1]

    return Timer(device=factory), clocks


class TestTrainingLoop:
    def test_a_loop_of_1000_regions_makes_no_host_sync_before_the_report(self) -> None:
        gpu = FakeCudaDevice()
        tmr, clocks = _timer(gpu)
        for _ in range(1000):
            with tmr.region("batch", gpu=True):
                pass
            gpu.run(2)  # the device keeps pace, finishing what the region queued
        assert gpu.host_syncs == 0
        clock = clocks[0]
        assert clock.host_syncs == 0
        assert gpu.created <= 2 * POLL_BATCH + 4  # events come back to the pool
        stats = tmr.get_time_stats("batch", gpu=True)  # the report: one wait, at the end
        assert gpu.host_syncs == 1
        assert stats.count == 1000
        assert stats.min == stats.max == 0.001  # start and end events 1 ms apart on the fake
        tmr.get_time_stats("batch")
        tmr.records()
        assert gpu.host_syncs == 1  # nothing outstanding: reading again does not wait

    def test_regions_resolve_in_the_order_they_ran(self) -> None:
        gpu = FakeCudaDevice()
        tmr, clocks = _timer(gpu)
        for i in range(50):
            tmr.start("fwd", gpu=True)
            tmr.end("fwd")
            tmr.start("bwd", gpu=True)
            tmr.end("bwd")
            if i % 7 == 0:
                gpu.run()
        tmr.flush()
        order = clocks[0]._times.order  # type: ignore[attr-defined]  # our OrderedTimes
        assert order == sorted(order)
        assert len(order) == 100

    def test_start_end_regions_resolve_without_stalling_either(self) -> None:
        gpu = FakeCudaDevice()
        tmr, _ = _timer(gpu)
        for _ in range(200):
            tmr.start("step", gpu=True)
            tmr.end("step")
            gpu.run()
        assert gpu.host_syncs == 0
        assert len(tmr.get_time("step", gpu=True)) == 200


class TestBehindDevice:
    def test_outstanding_regions_are_bounded_by_waiting_for_the_oldest(self) -> None:
        gpu = FakeCudaDevice()
        tmr, clocks = _timer(gpu, max_outstanding=10)
        for _ in range(100):
            with tmr.region("slow", gpu=True):
                pass  # the device never catches up by itself
        clock = clocks[0]
        assert clock.outstanding <= 10
        assert clock.host_syncs == gpu.host_syncs == 90  # one wait per region beyond the bound
        assert gpu.created <= 2 * 10 + 2 * POLL_BATCH + 4

    def test_an_idle_device_pool_stays_small_while_a_busy_one_grows(self) -> None:
        gpu = FakeCudaDevice()
        tmr, _ = _timer(gpu)
        for _ in range(300):
            with tmr.region("batch", gpu=True):
                pass
        grown = gpu.created
        assert grown >= 600  # nothing completed: every region holds its two events
        gpu.run()
        tmr.flush()
        for _ in range(300):
            with tmr.region("batch", gpu=True):
                pass
            gpu.run()
        assert gpu.created == grown + 1  # the flush marker; the rest came from the pool


class TestTimeline:
    def test_device_starts_land_on_the_host_clock_after_a_flush(self) -> None:
        gpu = FakeCudaDevice()
        tmr, clocks = _timer(gpu)
        for _ in range(3):
            with tmr.region("k", gpu=True):
                pass
        records = tmr.records()  # flushes: the marker calibrates the reference event
        starts = list(records.device_start_ns)
        assert [b - a for a, b in itertools.pairwise(starts)] == [2 * MS, 2 * MS]
        assert list(records.device_ns) == [MS, MS, MS]
        assert clocks[0].host_offset_ns != 0

    def test_cpu_regions_make_no_device_calls(self) -> None:
        gpu = FakeCudaDevice()
        tmr, clocks = _timer(gpu)
        for _ in range(100):
            with tmr.region("cpu-only"):
                pass
        assert clocks == []
        assert gpu.recorded == 0
