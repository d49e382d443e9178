"""`log_mlflow` against a real MLflow server and real local stores, and the metric names."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maeltrace import Timer, TimeType
from maeltrace._files import read_lines
from maeltrace.sinks import STATS_FIELDS, SinkWarning, metric_values
from tests.services.jaeger import free_port
from tests.services.mlflow_server import MlflowServer

mlflow = pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402  # after the skip: mlflow is an optional extra

from maeltrace.sinks.mlflow import ARTIFACT_PATH, EXPERIMENT, log_mlflow, mlflow_metric_name  # noqa: E402
from tests.fakes.cuda import fake_gpu_clock  # noqa: E402  # after the skip, as above

pytestmark = [
    pytest.mark.slow,
    # MLflow's SQLAlchemy store uses a loader strategy that SQLAlchemy 2.1 deprecates.
    pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SADeprecationWarning"),
]

MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


def make_timer(**kwargs: Any) -> Timer:
    """Batches timed on both clocks (the CPU stand-in for the GPU), forward on the CPU."""
    tmr = Timer(device=fake_gpu_clock, **kwargs)
    for _ in range(4):
        with tmr.region(TimeType.BATCH, gpu=True), tmr.region(TimeType.FORWARD):
            pass
    return tmr


def expected_means(tmr: Timer, prefix: str = "") -> dict[str, float]:
    # The name says which samples: the warm-up skipped (it leaves samples here) or all of them.
    samples = "steady" if tmr.warmup else "all"
    return {
        f"maeltrace/{prefix}batch/{samples}/mean": tmr.get_time_stats("batch").mean,
        f"maeltrace/{prefix}batch/gpu/{samples}/mean": tmr.get_time_stats("batch", gpu=True).mean,
        f"maeltrace/{prefix}forward/{samples}/mean": tmr.get_time_stats("forward").mean,
    }


@pytest.fixture(autouse=True)
def clean_mlflow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No MLflow setting of the machine, no run left active, no worker left behind."""
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
    for thread in threading.enumerate():
        if thread.name == "maeltrace-mlflow":
            thread.join(timeout=30)


# Long enough for a busy test machine; the bound itself is tested in TestFaults.
PATIENT = 60.0


@pytest.fixture
def server(mlflow_server: MlflowServer) -> MlflowServer:
    return mlflow_server


@pytest.fixture
def tracking(server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    return MlflowClient(tracking_uri=server.uri)


def run_of(client: MlflowClient, tmr: Timer) -> Any:
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`maeltrace.run_id` = '{tmr.run_id}'",
    )
    assert len(runs) == 1, runs
    return runs[0]


