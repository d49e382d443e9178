"""The one sink contract: the Timer and the summary service name a run's metrics alike."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from maeltrace.collect.service import CollectServer
from maeltrace.keys import TimeType
from maeltrace.sinks.base import (
    STATS_FIELDS,
    PendingFile,
    metric_name,
    mlflow_metric_name,
    pending_entry,
    pending_path,
    rank_suffix_of,
)
from tests.test_collect import config, run_timer

mlflow = pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402  # after the skip: mlflow is an optional extra

pytestmark = [
    pytest.mark.slow,
    # MLflow's SQLAlchemy store uses a loader strategy that SQLAlchemy 2.1 deprecates.
    pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SADeprecationWarning"),
]


def _metric_names(client: MlflowClient, experiment: str, run_id: str) -> set[str]:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    (run,) = client.search_runs(
        [found.experiment_id], filter_string=f"tags.`maeltrace.run_id` = '{run_id}'"
    )
    return set(run.data.metrics)


def test_the_timer_and_the_service_log_one_summary_under_the_same_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = f"same-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MAELTRACE_RUN_ID", run_id)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config(tmp_path, mlflow_tracking_uri=store)
    with CollectServer(cfg) as server:
        tmr = run_timer(server.url, "http/protobuf", tmp_path / "out", gpu=True)
        assert server.collector.wait_idle(60)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-the-timer")
    logged = tmr.log_mlflow_all(stats="all", artifacts=False)

    client = MlflowClient(tracking_uri=store)
    by_service = _metric_names(client, cfg.mlflow_experiment or "", run_id)
    by_timer = _metric_names(client, "from-the-timer", run_id)
    assert by_timer == set(logged)
    assert by_service == by_timer
    # warmup=0: the timer's values are over every sample, as the service's are, and say so.
    rows = ("batch", "batch/gpu", "epoch")
    assert by_timer == {f"maeltrace/{row}/all/{field}" for row in rows for field in STATS_FIELDS}


class TestNames:
    def test_one_scheme_for_every_row(self) -> None:
        assert metric_name("batch", "mean", prefix="train/", samples="steady") == (
            "maeltrace/train/batch/steady/mean"
        )
        assert (
            metric_name("batch", "p95", device=True, samples="all") == "maeltrace/batch/gpu/all/p95"
        )
        assert metric_name("fwd", "mean", device=True, compiled=True, samples="all") == (
            "maeltrace/fwd/gpu/first_call/all/mean"
        )
        assert metric_name("batch", "rank3", "mean", samples="all") == (
            "maeltrace/batch/all/rank3/mean"
        )
        assert metric_name("batch", "mean", samples="epoch") == "maeltrace/batch/epoch/mean"
        # Deep500's names are the seed's: no namespace, no samples segment.
        assert metric_name(TimeType.BATCH, prefix="train/", names="deep500") == "train/BATCH"
        assert (
            metric_name(TimeType.BATCH, device=True, names="deep500", qualify=True) == "GPU/BATCH"
        )

    def test_a_maeltrace_name_always_says_which_samples(self) -> None:
        with pytest.raises(ValueError, match="samples"):
            metric_name("batch", "mean")

    def test_long_names_stay_apart_and_keep_their_last_segment(self) -> None:
        from mlflow.utils.validation import _validate_metric_name

        names = {mlflow_metric_name(f"{'k' * n}/gpu/mean") for n in (300, 301)}
        assert len(names) == 2
        for name in names:
            _validate_metric_name(name)  # type: ignore[no-untyped-call]
            assert len(name) <= 250 and name.endswith("/gpu/mean")


class TestPendingFile:
    def test_the_latest_entry_of_each_run_wins_and_a_torn_line_costs_only_itself(
        self, tmp_path: Path
    ) -> None:
        pending = PendingFile(pending_path(tmp_path, "mlflow", ".rank2"))
        assert pending.path.name == "pending-mlflow.rank2.jsonl" and len(pending) == 0
        pending.add(pending_entry("mlflow", "a", "down", metrics={"x": 1.0}))
        pending.add(pending_entry("mlflow", "b", "down", summary={"run_id": "b"}))
        with pending.path.open("ab") as f:
            f.write(b'{"run_id": "c", "torn')  # a crash's remains
        pending.add(pending_entry("mlflow", "a", "down", metrics={"x": 2.0}))
        loaded = pending.load()
        assert list(loaded) == ["a", "b"] and loaded["a"]["metrics"] == {"x": 2.0}
        pending.replace({})
        assert not pending.path.exists()

    def test_resend_stops_at_the_first_failure_and_keeps_what_it_did_not_select(
        self, tmp_path: Path
    ) -> None:
        pending = PendingFile(tmp_path / "pending-mlflow.jsonl")
        for step in range(4):
            pending.add(pending_entry("mlflow", "run", "down", metrics={"x": 1.0}, step=step))
        pending.add(pending_entry("mlflow", "run", "down", metrics={"x": 9.0}))  # a summary's
        sent: list[int] = []

        def send(entry: dict[str, object]) -> bool:
            if entry["step"] == 2:  # down again: 2 and 3 wait for the next round
                pending.add(pending_entry("mlflow", "run", "down", metrics={}, step=4))
                return False
            sent.append(int(entry["step"]))  # type: ignore[call-overload]
            return True

        assert pending.resend(send, lambda entry: "step" in entry) == 2
        assert sent == [0, 1]
        left = pending.entries()
        # Not sent, not selected, and appended while it ran: all kept, in order.
        assert [e.get("step") for e in left] == [2, 3, None, 4]
        assert pending.resend(lambda entry: True, lambda entry: "step" in entry) == 3
        assert [e.get("step") for e in pending.entries()] == [None]

    def test_the_rank_suffix_follows_the_rank_rule(self) -> None:
        def info(source: str, rank: int, size: int) -> dict[str, object]:
            return {"rank": {"rank": rank, "world_size": size, "source": source}}

        assert rank_suffix_of({}) == ""
        assert rank_suffix_of(info("single", 0, 1)) == ""
        assert rank_suffix_of(info("environment", 0, 1)) == ".rank0"
        assert rank_suffix_of(info("torch.distributed", 0, 1)) == ""
        assert rank_suffix_of(info("torch.distributed", 1, 2)) == ".rank1"
