"""End to end through the real Collector: a training loop's spans fan out to Jaeger (the trace
tree), MLflow (the traces in the experiment, the summary metrics in a run) and W&B; and a
Collector restarted mid-run loses no span."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maeltrace import Timer, TimeType
from maeltrace.cli import main
from maeltrace.collect.service import CollectConfig, CollectServer
from tests.services.collector import CollectorService
from tests.services.jaeger import JaegerService, free_port
from tests.services.mlflow_server import MlflowServer
from tests.services.wandb_reader import read_offline_run

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")

EPOCHS, BATCHES = 2, 3
SPANS = EPOCHS * (1 + 2 * BATCHES + BATCHES) + 1  # epochs, io and batch, forward; the run span


def _train(tmr: Timer, epochs: range = range(EPOCHS)) -> None:
    for _ in epochs:
        with tmr.region(TimeType.EPOCH):
            for _ in tmr.iterate(range(BATCHES)):
                with tmr.region(TimeType.BATCH), tmr.region(TimeType.FORWARD):
                    sum(range(2000))


def _host_port(url: str) -> str:
    return url.removeprefix("http://")


@pytest.fixture
def wandb_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed")
    folder = tmp_path / "wandb-dir"
    folder.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()  # W&B reads WANDB_DIR once per setup: forget an earlier test's
    yield folder
    wandb.teardown()


def test_a_training_loop_fans_out_to_jaeger_mlflow_and_wandb(
    jaeger: JaegerService,
    mlflow_server: MlflowServer,
    wandb_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_id = f"fanout-{uuid.uuid4().hex[:8]}"
    service = f"maeltrace-{run_id}"
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_server.uri)
    traces_experiment = client.create_experiment(f"traces-{run_id}")
    traces_run = client.create_run(traces_experiment).info.run_id
    collect = CollectConfig(
        port=0,
        mlflow_tracking_uri=mlflow_server.uri,
        mlflow_experiment=f"summaries-{run_id}",
        wandb=True,
        state_dir=tmp_path / "collect-state",
        retry_interval_s=1.0,
    )
    with (
        CollectServer(collect) as summaries,
        CollectorService(
            env={
                "JAEGER_OTLP_GRPC_ENDPOINT": _host_port(jaeger.otlp_grpc_endpoint),
                "MLFLOW_TRACKING_URI": mlflow_server.uri,
                "MLFLOW_EXPERIMENT_ID": traces_experiment,
                "MLFLOW_RUN_ID": traces_run,
                "MAELTRACE_COLLECT_ENDPOINT": summaries.url,
                "OTELCOL_ARCHIVE": str(tmp_path / "archive.jsonl"),
            },
            cwd=tmp_path,
        ) as collector,
    ):
        with Timer(
            export=True, endpoint=collector.otlp_http_endpoint, output_dir=tmp_path, run_id=run_id
        ) as tmr:
            _train(tmr)
        # Jaeger: the trace tree.
        traces = jaeger.wait_for_spans(service, SPANS)
        epochs = [t for t in traces if any(s["operationName"] == "epoch" for s in t["spans"])]
        assert len(epochs) == EPOCHS
        assert all(len(t["spans"]) == 1 + 3 * BATCHES for t in epochs)
        # The summary service: exact statistics, logged to MLflow (and W&B) off its request path.
        summary = _wait_for(lambda: _logged(summaries.url, run_id))
    stats = {
        r["key"]: r["stats"] for r in json.loads((tmp_path / "stats.json").read_text())["regions"]
    }
    # MLflow: the traces in the experiment...
    found = _wait_for(lambda: client.search_traces(locations=[traces_experiment]) or None)
    assert len(found) >= EPOCHS
    linked = _wait_for(
        lambda: client.search_traces(locations=[traces_experiment], run_id=traces_run) or None
    )
    assert len(linked) >= EPOCHS  # x-mlflow-run-id linked them to the run
    # ... and one run with the summary, whose metrics equal stats.json.
    experiment = client.get_experiment_by_name(f"summaries-{run_id}")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["maeltrace.run_id"] == run_id
    metrics = run.data.metrics
    for key in ("epoch", "batch", "forward", "io"):
        for field in ("mean", "median", "max", "count"):
            assert metrics[f"maeltrace/{key}/all/{field}"] == pytest.approx(
                stats[key][field], rel=1e-12
            )
    assert summary["sinks"]["mlflow"]["state"] == "logged"
    # W&B: the same values under the same names.
    offline = read_offline_run(wandb_dir)
    assert offline.summary["maeltrace/batch/all/mean"] == pytest.approx(
        stats["batch"]["mean"], rel=1e-12
    )


def test_a_collector_restarted_mid_run_loses_no_span(
    jaeger: JaegerService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = f"maeltrace-restart-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
    grpc, http = free_port(), free_port()
    env = {
        "OTELCOL_OTLP_GRPC": f"127.0.0.1:{grpc}",
        "OTELCOL_OTLP_HTTP": f"127.0.0.1:{http}",
        "JAEGER_OTLP_GRPC_ENDPOINT": _host_port(jaeger.otlp_grpc_endpoint),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # nobody: dropped there
        "MAELTRACE_COLLECT_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTELCOL_ARCHIVE": str(tmp_path / "archive.jsonl"),
    }
    tmr = Timer(export=True, endpoint=f"http://127.0.0.1:{http}", output_dir=tmp_path)
    with CollectorService(env=env, cwd=tmp_path):
        _train(tmr, range(1))
        tmr.flush()
    _train(tmr, range(1, 2))  # the Collector is down: this epoch waits in the outbox
    tmr.flush()
    assert tmr.export_health.spans_pending > 0
    with CollectorService(env=env, cwd=tmp_path) as collector:
        tmr.close()  # the waiting epoch and the run span go to the restarted Collector
        assert tmr.export_health.spans_pending == 0
        assert (
            main(["replay", str(tmr.outbox_path), "--endpoint", collector.otlp_http_endpoint]) == 0
        )
        traces = jaeger.wait_for_spans(service, SPANS)
    assert sum(len(t["spans"]) for t in traces) == SPANS


def _logged(url: str, run_id: str) -> dict[str, Any] | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/runs/{run_id}", timeout=5) as response:
            data: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError:
        return None
    return data if data.get("sinks", {}).get("mlflow", {}).get("state") == "logged" else None


def _wait_for(probe: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found or time.monotonic() > deadline:
            assert found, "timed out waiting"
            return found
        time.sleep(0.2)