class TestMetricNames:
    @pytest.mark.parametrize(("prefix", "expected"), [("", ""), ("train", "train/"), ("t/", "t/")])
    def test_means_are_named_by_key_with_a_gpu_suffix(self, prefix: str, expected: str) -> None:
        tmr = make_timer()
        assert metric_values(tmr.summary(), prefix) == expected_means(tmr, expected)

    def test_all_stats_name_each_field(self) -> None:
        tmr = make_timer()
        values = metric_values(tmr.summary(), "train", "all")
        gpu = tmr.get_time_stats("batch", gpu=True)
        assert set(values) == {
            f"maeltrace/train/{row}/all/{field}"
            for row in ("batch", "batch/gpu", "forward")
            for field in STATS_FIELDS
        }
        assert values["maeltrace/train/batch/gpu/all/p95"] == gpu.p95
        assert values["maeltrace/train/batch/gpu/all/count"] == 4.0
        assert values["maeltrace/train/forward/all/stdev"] == tmr.get_time_stats("forward").stdev

    def test_deep500_names_are_the_seeds(self) -> None:
        tmr = make_timer()
        assert list(metric_values(tmr.summary(), "train", names="deep500")) == [
            "train/CPU/BATCH",
            "train/GPU/BATCH",
            "train/CPU/FORWARD",
        ]
        cpu_only = Timer()
        with cpu_only.region(TimeType.EPOCH), cpu_only.region("my_key"):
            pass
        assert list(metric_values(cpu_only.summary(), names="deep500")) == ["EPOCH", "my_key"]

    def test_values_skip_the_warmup_like_get_time_stats(self) -> None:
        tmr = make_timer(warmup=2)
        assert metric_values(tmr.summary()) == expected_means(tmr)
        assert all("/steady/" in name for name in expected_means(tmr))

    def test_a_row_the_warmup_leaves_empty_says_all_not_steady(self) -> None:
        tmr = make_timer(warmup=2)
        with tmr.region("once"):
            pass
        values = metric_values(tmr.summary(), stats="all")
        assert values["maeltrace/once/all/count"] == 1.0
        assert values["maeltrace/batch/steady/count"] == 2.0
        assert not any(name.startswith("maeltrace/once/steady") for name in values)

    def test_rows_that_would_share_a_name_keep_the_first(self) -> None:
        tmr = make_timer()
        with tmr.region("batch/gpu"):
            pass
        with pytest.warns(SinkWarning, match="'maeltrace/batch/gpu/all/mean'"):
            values = metric_values(tmr.summary())
        assert values == expected_means(tmr)

    def test_mlflow_names_replace_characters_mlflow_refuses(self) -> None:
        assert mlflow_metric_name("train/io (prefetch)") == "train/io _prefetch_"
        assert mlflow_metric_name("/a//b/./c/") == "a/b/_/c"

    @pytest.mark.parametrize(("stats", "names"), [("median", "maeltrace"), ("mean", "seed")])
    def test_bad_arguments_raise(self, stats: str, names: str) -> None:
        with pytest.raises(ValueError, match="must be one of"):
            log_mlflow(make_timer(), stats=stats, names=names)

    @pytest.mark.parametrize("timeout_s", [0, -1.0, float("inf"), True])
    def test_a_bad_timeout_raises(self, timeout_s: float) -> None:
        with pytest.raises(ValueError, match="timeout_s"):
            log_mlflow(make_timer(), timeout_s=timeout_s)


def test_a_trainers_epoch_and_maeltraces_survive_side_by_side_in_the_active_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 14: a trainer's `epoch` (3.0 at step 12) and maeltrace's epoch time in one run.
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    tmr = make_timer()
    with tmr.region(TimeType.EPOCH):
        pass
    with mlflow.start_run() as active:
        mlflow.set_tag("maeltrace.host", "the user's")
        mlflow.log_metric("epoch", 3.0, step=12)
        logged = log_mlflow(tmr, artifacts=False)
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(active.info.run_id)
    assert run.data.metrics["epoch"] == 3.0
    assert [(m.value, m.step) for m in client.get_metric_history(run.info.run_id, "epoch")] == [
        (3.0, 12)
    ]
    assert run.data.metrics["maeltrace/epoch/all/mean"] == logged["maeltrace/epoch/all/mean"]
    assert run.data.tags["maeltrace.run_id"] == tmr.run_id
    assert run.data.tags["maeltrace.warmup"] == "0"
    assert run.data.tags["maeltrace.host"] == "the user's"  # a tag the run holds is kept


def test_a_run_id_given_gets_maeltraces_tags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    client = MlflowClient(tracking_uri=store)
    given = client.create_run(client.create_experiment("mine")).info.run_id
    tmr = make_timer()
    logged = log_mlflow(tmr, artifacts=False, run_id=given)
    run = client.get_run(given)
    assert run.data.metrics == logged
    assert run.data.tags["maeltrace.run_id"] == tmr.run_id
    assert run.data.tags["maeltrace.host"] == socket.gethostname()
    assert run.info.status == "RUNNING"  # someone else's run is left to them


