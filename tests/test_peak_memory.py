"""Peak device memory per gpu region from the CUDA allocator's statistics, on a fake GPU
(FakeCudaDevice): nested regions, freed tensors, no host sync, off by default."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="the CUDA-event clock is part of the torch integration")

from collections.abc import Iterator

from maeltrace import Timer
from maeltrace.devices import DeviceTimes
from maeltrace.devices import registry as clocks
from maeltrace.devices.registry import ClockEntry, ClockOptions
from maeltrace.devices.torch_cuda import CudaEventClock
from maeltrace.environment import MAELTRACE_MEMORY
from tests.fakes.cuda import FakeCudaDevice, cuda_clock_on, fake_cuda_clock

MB = 1 << 20


def _epoch(tmr: Timer, gpu: FakeCudaDevice) -> dict[str, int]:
    """One epoch of two batches with known allocations; returns the expected peak per key
    (the most bytes allocated while any region of that key was open)."""
    with tmr.region("epoch", gpu=True):
        gpu.allocate(10 * MB)  # weights
        for batch_mb in (30, 50):
            with tmr.region("batch", gpu=True):
                gpu.allocate(batch_mb * MB)  # inputs
                with tmr.region("forward", gpu=True):
                    gpu.allocate(2 * batch_mb * MB)  # activations
                with tmr.region("backward", gpu=True):
                    gpu.allocate(batch_mb * MB)  # gradients
                    gpu.free(batch_mb * MB)
                    gpu.free(2 * batch_mb * MB)
                gpu.free(batch_mb * MB)
            gpu.run()
        gpu.free(10 * MB)
    # The second batch: 10 + 50 + 100 allocated at the end of forward, 10 + 50 + 100 + 50 in
    # backward before it frees.
    return {"epoch": 210 * MB, "batch": 210 * MB, "forward": 160 * MB, "backward": 210 * MB}


def _peaks_by_key(tmr: Timer) -> dict[str, list[int]]:
    records = tmr.records()
    return {
        str(records.keys[key_id]): values
        for (key_id, _), values in records.samples().memory.items()
    }


class TestNestedRegions:
    def test_each_region_reports_the_most_bytes_allocated_while_it_was_open(self) -> None:
        gpu = FakeCudaDevice()
        tmr = Timer(device=cuda_clock_on(gpu, memory=True), export=False)
        expected = _epoch(tmr, gpu)
        peaks = _peaks_by_key(tmr)
        assert peaks["epoch"] == [expected["epoch"]]
        assert peaks["batch"] == [(10 + 30 + 60 + 30) * MB, expected["batch"]]
        assert peaks["forward"] == [(10 + 30 + 60) * MB, expected["forward"]]
        assert peaks["backward"] == [(10 + 30 + 60 + 30) * MB, expected["backward"]]

    def test_the_outer_peak_survives_the_resets_of_its_inner_regions(self) -> None:
        gpu = FakeCudaDevice()
        tmr = Timer(device=cuda_clock_on(gpu, memory=True), export=False)
        with tmr.region("outer", gpu=True):
            gpu.allocate(100 * MB)
            gpu.free(100 * MB)  # the outer's peak, before any inner region resets it
            with tmr.region("inner", gpu=True):
                gpu.allocate(5 * MB)
                gpu.free(5 * MB)
            with tmr.region("inner", gpu=True):
                pass
        peaks = _peaks_by_key(tmr)
        assert peaks["outer"] == [100 * MB]
        assert peaks["inner"] == [5 * MB, 0]

    def test_a_region_counts_the_tensors_alive_when_it_opened(self) -> None:
        gpu = FakeCudaDevice()
        gpu.allocate(7 * MB)
        tmr = Timer(device=cuda_clock_on(gpu, memory=True), export=False)
        with tmr.region("step", gpu=True):
            pass
        assert _peaks_by_key(tmr)["step"] == [7 * MB]

    def test_a_region_whose_tensors_were_freed_before_its_end_keeps_their_peak(self) -> None:
        gpu = FakeCudaDevice()
        tmr = Timer(device=cuda_clock_on(gpu, memory=True), export=False)
        with tmr.region("step", gpu=True):
            gpu.allocate(64 * MB)
            gpu.free(64 * MB)
        assert gpu.allocated_bytes == 0
        assert _peaks_by_key(tmr)["step"] == [64 * MB]

    def test_overlapping_start_end_regions_each_get_their_own_peak(self) -> None:
        gpu = FakeCudaDevice()
        tmr = Timer(device=cuda_clock_on(gpu, memory=True), export=False)
        tmr.start("a", gpu=True)
        gpu.allocate(8 * MB)
        tmr.start("b", gpu=True)
        gpu.free(8 * MB)
        gpu.allocate(3 * MB)
        tmr.end("a")  # a closes first: not a stack
        gpu.allocate(1 * MB)
        tmr.end("b")
        peaks = _peaks_by_key(tmr)
        assert peaks["a"] == [8 * MB]
        assert peaks["b"] == [8 * MB]  # b opened with the 8 MB still allocated

    def test_a_cancelled_region_stops_being_credited(self) -> None:
        gpu = FakeCudaDevice()
        tmr = Timer(device=cuda_clock_on(gpu, memory=True), export=False)
        tmr.start("cancelled", gpu=True)
        clock = tmr.use_device()
        assert isinstance(clock, CudaEventClock)
        assert len(clock._peaks._open) == 1  # type: ignore[union-attr]
        tmr.cancel("cancelled")  # the timer drops its handle without closing it
        with tmr.region("step", gpu=True):
            gpu.allocate(MB)
        assert len(clock._peaks._open) == 0  # type: ignore[union-attr]
        assert _peaks_by_key(tmr) == {"step": [MB]}


class TestNoHostSync:
    @pytest.mark.parametrize("memory", [False, True])
    def test_measuring_memory_adds_no_host_sync(self, memory: bool) -> None:
        gpu = FakeCudaDevice()
        tmr = Timer(device=cuda_clock_on(gpu, memory=memory), export=False)
        for _ in range(20):
            _epoch(tmr, gpu)
        assert gpu.host_syncs == 0  # the loop never waits, with memory or without
        tmr.records()
        assert gpu.host_syncs == 1  # the report's one wait, as without memory
        assert (gpu.allocator_calls > 0) is memory

    def test_each_peak_is_known_when_its_region_closes_before_the_gpu_ran_it(self) -> None:
        gpu = FakeCudaDevice()
        times = DeviceTimes()
        clock = CudaEventClock(times, cuda=gpu, memory=True)
        handle = clock.open(0)
        gpu.allocate(MB)
        clock.close(5, handle, 0)
        assert gpu.completed == 0 and gpu.host_syncs == 0
        assert times.memory_by_seq() == {5: MB}
        assert times.by_seq() == {}  # the device time waits for the GPU; the peak does not


class TestOffByDefault:
    def test_without_memory_no_allocator_call_and_no_peaks(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv(MAELTRACE_MEMORY, raising=False)
        gpu = FakeCudaDevice()
        tmr = Timer(device=cuda_clock_on(gpu), export=False)
        _epoch(tmr, gpu)
        records = tmr.records()
        assert gpu.allocator_calls == 0
        assert dict(records.peak_memory) == {}
        assert records.samples().memory == {}
        assert len(records.samples().gpu[0]) == 1  # the regions themselves were timed


@pytest.fixture
def fake_cuda() -> Iterator[str]:
    """The CUDA-event clock on a fake GPU, registered by name so the timer builds it through
    the registry with its own options."""
    clocks.register(ClockEntry("fakecuda-mem", "tests.fakes.cuda:fake_cuda_clock", "fake"))
    yield "fakecuda-mem"
    clocks.unregister("fakecuda-mem")


def _fake(tmr: Timer) -> FakeCudaDevice:
    clock = tmr.use_device()
    assert isinstance(clock, CudaEventClock)
    gpu = clock._cuda
    assert isinstance(gpu, FakeCudaDevice)
    return gpu


class TestTimerOption:
    def test_memory_true_gives_one_peak_per_gpu_region_keyed_by_seq(self, fake_cuda: str) -> None:
        tmr = Timer(device=fake_cuda, memory=True, export=False)
        gpu = _fake(tmr)
        expected = _epoch(tmr, gpu)
        with tmr.region("cpu only"):  # a CPU region has no device memory figure
            gpu.allocate(MB)
        records = tmr.records()
        gpu_seqs = set(tmr._device_times.by_seq())
        assert set(records.peak_memory) == gpu_seqs
        assert len(gpu_seqs) == 1 + 2 * 3
        peaks = _peaks_by_key(tmr)
        assert {key: max(values) for key, values in peaks.items()} == expected
        assert [len(values) for values in peaks.values()] == [1, 2, 2, 2]

    @pytest.mark.parametrize(("value", "measured"), [("1", True), ("0", False)])
    def test_maeltrace_memory_turns_it_on(
        self, fake_cuda: str, monkeypatch: pytest.MonkeyPatch, value: str, measured: bool
    ) -> None:
        monkeypatch.setenv(MAELTRACE_MEMORY, value)
        tmr = Timer(device=fake_cuda, export=False)
        gpu = _fake(tmr)
        with tmr.region("step", gpu=True):
            gpu.allocate(MB)
        assert dict(tmr.records().peak_memory) == ({0: MB} if measured else {})

    def test_the_argument_wins_over_the_variable(
        self, fake_cuda: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(MAELTRACE_MEMORY, "1")
        tmr = Timer(device=fake_cuda, memory=False, export=False)
        gpu = _fake(tmr)
        with tmr.region("step", gpu=True):
            gpu.allocate(MB)
        assert dict(tmr.records().peak_memory) == {}
        assert gpu.allocator_calls == 0

    def test_the_registry_factory_reads_the_memory_option(self) -> None:
        on = fake_cuda_clock(DeviceTimes(), ClockOptions(memory=True))
        off = fake_cuda_clock(DeviceTimes(), ClockOptions())
        assert on._peaks is not None and off._peaks is None


class TestInTheOutputs:
    """The peaks in the summary's table and stats.json, on the spans and in the metrics."""

    def test_table_json_spans_and_gauge(self, tmp_path: object) -> None:
        from pathlib import Path

        metrics = pytest.importorskip("opentelemetry.sdk.metrics", reason="opentelemetry-sdk")
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from maeltrace import Summary
        from maeltrace.otel import semconv
        from tests.helpers import exported_spans

        folder = Path(str(tmp_path))
        gpu = FakeCudaDevice()
        reader = InMemoryMetricReader()
        tmr = Timer(
            export=True,
            output_dir=folder,
            device=cuda_clock_on(gpu, memory=True),
            meter_provider=metrics.MeterProvider(metric_readers=[reader]),
        )
        expected = _epoch(tmr, gpu)
        tmr.close()
        summary = tmr.summary()
        rows = {str(r.key): r for r in summary.rows if r.peak_memory}
        assert all(row.device for row in rows.values())  # on the GPU rows
        assert {key: max(row.peak_memory) for key, row in rows.items()} == expected
        text = summary.to_markdown()
        table = text[text.index("Peak device memory per region:") :]
        line = next(x for x in table.splitlines() if x.startswith("| Batch (GPU)"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[4:] == [f"{expected['batch'] / MB:.1f}", "2"]  # max, count
        loaded = Summary.load(summary.save(folder / "again.json"))
        assert [r.peak_memory for r in loaded.rows] == [r.peak_memory for r in summary.rows]
        spans = exported_spans(folder / "traces.otlp.jsonl")
        peaks = {
            span.name: a.value.int_value
            for span in spans
            for a in span.attributes
            if a.key == semconv.MAELTRACE_GPU_MEMORY_PEAK
        }
        assert peaks["epoch"] == expected["epoch"]
        data = reader.get_metrics_data()
        assert data is not None
        gauge = {
            str(p.attributes[semconv.MAELTRACE_KEY]): p.value
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == semconv.REGION_MEMORY_PEAK
            for p in m.data.data_points
        }
        assert gauge == expected
