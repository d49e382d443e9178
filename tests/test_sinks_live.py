"""Live per-epoch series (`Timer(live=...)`) read back from real MLflow stores and offline W&B."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maeltrace import Timer, TimeType
from maeltrace.records import STATUS_OK
from maeltrace.sinks import SinkWarning
from maeltrace.sinks.live import QUEUE_EPOCHS, parse_backends
from tests.fakes.cuda import fake_gpu_clock
from tests.services.gate import Gate
from tests.services.jaeger import free_port
from tests.services.mlflow_server import MlflowServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SADeprecationWarning"),
]

EPOCHS = 3


def train(tmr: Timer, epochs: int = EPOCHS) -> None:
    """A few epochs of batches of growing counts, timed on both clocks."""
    for epoch in range(epochs):
        with tmr.region(TimeType.EPOCH):
            for _ in range(epoch + 2):
                with tmr.region(TimeType.BATCH, gpu=True):
                    time.sleep(0.001)


def epoch_means(tmr: Timer, key: str = "batch", gpu: bool = False) -> list[float]:
    """Each epoch's mean of ``key`` from the records, in epoch order."""
    records = tmr.records()
    key_id = records.keys.index(key)
    per_epoch: dict[int, list[int]] = {}
    for i in range(len(records)):
        if records.key_id[i] == key_id and records.status[i] == STATUS_OK:
            value = records.device_ns[i] if gpu else records.end_ns[i] - records.start_ns[i]
            per_epoch.setdefault(records.trace[i], []).append(value)
    return [sum(v) / len(v) / 1e9 for _, v in sorted(per_epoch.items())]


