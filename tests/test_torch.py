"""PyTorch on this CPU machine: a real training loop with gpu regions, NVTX, Deep500's shim."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")

from maeltrace import Timer, TimeType  # noqa: E402
from maeltrace.errors import DeviceClockWarning  # noqa: E402
from maeltrace.records import NO_DEVICE_TIME, NO_PARENT  # noqa: E402
from tests.helpers import parent_keys  # noqa: E402

EPOCHS, BATCHES = 2, 5


def _loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 8, generator=gen), torch.randn(16, 1, generator=gen))] * BATCHES


def _train(tmr: Timer, gpu: bool = True) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    loader = _loader()
    for _ in range(EPOCHS):
        with tmr.region(TimeType.EPOCH):
            for x, y in tmr.iterate(loader):
                with tmr.region(TimeType.BATCH, gpu=gpu):
                    with tmr.region(TimeType.FORWARD, gpu=gpu):
                        loss = torch.nn.functional.mse_loss(net(x), y)
                    with tmr.region(TimeType.BACKWARD, gpu=gpu):
                        optimizer.zero_grad()
                        loss.backward()
                        optimizer.step()


class TestTrainingLoop:
    def test_counts_nesting_and_no_gpu_rows_without_a_gpu(self) -> None:
        tmr = Timer(device="torch")
        with pytest.warns(DeviceClockWarning, match="torch sees no CUDA device"):
            _train(tmr)
        n = EPOCHS * BATCHES
        for key in (TimeType.BATCH, TimeType.FORWARD, TimeType.BACKWARD):
            assert tmr.get_time_stats(key).count == n
            # No GPU: the device time would only repeat the CPU time, so there is none.
            with pytest.raises(KeyError, match="no GPU: torch sees no CUDA device"):
                tmr.get_time(key, gpu=True)
        assert tmr.get_time_stats(TimeType.IO).count == n
        assert set(tmr.records().device_ns) == {NO_DEVICE_TIME}
        records = tmr.records()
        parents = parent_keys(records)
        assert parents == {
            "epoch": {None},
            "io": {"epoch"},
            "batch": {"epoch"},
            "forward": {"batch"},
            "backward": {"batch"},
        }
        assert NO_PARENT in records.parent_seq
        text = tmr.summary().to_markdown()
        for row in ("Batch", "Forward", "Backward", "IO"):
            assert f"| {row} " in text
        assert "(GPU)" not in text and "(CPU)" not in text
        assert (
            "No GPU rows: no GPU was found (torch sees no CUDA device); gpu=True regions were "
            "timed on the CPU clock only." in text
        )

    def test_cpu_only_regions_carry_no_device_time(self) -> None:
        tmr = Timer(device="torch")
        _train(tmr, gpu=False)
        assert set(tmr.records().device_ns) == {NO_DEVICE_TIME}
        assert tmr.device_clock is None
        assert "(GPU)" not in tmr.summary().to_markdown()

    def test_the_clock_is_chosen_from_the_framework_in_use(self) -> None:
        tmr = Timer()
        assert tmr.use_device(prefer="torch").name == "cpu-sync"

    def test_nvtx_ranges_wrap_the_same_regions(self) -> None:
        tmr = Timer(device="torch", nvtx=True)
        _train(tmr)
        assert tmr.get_time_stats(TimeType.BATCH).count == EPOCHS * BATCHES
        tmr.start("manual", gpu=True)
        tmr.end("manual")
        assert tmr.get_time_stats("manual").count == 1


class TestDeep500Torch:
    def test_the_forks_loop_runs_by_changing_only_the_import(self) -> None:
        from maeltrace.deep500 import timer_torch as timer

        with pytest.warns(DeviceClockWarning):
            tmr = timer.CPUGPUTimer()
        net = torch.nn.Linear(8, 1)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        for _ in range(2):
            tmr.start(timer.TimeType.EPOCH)
            for x, y in _loader():
                tmr.start(timer.TimeType.BATCH, gpu=True)
                tmr.start(timer.TimeType.FORWARD, gpu=True)
                loss = torch.nn.functional.mse_loss(net(x), y)
                tmr.end(timer.TimeType.FORWARD, gpu=True)
                tmr.start(timer.TimeType.BACKWARD, gpu=True)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                tmr.end(timer.TimeType.BACKWARD, gpu=True)
                tmr.end(timer.TimeType.BATCH, gpu=True)
            tmr.end(timer.TimeType.EPOCH)
        tmr.complete_all()
        assert len(tmr.get_time(timer.TimeType.BATCH)) == 2 * BATCHES
        # No GPU: the seed's get_time gives no device times, get_time_stats says why.
        assert tmr.get_time(timer.TimeType.BATCH, gpu=True) == []
        with pytest.raises(KeyError, match="no GPU"):
            tmr.get_time_stats(timer.TimeType.FORWARD, gpu=True)
        assert isinstance(tmr.get_time_stats(timer.TimeType.FORWARD), timer.TimeStats)
        assert tmr.get_time(timer.TimeType.COMM, gpu=True) == []
        assert tmr.device_clock is not None and tmr.device_clock.name == "cpu-sync"