class TestServer:
    @pytest.mark.parametrize(("prefix", "expected"), [("", ""), ("train", "train/"), ("t/", "t/")])
    def test_means_reach_a_new_finished_run(
        self, tracking: MlflowClient, prefix: str, expected: str
    ) -> None:
        tmr = make_timer()
        logged = log_mlflow(tmr, prefix, artifacts=False, timeout_s=PATIENT)
        run = run_of(tracking, tmr)
        assert logged == expected_means(tmr, expected)
        assert run.data.metrics == logged
        assert run.info.status == "FINISHED"
        assert run.info.run_name == tmr.run_id
        assert run.data.tags["maeltrace.host"] == socket.gethostname()
        assert tracking.list_artifacts(run.info.run_id) == []

    def test_all_stats_reach_the_run_at_step_0(
        self, tracking: MlflowClient, server: MlflowServer
    ) -> None:
        tmr = make_timer()
        logged = log_mlflow(tmr, "train", stats="all", artifacts=False, timeout_s=PATIENT)
        run = run_of(tracking, tmr)
        assert run.data.metrics == logged == metric_values(tmr.summary(), "train", "all")
        assert len(logged) == 3 * len(STATS_FIELDS)
        query = urllib.parse.urlencode(
            {"run_id": run.info.run_id, "metric_key": "maeltrace/train/batch/gpu/all/median"}
        )
        url = f"{server.uri}/api/2.0/mlflow/metrics/get-history?{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            history = json.loads(response.read())["metrics"]
        assert [(m["value"], m["step"]) for m in history] == [
            (tmr.get_time_stats("batch", gpu=True).median, 0)
        ]

    def test_stats_files_and_chrome_trace_are_artifacts(
        self, tracking: MlflowClient, tmp_path: Path
    ) -> None:
        tmr = make_timer()
        log_mlflow(tmr, timeout_s=PATIENT)
        run_id = run_of(tracking, tmr).info.run_id
        listed = {Path(a.path).name for a in tracking.list_artifacts(run_id, ARTIFACT_PATH)}
        assert listed == {"stats.json", "stats.md", "trace.json"}
        local = tracking.download_artifacts(run_id, f"{ARTIFACT_PATH}/stats.json", str(tmp_path))
        uploaded = json.loads(Path(local).read_text())
        assert uploaded == json.loads((tmr.output_dir / "stats.json").read_text())
        assert {r["label"] for r in uploaded["regions"]} >= {"Batch (CPU)", "Batch (GPU)"}

    def test_an_active_run_is_used_and_left_running(self, tracking: MlflowClient) -> None:
        tmr = make_timer()
        with mlflow.start_run() as active:
            logged = log_mlflow(tmr, artifacts=False, timeout_s=PATIENT)
            assert mlflow.active_run() is not None
            assert mlflow.active_run().info.run_id == active.info.run_id
            assert tracking.get_run(active.info.run_id).info.status == "RUNNING"
        assert tracking.get_run(active.info.run_id).data.metrics == logged

    def test_the_run_named_by_mlflow_run_id_is_used_and_left_running(
        self, tracking: MlflowClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        run_id = tracking.create_run("0").info.run_id
        monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
        logged = log_mlflow(make_timer(), artifacts=False, timeout_s=PATIENT)
        run = tracking.get_run(run_id)
        assert run.data.metrics == logged
        assert run.info.status == "RUNNING"
        assert os.environ["MLFLOW_RUN_ID"] == run_id  # not consumed, as mlflow.start_run would

    def test_a_run_id_given_is_used_and_left_running(self, tracking: MlflowClient) -> None:
        run_id = tracking.create_run("0").info.run_id
        with mlflow.start_run() as other:
            logged = log_mlflow(make_timer(), run_id=run_id, artifacts=False, timeout_s=PATIENT)
        assert tracking.get_run(run_id).data.metrics == logged
        assert tracking.get_run(run_id).info.status == "RUNNING"
        assert tracking.get_run(other.info.run_id).data.metrics == {}


class TestLocalStores:
    def test_with_no_tracking_uri_the_runs_go_to_sqlite_in_the_working_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        assert not mlflow.is_tracking_uri_set()
        tmr = make_timer()
        logged = log_mlflow(tmr)
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        run = run_of(client, tmr)
        assert run.data.metrics == logged
        names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, ARTIFACT_PATH)}
        assert names == {"stats.json", "stats.md", "trace.json"}

    def test_instead_of_the_file_store_the_runs_go_to_sqlite_in_the_output_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # An old ./mlruns with an experiment makes MLflow fall back to its file store, which
        # MLflow 3.18 refuses.
        monkeypatch.chdir(tmp_path)
        (tmp_path / "mlruns" / "0").mkdir(parents=True)
        (tmp_path / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
        assert mlflow.get_tracking_uri().startswith("file:")
        tmr = make_timer()
        logged = log_mlflow(tmr)
        client = MlflowClient(tracking_uri=f"sqlite:///{tmr.output_dir / 'mlflow.db'}")
        run = run_of(client, tmr)
        assert run.data.metrics == logged
        assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
        uploaded = tmr.output_dir / "mlartifacts"
        assert sorted(p.name for p in uploaded.rglob("*.json")) == ["stats.json", "trace.json"]
        assert not (tmp_path / "mlflow.db").exists()
        assert sorted(p.name for p in (tmp_path / "mlruns").rglob("*")) == ["0", "meta.yaml"]


class TestFaults:
    def test_a_closed_port_gives_one_warning_and_a_pending_file_within_seconds(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
        tmr = make_timer()
        (tmr.output_dir / "pending-mlflow.jsonl").write_text('{"torn": ')  # a crash's remains
        for call in (1, 2):
            started = time.monotonic()
            with pytest.warns(SinkWarning) as caught:
                logged = log_mlflow(tmr, "train")
            elapsed = time.monotonic() - started
            assert elapsed < 10, elapsed
            assert len(caught) == 1
            message = str(caught[0].message)
            assert "metrics were not logged" in message and "pending-mlflow.jsonl" in message
            pending = [
                e for _, e in read_lines(tmr.output_dir / "pending-mlflow.jsonl", parse=json.loads)
            ]
            assert len(pending) == call
            assert pending[-1]["metrics"] == logged == expected_means(tmr, "train/")
            assert pending[-1]["run_id"] == tmr.run_id
        # The stats files are still written locally, a torn line in the pending file stays a
        # line of its own, and MLflow's settings are the user's again.
        assert (tmr.output_dir / "stats.json").is_file()
        assert (tmr.output_dir / "pending-mlflow.jsonl").read_text().startswith('{"torn": \n')
        for thread in threading.enumerate():
            if thread.name == "maeltrace-mlflow":
                thread.join(timeout=30)
        assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ

    def test_a_server_that_never_answers_is_waited_for_timeout_s(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(16)  # connections are accepted by the kernel, never answered
            port = silent.getsockname()[1]
            monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
            tmr = make_timer()
            started = time.monotonic()
            with pytest.warns(SinkWarning, match=r"no answer from .* within 1 s"):
                log_mlflow(tmr, artifacts=False, timeout_s=1.0)
            assert time.monotonic() - started < 5
            for thread in threading.enumerate():
                if thread.name == "maeltrace-mlflow":
                    thread.join(timeout=30)
        pending = [
            e for _, e in read_lines(tmr.output_dir / "pending-mlflow.jsonl", parse=json.loads)
        ]
        assert pending[0]["metrics"] == expected_means(tmr)

    def test_a_missing_mlflow_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "mlflow", None)
        with pytest.raises(ImportError, match=r"pip install 'maeltrace\[mlflow\]'"):
            log_mlflow(make_timer())

    def test_a_disabled_timer_logs_nothing(self, tmp_path: Path) -> None:
        tmr = Timer(enabled=False, output_dir=tmp_path / "out")
        assert log_mlflow(tmr) == {}
        assert not (tmp_path / "out").exists()
