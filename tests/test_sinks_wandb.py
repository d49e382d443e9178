"""`log_wandb` with a real W&B in offline mode, read back from the run's ``.wandb`` file."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maeltrace import Timer, TimeType
from maeltrace._files import read_lines
from maeltrace.sinks import STATS_FIELDS, SinkWarning, metric_values
from tests.services.wandb_reader import FIRST, LAST, MIDDLE, frames, read_offline_run

wandb = pytest.importorskip("wandb")

from maeltrace.sinks.wandb import (  # noqa: E402
    ARTIFACT_TYPE,
    DEFAULT_PROJECT,
    TAG,
    artifact_name,
    log_wandb,
)
from tests.fakes.cuda import fake_gpu_clock  # noqa: E402  # after the skip, as above

pytestmark = pytest.mark.slow


def make_timer() -> Timer:
    """Batches timed on both clocks (the CPU stand-in for the GPU), forward on the CPU."""
    tmr = Timer(device=fake_gpu_clock)
    for _ in range(4):
        with tmr.region(TimeType.BATCH, gpu=True), tmr.region(TimeType.FORWARD):
            pass
    return tmr


def run_tags(run: Any) -> set[str]:
    """Every tag the run's records gave it."""
    return {
        tag
        for record in run.records
        if record.WhichOneof("record_type") == "run"
        for tag in record.run.tags
    }


def logged_only(row: dict[str, Any]) -> dict[str, Any]:
    """A history row or summary without W&B's own ``_step``, ``_runtime``... entries."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """W&B offline, silent, without a key, writing under the test's folder."""
    wandb.teardown()  # a W&B setup left by an earlier test module would keep its own WANDB_DIR
    for name in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    yield tmp_path
    if wandb.run is not None:
        wandb.run.finish()
    wandb.teardown()  # W&B reads its environment once per setup; the next test sets its own


class TestOffline:
    def test_cpu_and_gpu_means_make_one_step_and_the_summary(self, offline: Path) -> None:
        tmr = make_timer()
        logged = log_wandb(tmr, "train", artifacts=False)
        assert wandb.run is None  # started here, so finished here
        run = read_offline_run(offline)
        assert logged == {
            "maeltrace/train/batch/all/mean": tmr.get_time_stats("batch").mean,
            "maeltrace/train/batch/gpu/all/mean": tmr.get_time_stats("batch", gpu=True).mean,
            "maeltrace/train/forward/all/mean": tmr.get_time_stats("forward").mean,
        }
        assert [logged_only(row) for row in run.history] == [logged]
        assert logged_only(run.summary) == logged
        assert (run.name, run.project) == (tmr.run_id, DEFAULT_PROJECT)
        assert run.config["maeltrace"]["run_id"] == tmr.run_id
        assert TAG in run_tags(run)
        assert run.artifacts == []

    def test_all_stats_make_one_step(self, offline: Path) -> None:
        tmr = make_timer()
        logged = log_wandb(tmr, stats="all", artifacts=False)
        run = read_offline_run(offline)
        assert logged == metric_values(tmr.summary(), stats="all")
        assert len(logged) == 3 * len(STATS_FIELDS)
        assert [logged_only(row) for row in run.history] == [logged]
        assert run.history[0]["maeltrace/batch/gpu/all/count"] == 4

    def test_stats_files_and_chrome_trace_are_an_artifact(self, offline: Path) -> None:
        tmr = make_timer()
        log_wandb(tmr)
        run = read_offline_run(offline)
        assert [(a.name, a.type) for a in run.artifacts] == [
            (artifact_name(tmr.run_id), ARTIFACT_TYPE)
        ]
        assert sorted(run.artifact_files()) == ["stats.json", "stats.md", "trace.json"]
        assert json.loads((tmr.output_dir / "stats.json").read_text())["regions"]

    def test_an_active_run_is_used_and_left_running(self, offline: Path) -> None:
        # The big config value spans several 32 KiB blocks of the file: the reader joins them.
        active = wandb.init(project="mine", config={"blob": "x" * 100_000})
        logged = log_wandb(make_timer(), artifacts=False)
        assert wandb.run is active
        active.log({"loss": 0.5})
        active.finish()
        run = read_offline_run(offline)
        assert [logged_only(row) for row in run.history] == [logged, {"loss": 0.5}]
        assert run.project == "mine"
        assert run.config["blob"] == "x" * 100_000
        # The user's run gets maeltrace's tag and config next to what it holds.
        assert run.config["maeltrace"]["run_id"] != ""
        assert TAG in run_tags(run)

    def test_an_active_run_keeps_its_own_maeltrace_config_and_a_trainers_epoch(
        self, offline: Path
    ) -> None:
        active = wandb.init(project="mine", config={"maeltrace": {"run_id": "the user's"}})
        active.log({"epoch": 3.0})
        tmr = make_timer()
        with tmr.region(TimeType.EPOCH):
            pass
        logged = log_wandb(tmr, artifacts=False)
        active.finish()
        run = read_offline_run(offline)
        assert run.config["maeltrace"] == {"run_id": "the user's"}
        assert [logged_only(row) for row in run.history] == [{"epoch": 3.0}, logged]
        assert "maeltrace/epoch/all/mean" in logged and logged_only(run.summary)["epoch"] == 3.0

    def test_the_reader_joins_records_that_span_blocks(self, offline: Path) -> None:
        wandb.init(config={"blob": "y" * 70_000}).finish()
        run = read_offline_run(offline)
        assert run.config["blob"] == "y" * 70_000
        assert {FIRST, MIDDLE, LAST} <= {kind for kind, _ in frames(run.path.read_bytes())}


class TestFaults:
    def test_a_failing_log_gives_one_warning_and_a_pending_file(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        active = wandb.init()

        def refuse(*args: object, **kwargs: object) -> None:
            raise wandb.Error("the service went away")

        monkeypatch.setattr(active, "log", refuse)
        tmr = make_timer()
        with pytest.warns(SinkWarning, match="the service went away") as caught:
            logged = log_wandb(tmr, "train")
        assert len(caught) == 1
        pending = [
            e for _, e in read_lines(tmr.output_dir / "pending-wandb.jsonl", parse=json.loads)
        ]
        assert [entry["metrics"] for entry in pending] == [logged]
        assert pending[0]["wandb_run_id"] == active.id
        assert wandb.run is active  # the user's run is left to the user

    def test_a_missing_wandb_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "wandb", None)
        with pytest.raises(ImportError, match=r"pip install 'maeltrace\[wandb\]'"):
            log_wandb(make_timer())

    def test_bad_arguments_raise_before_anything_is_logged(self) -> None:
        with pytest.raises(ValueError, match="stats must be one of"):
            log_wandb(make_timer(), stats="p99")
        assert wandb.run is None