def test_off_by_default_no_thread_and_no_tracker_imported() -> None:
    code = (
        "import sys, threading, maeltrace\n"
        "tmr = maeltrace.Timer()\n"
        "for _ in range(2):\n"
        "    with tmr.region('epoch'):\n"
        "        with tmr.region('batch'): pass\n"
        "tmr.close()\n"
        "bad = {'mlflow', 'wandb', 'maeltrace.sinks.live'} & set(sys.modules)\n"
        "live = [t.name for t in threading.enumerate() if t.name == 'maeltrace-live']\n"
        "assert not bad and not live, (bad, live)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_backends_are_named_by_argument_or_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_backends("mlflow, WandB,mlflow") == ("mlflow", "wandb")
    assert parse_backends(("wandb",)) == ("wandb",)
    assert parse_backends("") == ()
    with pytest.raises(ValueError, match="live must name"):
        Timer(live="tensorboard")
    monkeypatch.setenv("MAELTRACE_LIVE", "nope")
    with pytest.raises(ValueError, match="live must name"):
        Timer()
    assert Timer(enabled=False)._live is None  # a disabled timer starts no thread


class TestMlflow:
    mlflow: Any

    @pytest.fixture(autouse=True)
    def store(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
        self.mlflow = pytest.importorskip("mlflow")
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
            monkeypatch.delenv(name, raising=False)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        # The store's tables first: creating them takes seconds, more than a test should wait.
        self.mlflow.MlflowClient(tracking_uri=uri).search_experiments()
        yield uri
        while self.mlflow.active_run() is not None:
            self.mlflow.end_run()

    def history(self, uri: str, run_id: str, name: str) -> list[tuple[int, float]]:
        client = self.mlflow.MlflowClient(tracking_uri=uri)
        return [(m.step, m.value) for m in client.get_metric_history(run_id, name)]

    def test_each_epoch_is_a_step_of_the_active_run(self, store: str) -> None:
        with self.mlflow.start_run() as run:
            tmr = Timer(device=fake_gpu_clock, live="mlflow")
            train(tmr)
            tmr.close()
            run_id = run.info.run_id
        assert self.mlflow.get_run(run_id).info.status == "FINISHED"  # ended by the user only
        for gpu, name in ((False, "batch"), (True, "batch/gpu")):
            got = self.history(store, run_id, f"maeltrace/{name}/epoch/mean")
            assert [step for step, _ in got] == list(range(EPOCHS))
            assert [v for _, v in got] == pytest.approx(epoch_means(tmr, gpu=gpu), rel=1e-9)
        counts = self.history(store, run_id, "maeltrace/batch/epoch/count")
        assert counts == [(e, float(e + 2)) for e in range(EPOCHS)]
        epochs = self.history(store, run_id, "maeltrace/epoch/epoch/count")
        assert epochs == [(e, 1.0) for e in range(EPOCHS)]

    def test_each_epoch_has_its_throughput(self, store: str) -> None:
        with self.mlflow.start_run() as run:
            tmr = Timer(live="mlflow")
            for epoch in range(EPOCHS):
                with tmr.region(TimeType.EPOCH):
                    for _ in range(epoch + 2):
                        with tmr.region(TimeType.BATCH, items=8 * (epoch + 1)):
                            time.sleep(0.001)
            tmr.close()
        records = tmr.records()
        batch = records.keys.index("batch")
        expected: dict[int, list[int]] = {}
        for i in range(len(records)):
            if records.key_id[i] == batch:
                got = expected.setdefault(records.trace[i], [0, 0])
                got[0] += records.counts[records.seq[i]][0]
                got[1] += records.end_ns[i] - records.start_ns[i]
        rates = self.history(store, run.info.run_id, "maeltrace/batch/epoch/items_per_s")
        assert [step for step, _ in rates] == list(range(EPOCHS))
        assert [v for _, v in rates] == pytest.approx(
            [n / (ns / 1e9) for n, ns in expected.values()], rel=1e-9
        )

    def test_without_a_run_one_is_started_and_the_summary_goes_there_too(self, store: str) -> None:
        tmr = Timer(live=("mlflow",))
        train(tmr)
        tmr.log_mlflow_all(artifacts=False)
        tmr.close()
        client = self.mlflow.MlflowClient(tracking_uri=store)
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`maeltrace.run_id` = '{tmr.run_id}'",
        )
        assert len(runs) == 1
        run = runs[0]
        assert run.info.status == "FINISHED"
        assert "maeltrace/batch/all/mean" in run.data.metrics
        assert len(self.history(store, run.info.run_id, "maeltrace/batch/epoch/mean")) == EPOCHS

    def test_at_exit_the_queued_epochs_are_sent_and_the_run_ended(
        self, store: str, tmp_path: Path
    ) -> None:
        code = (
            "import maeltrace\n"
            "tmr = maeltrace.Timer(live='mlflow', export=False)\n"
            "for _ in range(3):\n"
            "    with tmr.region('epoch'):\n"
            "        with tmr.region('batch'): pass\n"
            "print(tmr.run_id)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True
        )
        client = self.mlflow.MlflowClient(tracking_uri=store)
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`maeltrace.run_id` = '{done.stdout.strip()}'",
        )
        assert [r.info.status for r in runs] == ["FINISHED"]
        got = self.history(store, runs[0].info.run_id, "maeltrace/batch/epoch/count")
        assert got == [(e, 1.0) for e in range(3)]

    def test_a_real_tracking_server_gets_the_series(
        self, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
        with self.mlflow.start_run() as run:
            tmr = Timer(live="mlflow")
            train(tmr)
            tmr.close()
        got = self.history(mlflow_server.uri, run.info.run_id, "maeltrace/batch/epoch/mean")
        assert [step for step, _ in got] == list(range(EPOCHS))
        assert [v for _, v in got] == pytest.approx(epoch_means(tmr), rel=1e-9)

    def test_a_dead_server_never_slows_the_loop_and_warns_once(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tmr = Timer(live="mlflow")
            started = time.monotonic()
            train(tmr)
            loop_s = time.monotonic() - started
            started = time.monotonic()
            tmr.close()
            close_s = time.monotonic() - started
        assert loop_s < 1.0, loop_s  # 9 batches of 1 ms: nothing waits for the server
        assert close_s < 12.0, close_s
        live = [w for w in caught if issubclass(w.category, SinkWarning)]
        assert len(live) == 1, [str(w.message) for w in live]
        assert "not logged live" in str(live[0].message)
        lines = (tmr.output_dir / "pending-mlflow.jsonl").read_text().splitlines()
        entries = [json.loads(line) for line in lines]
        assert [e["step"] for e in entries] == list(range(EPOCHS))
        means = epoch_means(tmr)
        assert [e["metrics"]["maeltrace/batch/epoch/mean"] for e in entries] == pytest.approx(means)
        assert not [t for t in threading.enumerate() if t.name == "maeltrace-live"]

    def test_a_server_that_never_answers_is_left_behind_within_the_bound(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(16)  # connections are accepted by the kernel, never answered
            monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{silent.getsockname()[1]}")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tmr = Timer(live="mlflow")
                started = time.monotonic()
                train(tmr)
                loop_s = time.monotonic() - started
                started = time.monotonic()
                tmr.close(timeout_s=2.0)
                close_s = time.monotonic() - started
        assert loop_s < 1.0, loop_s
        assert close_s < 4.0, close_s
        assert [w for w in caught if issubclass(w.category, SinkWarning)]
        # The epochs behind the hung one went to the pending file from close itself.
        lines = (tmr.output_dir / "pending-mlflow.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(1, EPOCHS))
        # The hung call ends at MLflow's own timeout; then the user's MLflow settings are back.
        for thread in threading.enumerate():
            if thread.name == "maeltrace-live":
                thread.join(timeout=60)
        assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
        steps = [
            json.loads(line)["step"]
            for line in (tmr.output_dir / "pending-mlflow.jsonl").read_text().splitlines()
        ]
        assert sorted(steps) == list(range(EPOCHS))

    def test_a_tracker_slower_than_the_loop_loses_the_newest_epochs_never_the_loop(
        self, store: str
    ) -> None:
        epochs = 4 * QUEUE_EPOCHS  # far faster than MLflow starts a run and logs to SQLite
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tmr = Timer(live="mlflow", export=False)
            longest = 0.0
            started = time.monotonic()
            for _ in range(epochs):
                began = time.monotonic()
                with tmr.region(TimeType.EPOCH), tmr.region(TimeType.BATCH):
                    pass
                longest = max(longest, time.monotonic() - began)
            loop_s = time.monotonic() - started
            live = tmr._live
            assert live is not None
            tmr.close()
        assert loop_s < 2.0 and longest < 0.25, (loop_s, longest)  # nothing waited
        assert live.dropped > 0
        dropped = [w for w in caught if issubclass(w.category, SinkWarning)]
        assert len(dropped) == 1 and "dropped" in str(dropped[0].message), dropped
        client = self.mlflow.MlflowClient(tracking_uri=store)
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`maeltrace.run_id` = '{tmr.run_id}'",
        )
        steps = [
            step
            for step, _ in self.history(store, runs[0].info.run_id, "maeltrace/batch/epoch/count")
        ]
        # The newest epochs are the ones dropped: the oldest all arrive, in order, once each.
        assert steps == sorted(set(steps))
        assert steps[:QUEUE_EPOCHS] == list(range(QUEUE_EPOCHS))
        assert len(steps) + live.dropped == epochs
        assert live.logged == len(steps)
        assert not (tmr.output_dir / "pending-mlflow.jsonl").exists()  # dropped, not kept

    def test_epochs_kept_while_the_server_was_down_are_sent_when_it_is_up(
        self, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert mlflow_server.port is not None
        gate = Gate(mlflow_server.port)  # shut: the tracking server is down
        monkeypatch.setenv("MLFLOW_TRACKING_URI", gate.url)
        down, up = 2, 2
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tmr = Timer(live="mlflow", export=False)
            live = tmr._live
            assert live is not None
            for epoch in range(down):
                with tmr.region(TimeType.EPOCH), tmr.region(TimeType.BATCH):
                    time.sleep(0.001 * (epoch + 1))
            deadline = time.monotonic() + 60.0
            while live.failures < down and time.monotonic() < deadline:
                time.sleep(0.05)
            assert live.failures == down
            gate.set_open(True)  # the server comes up
            try:
                for epoch in range(down, down + up):
                    with tmr.region(TimeType.EPOCH), tmr.region(TimeType.BATCH):
                        time.sleep(0.001 * (epoch + 1))
                tmr.close()
            finally:
                gate.close()
        assert len([w for w in caught if issubclass(w.category, SinkWarning)]) == 1
        assert live.resent == down
        client = self.mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`maeltrace.run_id` = '{tmr.run_id}'",
        )
        assert len(runs) == 1
        got = self.history(mlflow_server.uri, runs[0].info.run_id, "maeltrace/batch/epoch/mean")
        assert sorted(step for step, _ in got) == list(range(down + up))  # each once
        assert [v for _, v in sorted(got)] == pytest.approx(epoch_means(tmr), rel=1e-9)
        pending = tmr.output_dir / "pending-mlflow.jsonl"
        assert not pending.exists() or not pending.read_text().strip()


def test_wandb_offline_gets_one_row_per_epoch_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb = pytest.importorskip("wandb")
    from tests.services.wandb_reader import read_offline_run

    wandb.teardown()
    for name in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    try:
        tmr = Timer(device=fake_gpu_clock, live="wandb")
        train(tmr)
        tmr.log_wb_all(artifacts=False)
        tmr.close()
        assert wandb.run is None  # started by the live series, finished at close
    finally:
        if wandb.run is not None:
            wandb.run.finish()
        wandb.teardown()
    run = read_offline_run(tmp_path)
    rows = [row for row in run.history if "maeltrace/epoch" in row]
    assert [row["maeltrace/epoch"] for row in rows] == list(range(EPOCHS))
    got = [row["maeltrace/batch/epoch/mean"] for row in rows]
    assert got == pytest.approx(epoch_means(tmr), rel=1e-9)
    gpu = [row["maeltrace/batch/gpu/epoch/mean"] for row in rows]
    assert gpu == pytest.approx(epoch_means(tmr, gpu=True), rel=1e-9)
    # The final summary went to the same run, after the epochs.
    assert "maeltrace/batch/all/mean" in run.history[-1]
