"""The seed's code runs unchanged but for its import (section 3.2 of the seed)."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest

from maeltrace.deep500 import timer

BOTH_RECORDERS = True

# Figure 2 of the seed, as printed; train_epoch is the user's.
FIGURE_2 = """
for epoch in range(num_epochs):
    tmr.start(timer.TimeType.EPOCH)
    train_epoch(loader, net, criterion, optimizer, tmr)
    tmr.end(timer.TimeType.EPOCH)
"""

# Section 3.2.3 of the seed: the ways to retrieve or save timing results.
SECTION_3_2_3 = """
times = tmr.get_time(key)
stats = tmr.get_time_stats(key)
tmr.print_all_time_stats()
tmr.save_all_time_stats(filename)
"""


def _train_epoch(
    loader: list[int], net: object, criterion: object, optimizer: object, tmr: timer.Timer
) -> None:
    for _ in loader:
        tmr.start(timer.TimeType.BATCH)
        tmr.start(timer.TimeType.FORWARD)
        tmr.end(timer.TimeType.FORWARD)
        tmr.start(timer.TimeType.BACKWARD)
        tmr.end(timer.TimeType.BACKWARD)
        tmr.end(timer.TimeType.BATCH)


class TestSeedCode:
    def test_figure_2_and_section_3_2_3_run_as_printed(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tmr = timer.Timer()
        namespace = {
            "timer": timer,
            "tmr": tmr,
            "num_epochs": 3,
            "train_epoch": _train_epoch,
            "loader": [0, 1, 2, 3],
            "net": None,
            "criterion": None,
            "optimizer": None,
            "key": timer.TimeType.BATCH,
            "filename": str(tmp_path / "times.txt"),
        }
        exec(textwrap.dedent(FIGURE_2), namespace)
        exec(textwrap.dedent(SECTION_3_2_3), namespace)
        assert len(namespace["times"]) == 12  # type: ignore[arg-type]  # a list from the seed's call
        stats = namespace["stats"]
        assert isinstance(stats, timer.TimeStats)
        low, mean, median, high, stdev = stats  # the seed's five-field named tuple
        assert low <= median <= high and low <= mean <= high and stdev >= 0
        printed = capsys.readouterr().out
        assert "| Epoch " in printed and "| Batch " in printed and "| Forward " in printed
        assert (tmp_path / "times.txt").read_text(encoding="utf-8") == printed

    def test_time_stats_prints_as_the_seeds_did(self) -> None:
        stats = timer.TimeStats(1.0, 2.0, 3.0, 4.0, 0.5)
        assert str(stats) == (
            "min: 1.00000 mean: 2.00000 median: 3.00000 max: 4.00000 stdev: 0.50000"
        )

    def test_save_refuses_an_existing_file_as_the_seeds_did(self, tmp_path: Path) -> None:
        tmr = timer.Timer()
        tmr.start(timer.TimeType.EPOCH)
        tmr.end(timer.TimeType.EPOCH)
        target = tmp_path / "t.txt"
        tmr.save_all_time_stats(str(target))
        with pytest.raises(FileExistsError):
            tmr.save_all_time_stats(str(target))

    def test_time_type_all_is_refused_with_a_value_error(self) -> None:
        with pytest.raises(ValueError, match="ALL"):
            timer.Timer().start(timer.TimeType.ALL)

    def test_nesting_one_key_raises_runtime_error_as_before(self) -> None:
        tmr = timer.Timer()
        tmr.start(timer.TimeType.IO)
        with pytest.raises(RuntimeError):
            tmr.start(timer.TimeType.IO)


class TestSeedFlawsFixed:
    def test_reading_an_unused_key_breaks_no_later_report(self) -> None:
        tmr = timer.Timer()
        tmr.start(timer.TimeType.EPOCH)
        tmr.end(timer.TimeType.EPOCH)
        assert tmr.get_time(timer.TimeType.COMM) == []  # as the seed returned
        with pytest.raises(KeyError, match="epoch"):
            tmr.get_time_stats(timer.TimeType.COMM)
        out = io.StringIO()
        tmr.print_all_time_stats(file=out)  # the seed's timer raised here from then on
        assert "| Epoch " in out.getvalue() and "Comm" not in out.getvalue()

    def test_complete_all_keeps_every_region(self) -> None:
        tmr = timer.Timer()
        tmr.start("custom")
        tmr.end("custom")
        tmr.start("custom")  # left open
        tmr.complete_all()
        assert len(tmr.get_time("custom")) == 1


class TestSeedLogging:
    def test_log_mlflow_all_logs_the_means_under_deep500s_names(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
        monkeypatch.chdir(tmp_path)  # the SQLite store puts artifacts under ./mlruns
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        tmr = timer.Timer()
        for _ in range(3):
            tmr.start(timer.TimeType.BATCH)
            tmr.end(timer.TimeType.BATCH)
        with mlflow.start_run() as run:
            tmr.log_mlflow_all(prefix="train")  # section 3.2.3, as printed
        metrics = mlflow.tracking.MlflowClient().get_run(run.info.run_id).data.metrics
        assert metrics == {"train/BATCH": pytest.approx(tmr.get_time_stats("batch").mean)}
