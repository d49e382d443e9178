"""Each epoch's statistics for the trainers' loggers (maeltrace.integrations._epoch_logs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from maeltrace import SinkWarning, Timer
from maeltrace.integrations._epoch_logs import EpochLog


def _regions(timer: Timer, key: str, n: int) -> None:
    for _ in range(n):
        with timer.region(key):
            pass


def test_each_epoch_gets_only_its_own_samples_under_the_namespace(tmp_path: Path) -> None:
    timer = Timer(output_dir=tmp_path, export=None)
    log = EpochLog()
    log.mark(timer)
    _regions(timer, "batch", 3)
    first = log.metrics(timer)
    _regions(timer, "batch", 2)
    _regions(timer, "io", 1)
    second = log.metrics(timer)
    assert list(first) == ["maeltrace/batch/epoch/mean", "maeltrace/batch/epoch/count"]
    assert first["maeltrace/batch/epoch/count"] == 3.0
    assert second["maeltrace/batch/epoch/count"] == 2.0
    assert second["maeltrace/io/epoch/count"] == 1.0
    batch = timer.get_time("batch", warmup=0)
    assert second["maeltrace/batch/epoch/mean"] == pytest.approx(sum(batch[3:]) / 2)
    assert log.metrics(timer) == {}
    timer.close()


def test_a_broken_timer_gives_one_warning_and_no_metrics(tmp_path: Path) -> None:
    timer = Timer(output_dir=tmp_path, export=None)
    _regions(timer, "batch", 1)
    log = EpochLog()

    def broken() -> list[str]:
        raise OSError("disk gone")

    timer.keys = broken  # type: ignore[method-assign]
    with pytest.warns(SinkWarning, match="disk gone"):
        assert log.metrics(timer) == {}
    timer.close()
