"""The summary service, ``maeltrace collect``: real exports in, summaries and MLflow runs out.

End to end over real sockets: timers export to the service (uvicorn in a thread), which logs to
a real MLflow server (SQLite store). HTTP details that need no real server use Starlette's
TestClient. The pure parts (attribute parsing, pooling, metric names, the pending file) are
tested directly.
"""

from __future__ import annotations

import gzip
import http.client
import json
import math
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from maeltrace import Timer, TimeType
from maeltrace.collect._mlflow_out import (
    PendingFile,
    Publisher,
    SinkError,
    clock_metric_name,
    summary_metrics,
)
from maeltrace.collect._summaries import (
    FIELDS,
    MAX_RATE,
    WORK_FIELDS,
    RunSummaries,
    stats_from_attributes,
)
from maeltrace.collect.service import CollectConfig, CollectServer
from maeltrace.otel._otlp_json import traces_to_json_line
from maeltrace.otel.spans import attributes
from maeltrace.report import MAX_BYTES, Row
from maeltrace.sinks.base import STATS_FIELDS
from maeltrace.stats import compute_stats
from tests.services.gate import Gate
from tests.services.mlflow_server import MlflowServer

mlflow = pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402  # after the skip: mlflow is an optional extra

from tests.fakes.cuda import (  # noqa: E402  # after the skip, as above
    FakeCudaDevice,
    cuda_clock_on,
    fake_gpu_clock,
)

HOST = "127.0.0.1"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking server, run id, rank or token of the machine leaks into a test."""
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "MAELTRACE_COLLECT_TOKEN",
        "MAELTRACE_RUN_ID",
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "SLURM_PROCID",
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "HOROVOD_RANK",
    ):
        monkeypatch.delenv(name, raising=False)


def config(tmp_path: Path, **overrides: Any) -> CollectConfig:
    """A test configuration: any free port, no MLflow unless given, quick retries."""
    values: dict[str, Any] = {
        "port": 0,
        "mlflow_tracking_uri": None,
        "mlflow_experiment": f"collect-{uuid.uuid4().hex[:8]}",
        "state_dir": tmp_path / "state",
        "attempts": 2,
        "backoff_s": 0.05,
        "request_timeout_s": 30.0,
    }
    values.update(overrides)
    return CollectConfig(**values)


def run_timer(
    endpoint: str, protocol: str, output_dir: Path, *, sleep_s: float = 0.0, gpu: bool = False
) -> Timer:
    """2 epochs of 3 batches, exported to ``endpoint``; closed (so the run span is sent)."""
    tmr = Timer(
        export=True,
        endpoint=endpoint,
        protocol=protocol,
        output_dir=output_dir,
        device=fake_gpu_clock if gpu else None,
    )
    for _ in range(2):
        with tmr.region(TimeType.EPOCH):
            for _ in range(3):
                with tmr.region(TimeType.BATCH, gpu=gpu):
                    if sleep_s:
                        time.sleep(sleep_s)
    tmr.close()
    return tmr


def get_json(url: str, token: str | None = None) -> Any:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def expected_stats(tmr: Timer, key: str = "batch", gpu: bool = False) -> dict[str, float | int]:
    return tmr.get_time_stats(key, gpu=gpu, warmup=0).to_dict()


def mlflow_runs(server: MlflowServer, experiment: str, run_id: str) -> list[Any]:
    client = MlflowClient(tracking_uri=server.uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return list(
        client.search_runs(
            [found.experiment_id], filter_string=f"tags.`maeltrace.run_id` = '{run_id}'"
        )
    )


def run_span_request(
    run_id: str,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    durations_ns: tuple[int, ...] = (1_000_000, 2_000_000, 4_000_000),
    pid: int = 4242,
    work: Mapping[str, object] | None = None,
) -> ExportTraceServiceRequest:
    """An export request holding one process's run span, as a timer would send it, with
    ``work`` (`WORK_FIELDS` to values) beside the statistics of ``batch``."""
    resource: dict[str, object] = {
        "service.name": "train",
        "host.name": "node-a",
        "process.pid": pid,
        "maeltrace.run_id": run_id,
    }
    if rank is not None:
        resource["maeltrace.rank"] = rank
    if world_size is not None:
        resource["maeltrace.world_size"] = world_size
    stats = compute_stats(list(durations_ns)).to_dict()
    span_attributes: dict[str, object] = {"maeltrace.run_id": run_id}
    span_attributes.update({f"maeltrace.stats.batch.cpu.{k}": v for k, v in stats.items()})
    span_attributes.update({f"maeltrace.stats.batch.cpu.{k}": v for k, v in (work or {}).items()})
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(attributes(resource))
    span = resource_spans.scope_spans.add().spans.add()
    span.trace_id = uuid.uuid4().bytes
    span.span_id = uuid.uuid4().bytes[:8]
    span.name = "run"
    span.start_time_unix_nano = 1
    span.end_time_unix_nano = 2
    span.attributes.extend(attributes(span_attributes))
    return request


# -- end to end: timers -> service -> MLflow ---------------------------------------------------


def test_two_ranks_are_summarised_and_logged_to_mlflow(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = f"two-ranks-{uuid.uuid4().hex[:8]}"
    cfg = config(tmp_path, mlflow_tracking_uri=mlflow_server.uri)
    monkeypatch.setenv("MAELTRACE_RUN_ID", run_id)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "trainer")
    with CollectServer(cfg) as server:
        # Rank 1 first and slower (its batches sleep); rank 0 over OTLP/JSON.
        monkeypatch.setenv("RANK", "1")
        slow = run_timer(server.url, "http/protobuf", tmp_path / "r1", sleep_s=0.02)
        monkeypatch.setenv("RANK", "0")
        fast = run_timer(server.url, "http/json", tmp_path / "r0")
        summary = get_json(f"{server.url}/runs/{run_id}")
        assert server.collector.wait_idle(60)
        sinks = get_json(f"{server.url}/runs/{run_id}")["sinks"]

    assert summary["process_count"] == 2 and summary["world_size"] == 2
    assert summary["finished"] is True
    assert summary["services"] == ["trainer"] and summary["hosts"] == [socket.gethostname()]
    # Every span of both processes was counted: 2 epochs + 6 batches + the run span each.
    assert summary["spans_received"] == 2 * (2 + 6 + 1)
    processes = summary["processes"]
    assert sorted(processes) == ["rank0", "rank1"]
    for label, tmr in (("rank0", fast), ("rank1", slow)):
        for key in ("batch", "epoch"):
            assert processes[label]["stats"][key]["cpu"] == pytest.approx(
                expected_stats(tmr, key), rel=1e-15
            )
    batch = summary["cross_rank"]["batch"]["cpu"]
    assert batch["slowest"] == "rank1" and batch["slowest_rank"] == 1
    assert batch["fastest_rank"] == 0
    assert batch["skew"] > 1
    assert batch["skew"] == pytest.approx(
        slow.get_time_stats("batch").mean / fast.get_time_stats("batch").mean
    )
    every = fast.get_time("batch") + slow.get_time("batch")
    pooled = batch["pooled"]
    assert pooled["count"] == 12
    assert pooled["mean"] == pytest.approx(statistics.fmean(every), rel=1e-9)
    assert pooled["stdev"] == pytest.approx(statistics.stdev(every), rel=1e-6)
    assert pooled["min"] == min(every) and pooled["max"] == max(every)
    assert "median" not in pooled and "percentiles" in summary["pooled_note"]

    # One MLflow run for the maeltrace run, with the summary's values.
    assert sinks["mlflow"]["state"] == "logged"
    (logged,) = mlflow_runs(mlflow_server, cfg.mlflow_experiment or "", run_id)
    assert logged.info.run_id == sinks["mlflow"]["id"]
    assert logged.info.status == "FINISHED"
    tags = logged.data.tags
    assert tags["maeltrace.run_id"] == run_id
    assert tags["service.name"] == "trainer"
    assert tags["host.name"] == socket.gethostname()
    assert tags["maeltrace.world_size"] == "2"
    metrics = logged.data.metrics
    assert metrics["maeltrace/batch/all/mean"] == pytest.approx(pooled["mean"], rel=1e-15)
    assert metrics["maeltrace/batch/all/count"] == 12
    assert metrics["maeltrace/batch/all/rank0/mean"] == pytest.approx(
        fast.get_time_stats("batch").mean
    )
    assert metrics["maeltrace/batch/all/rank1/mean"] == pytest.approx(
        slow.get_time_stats("batch").mean
    )
    assert metrics["maeltrace/batch/all/slowest_rank"] == 1
    assert metrics["maeltrace/batch/all/skew"] == pytest.approx(batch["skew"], rel=1e-15)
    assert metrics["maeltrace/epoch/all/slowest_rank"] == 1
    # Median and percentiles are not pooled, so not logged for a run of several ranks.
    assert "maeltrace/batch/all/median" not in metrics


def test_one_process_over_json_logs_every_field(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = f"single-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MAELTRACE_RUN_ID", run_id)
    cfg = config(tmp_path, mlflow_tracking_uri=mlflow_server.uri)
    with CollectServer(cfg) as server:
        tmr = run_timer(server.url, "http/json", tmp_path / "out", gpu=True)
        assert server.collector.wait_idle(60)
        summary = get_json(f"{server.url}/runs/{run_id}")

    (process,) = summary["processes"].values()
    assert process["rank"] is None and process["label"].endswith(f"/{process['pid']}")
    device_clock = tmr.summary().device_clock
    assert device_clock is not None and process["device_clock"] == device_clock["name"]
    assert process["stats"]["batch"]["gpu"] == pytest.approx(expected_stats(tmr, gpu=True))
    (logged,) = mlflow_runs(mlflow_server, cfg.mlflow_experiment or "", run_id)
    metrics = logged.data.metrics
    # The names of Timer.log_mlflow_all(stats="all"): STATS_FIELDS under batch and batch/gpu.
    for row, gpu in (("batch", False), ("batch/gpu", True)):
        expected = expected_stats(tmr, gpu=gpu)
        for name in STATS_FIELDS:
            assert metrics[f"maeltrace/{row}/all/{name}"] == pytest.approx(
                expected[name], rel=1e-15
            ), name
    assert len(metrics) == 3 * len(STATS_FIELDS)  # batch, batch/gpu and epoch
    assert not any("rank" in name or "skew" in name for name in metrics)
    assert logged.info.status == "FINISHED"


MB = 1 << 20
FLOPS = {"flops_per_item": 1e6, "peak_flops": 1e12}
"""Each item a MFLOP on a TFLOP/s device: MFU = items/s / 1e6 (`Timer` arguments)."""


def run_work_timer(
    endpoint: str,
    protocol: str,
    output_dir: Path,
    *,
    items: int,
    tokens: int | None = None,
    gpu: FakeCudaDevice | None = None,
    sleep_s: float = 0.0,
) -> Timer:
    """1 epoch of 4 batches counting ``items`` (and ``tokens``) each, exported to ``endpoint``;
    on ``gpu`` (a fake CUDA device, peak memory measured) batch i allocates i + 1 MiB."""
    tmr = Timer(
        export=True,
        endpoint=endpoint,
        protocol=protocol,
        output_dir=output_dir,
        device=cuda_clock_on(gpu, memory=True) if gpu is not None else None,
        flops_per_item=FLOPS["flops_per_item"],
        peak_flops=FLOPS["peak_flops"],
    )
    with tmr.region(TimeType.EPOCH):
        for i in range(4):
            with tmr.region(TimeType.BATCH, gpu=gpu is not None, items=items, tokens=tokens):
                if gpu is not None:
                    gpu.allocate((i + 1) * MB)
                    gpu.free((i + 1) * MB)
                if sleep_s:
                    time.sleep(sleep_s)
            if gpu is not None:
                gpu.run()
    tmr.close()
    return tmr


def row_of(tmr: Timer, key: str, *, device: bool = False) -> Row:
    (row,) = (r for r in tmr.summary().rows if str(r.key) == key and r.device is device)
    return row


def test_two_ranks_throughput_pools_to_the_job_and_reaches_mlflow(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0 (fake GPU, peak memory) counts items and tokens, rank 1 (CPU) items only: the
    pooled items/s is the sum of each rank's own `Row.rate`, tokens/s rank 0's, MFU their mean,
    the peak memory rank 0's largest; MLflow gets them pooled and per rank."""
    pytest.importorskip("torch", reason="the CUDA-event clock (peak memory) imports torch")
    run_id = f"work-{uuid.uuid4().hex[:8]}"
    cfg = config(tmp_path, mlflow_tracking_uri=mlflow_server.uri)
    monkeypatch.setenv("MAELTRACE_RUN_ID", run_id)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with CollectServer(cfg) as server:
        monkeypatch.setenv("RANK", "1")
        cpu_rank = run_work_timer(
            server.url, "http/protobuf", tmp_path / "r1", items=16, sleep_s=0.005
        )
        monkeypatch.setenv("RANK", "0")
        gpu = FakeCudaDevice()
        gpu_rank = run_work_timer(
            server.url, "http/json", tmp_path / "r0", items=32, tokens=320, gpu=gpu
        )
        assert server.collector.wait_idle(60)
        summary = get_json(f"{server.url}/runs/{run_id}")

    rows = {"rank0": row_of(gpu_rank, "batch"), "rank1": row_of(cpu_rank, "batch")}
    rates: dict[str, float] = {}
    for label, row in rows.items():
        rate = row.rate("items")
        assert rate is not None and rate > 0
        rates[label] = rate
    for label, row in rows.items():
        stats = summary["processes"][label]["stats"]["batch"]["cpu"]
        # The process's own figures, exactly as its summary has them.
        assert {f: stats[f] for f in WORK_FIELDS if f in stats} == pytest.approx(
            row.work_values(FLOPS), rel=1e-15
        )
    assert summary["processes"]["rank0"]["stats"]["batch"]["cpu"]["tokens"] == 4 * 320
    assert "tokens" not in summary["processes"]["rank1"]["stats"]["batch"]["cpu"]

    pooled = summary["cross_rank"]["batch"]["cpu"]["pooled"]
    assert pooled["items"] == 4 * 32 + 4 * 16
    assert pooled["items_per_s"] == pytest.approx(rates["rank0"] + rates["rank1"], rel=1e-12)
    assert pooled["tokens"] == 4 * 320  # rank 1 counts no tokens: the sum is rank 0's
    assert pooled["tokens_per_s"] == pytest.approx(rows["rank0"].rate("tokens"), rel=1e-15)
    assert pooled["mfu"] == pytest.approx((rates["rank0"] + rates["rank1"]) / 1e6 / 2, rel=1e-12)
    assert "peak_memory_bytes" not in pooled  # memory is on the device row
    device = summary["cross_rank"]["batch"]["gpu"]
    assert device["processes"] == 1
    assert device["pooled"]["peak_memory_bytes"] == 4 * MB
    assert device["pooled"]["items_per_s"] == pytest.approx(
        row_of(gpu_rank, "batch", device=True).rate("items"), rel=1e-15
    )
    # The epoch counts its batches' items: pooled as well.
    assert summary["cross_rank"]["epoch"]["cpu"]["pooled"]["items"] == 4 * 32 + 4 * 16
    assert "items_per_s" in summary["pooled_note"]

    (logged,) = mlflow_runs(mlflow_server, cfg.mlflow_experiment or "", run_id)
    metrics = logged.data.metrics
    assert metrics["maeltrace/batch/all/items_per_s"] == pytest.approx(
        pooled["items_per_s"], rel=1e-15
    )
    assert metrics["maeltrace/batch/all/items"] == 4 * 32 + 4 * 16
    assert metrics["maeltrace/batch/all/tokens_per_s"] == pytest.approx(
        pooled["tokens_per_s"], rel=1e-15
    )
    assert metrics["maeltrace/batch/all/mfu"] == pytest.approx(pooled["mfu"], rel=1e-15)
    for label, rate in rates.items():
        assert metrics[f"maeltrace/batch/all/{label}/items_per_s"] == pytest.approx(rate, rel=1e-15)
    assert metrics["maeltrace/batch/all/rank0/tokens"] == 4 * 320
    assert "maeltrace/batch/all/rank1/tokens_per_s" not in metrics
    assert metrics["maeltrace/batch/gpu/all/peak_memory_bytes"] == 4 * MB
    assert metrics["maeltrace/batch/gpu/all/rank0/peak_memory_bytes"] == 4 * MB


def test_mlflow_down_then_up_keeps_the_summary_and_sends_it_later(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert mlflow_server.port is not None
    gate = Gate(mlflow_server.port)
    cfg = config(tmp_path, mlflow_tracking_uri=gate.url, retry_interval_s=0.2)
    pending = cfg.state_dir / "pending-mlflow.jsonl"
    first, second = (f"down-{n}-{uuid.uuid4().hex[:6]}" for n in (1, 2))
    try:
        with CollectServer(cfg) as server:
            # Down: the tries fail fast, and the summary goes to the pending file.
            monkeypatch.setenv("MAELTRACE_RUN_ID", first)
            tmr = run_timer(server.url, "http/protobuf", tmp_path / "a")
            assert server.collector.wait_idle(30)
            assert get_json(f"{server.url}/runs/{first}")["sinks"]["mlflow"]["state"] == "pending"
            assert first in PendingFile(pending).load()
            # Up: the retry timer sends it, and the pending file goes.
            gate.set_open(True)
            wait_for(
                lambda: (
                    get_json(f"{server.url}/runs/{first}")["sinks"]["mlflow"]["state"] == "logged"
                ),
                what="the pending summary to be sent",
            )
            assert not pending.exists()
            # Down again, and the service stops with a summary pending.
            gate.set_open(False)
            monkeypatch.setenv("MAELTRACE_RUN_ID", second)
            run_timer(server.url, "http/protobuf", tmp_path / "b")
            assert server.collector.wait_idle(30)
            assert list(PendingFile(pending).load()) == [second]
        # A new service on the same state folder sends it at startup, and knows the run again.
        gate.set_open(True)
        with CollectServer(cfg) as server:
            assert get_json(f"{server.url}/runs/{second}")["process_count"] == 1
            wait_for(lambda: not pending.exists(), what="the startup resend")
    finally:
        gate.close()
    (logged,) = mlflow_runs(mlflow_server, cfg.mlflow_experiment or "", first)
    assert logged.data.metrics["maeltrace/batch/all/mean"] == pytest.approx(
        tmr.get_time_stats("batch").mean, rel=1e-15
    )
    assert len(mlflow_runs(mlflow_server, cfg.mlflow_experiment or "", second)) == 1


def test_bearer_token_is_required_when_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "s3cret-token"
    monkeypatch.setenv("MAELTRACE_COLLECT_TOKEN", token)
    cfg = config(tmp_path)
    assert cfg.token == token and token not in repr(cfg)
    body = run_span_request("tok").SerializeToString()
    with CollectServer(cfg) as server:
        url = f"{server.url}/v1/traces"
        for header in (None, "Bearer wrong", f"Basic {token}", f"Bearer {token}x"):
            request = urllib.request.Request(url, data=body, method="POST")
            request.add_header("Content-Type", PROTOBUF)
            if header is not None:
                request.add_header("Authorization", header)
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=10)
            assert caught.value.code == 401
            assert caught.value.headers["WWW-Authenticate"] == "Bearer"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            get_json(f"{server.url}/runs")
        # Every route needs the token, /health included (probes send the header).
        with pytest.raises(urllib.error.HTTPError, match="401"):
            get_json(f"{server.url}/health")
        assert get_json(f"{server.url}/health", token) == {"status": "ok"}
        # A timer sends the token through the standard OTLP headers variable.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{token}")
        monkeypatch.setenv("MAELTRACE_RUN_ID", "with-token")
        tmr = run_timer(server.url, "http/protobuf", tmp_path / "out")
        assert tmr.export_health.spans_pending == 0
        summary = get_json(f"{server.url}/runs/with-token", token=token)
        assert summary["process_count"] == 1
        assert [r["run_id"] for r in get_json(f"{server.url}/runs", token=token)] == ["with-token"]


def test_wandb_gets_one_row_of_the_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from tests.services.wandb_reader import read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    with CollectServer(config(tmp_path, wandb=True)) as server:
        assert post(server, run_span_request("wandb-run").SerializeToString()).status == 200
        assert server.collector.wait_idle(120)
        sinks = get_json(f"{server.url}/runs/wandb-run")["sinks"]
    assert sinks["wandb"]["state"] == "logged"
    run = read_offline_run(tmp_path / "wb")
    assert run.run_id == "wandb-run"
    (row,) = run.history
    expected = compute_stats([1_000_000, 2_000_000, 4_000_000]).to_dict()
    for name in STATS_FIELDS:
        assert row[f"maeltrace/batch/all/{name}"] == pytest.approx(expected[name], rel=1e-15)
    assert run.config["maeltrace.run_id"] == "wandb-run"


# -- HTTP semantics ----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[CollectServer]:
    with CollectServer(config(tmp_path, max_body_bytes=4096)) as server:
        yield server


def post(
    server: CollectServer,
    body: bytes | str | Iterator[bytes],
    content_type: str | None = PROTOBUF,
    **headers: str,
) -> Answer:
    """POSTs to /v1/traces over a fresh connection; an iterator goes chunked, undeclared."""
    connection = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        if content_type is not None:
            sent["Content-Type"] = content_type
        chunked = not isinstance(body, bytes | str)
        if chunked:
            sent["Transfer-Encoding"] = "chunked"
        connection.request("POST", "/v1/traces", body=body, headers=sent, encode_chunked=chunked)
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


def test_answers_follow_otlp_http(service: CollectServer) -> None:
    from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]

    request = run_span_request("http")
    ok = post(service, request.SerializeToString())
    assert (ok.status, ok.headers["content-type"], ok.body) == (200, PROTOBUF, b"")
    ok = post(service, traces_to_json_line(request), "application/json; charset=utf-8")
    assert (ok.status, ok.json()) == (200, {})
    zipped = post(service, gzip.compress(request.SerializeToString()), Content_Encoding="gzip")
    assert zipped.status == 200
    assert get_json(f"{service.url}/runs/http")["spans_received"] == 3

    bad = post(service, b"\xff\xff\xff")
    assert bad.status == 400
    assert Status.FromString(bad.body).code == 3  # INVALID_ARGUMENT
    bad = post(service, b"{nope", JSON)
    assert bad.status == 400 and "JSON" in bad.json()["message"]
    wrong_id = b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}'
    bad = post(service, wrong_id, JSON)
    assert bad.status == 400 and "hex" in bad.json()["message"]
    assert post(service, gzip.compress(b"x" * 100)[:-6], Content_Encoding="gzip").status == 400

    assert post(service, b"", "text/plain").status == 415
    assert post(service, b"", None).status == 415
    assert post(service, b"", Content_Encoding="br").status == 415
    with pytest.raises(urllib.error.HTTPError, match="405"):
        get_json(f"{service.url}/v1/traces")
    with pytest.raises(urllib.error.HTTPError, match="404"):
        get_json(f"{service.url}/runs/nobody")
    # Valid requests are still served after the refusals.
    assert post(service, request.SerializeToString()).status == 200


def test_bodies_over_the_cap_are_refused_with_413(service: CollectServer) -> None:
    assert post(service, b"\x00" * 5000).status == 413  # declared
    # Undeclared (chunked): counted as it streams.
    assert post(service, iter([b"\x00" * 1000] * 5)).status == 413
    bomb = gzip.compress(b"\x00" * 100_000)
    assert len(bomb) < 4096
    assert post(service, bomb, Content_Encoding="gzip").status == 413
    assert post(service, b"").status == 200


def test_huge_declared_length_is_refused_before_the_body(tmp_path: Path) -> None:
    with CollectServer(config(tmp_path, max_body_bytes=1024)) as server:
        with socket.create_connection((HOST, server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: 1000000000000\r\n\r\nabc"
            )
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413")
        assert get_json(f"{server.url}/health") == {"status": "ok"}


# -- the pure parts ----------------------------------------------------------------------------


def test_stats_attributes_parse_from_the_right() -> None:
    stats = compute_stats([1, 2, 3]).to_dict()
    found: dict[str, object] = {}
    for key, clock in (("a.b", "cpu"), ("x.cpu", "gpu"), ("jit", "cpu.first_call")):
        found.update({f"maeltrace.stats.{key}.{clock}.{f}": v for f, v in stats.items()})
    found["maeltrace.stats.partial.cpu.mean"] = 1.0  # incomplete: ignored
    found["maeltrace.stats.nan.cpu.mean"] = math.nan
    found.update({f"maeltrace.stats.nan.cpu.{f}": v for f, v in stats.items() if f != "mean"})
    found["maeltrace.stats.bad.tpu.mean"] = 1.0
    parsed = stats_from_attributes(found)
    assert parsed == {
        "a.b": {"cpu": stats},
        "x.cpu": {"gpu": stats},
        "jit": {"cpu.first_call": stats},
    }


def test_work_attributes_are_kept_only_well_formed_and_beside_a_complete_entry() -> None:
    stats = compute_stats([1, 2, 3]).to_dict()
    good: dict[str, object] = {
        "items": 96,
        "tokens": 0,
        "items_per_s": 3.5e6,
        "tokens_per_s": 7,  # a whole rate sent as an int: taken as a float
        "mfu": 0.25,
        "peak_memory_bytes": MAX_BYTES,
    }
    found: dict[str, object] = {f"maeltrace.stats.ok.cpu.{f}": v for f, v in stats.items()}
    found.update({f"maeltrace.stats.ok.cpu.{f}": v for f, v in good.items()})
    bad: list[tuple[str, object]] = [
        ("items", 1.0),  # counts are ints
        ("items", -1),
        ("tokens", True),
        ("tokens", "12"),
        ("peak_memory_bytes", MAX_BYTES + 1),
        ("items_per_s", math.nan),
        ("items_per_s", math.inf),
        ("items_per_s", -0.5),
        ("tokens_per_s", MAX_RATE * 2),
        ("mfu", False),
        ("mfu", -1e-9),
    ]
    for index, (field_name, value) in enumerate(bad):
        found.update({f"maeltrace.stats.bad{index}.cpu.{f}": v for f, v in stats.items()})
        found[f"maeltrace.stats.bad{index}.cpu.{field_name}"] = value
    # Work figures alone make no entry; the work field name is not a clock either.
    found["maeltrace.stats.alone.cpu.items_per_s"] = 5.0
    found["maeltrace.stats.alone.items_per_s"] = 5.0
    parsed = stats_from_attributes(found)
    assert parsed.pop("ok") == {"cpu": {**stats, **good, "tokens_per_s": 7.0}}
    assert isinstance(good["tokens_per_s"], int)
    assert parsed == {f"bad{index}": {"cpu": stats} for index in range(len(bad))}


def test_work_pools_as_a_job_and_survives_a_pending_file() -> None:
    summaries = RunSummaries()
    per_rank: list[dict[str, float | int]] = [
        {"items": 10, "items_per_s": 100.0, "mfu": 0.2, "peak_memory_bytes": 5 * MB},
        {"items": 30, "items_per_s": 250.0, "mfu": 0.4, "peak_memory_bytes": 7 * MB},
        {},  # a rank counting nothing: pooled over those that count
    ]
    for rank, work in enumerate(per_rank):
        summaries.add(run_span_request("job", rank=rank, world_size=3, work=work))
    summary = summaries.get("job")
    assert summary is not None
    pooled = summary["cross_rank"]["batch"]["cpu"]["pooled"]
    assert pooled["items"] == 40 and pooled["items_per_s"] == 350.0
    assert pooled["mfu"] == pytest.approx(0.3) and pooled["peak_memory_bytes"] == 7 * MB
    assert "tokens" not in pooled and "tokens_per_s" not in pooled
    metrics = summary_metrics(summary)
    assert metrics["maeltrace/batch/all/items_per_s"] == 350.0
    assert metrics["maeltrace/batch/all/rank1/items_per_s"] == 250.0
    assert metrics["maeltrace/batch/all/rank1/peak_memory_bytes"] == 7 * MB
    assert [name for name in metrics if "/rank2/" in name] == ["maeltrace/batch/all/rank2/mean"]
    # Kept through the JSON form a pending file holds.
    restored = RunSummaries()
    restored.restore(json.loads(json.dumps(summary)))
    again = restored.get("job")
    assert again is not None
    assert again["processes"] == summary["processes"]
    assert again["cross_rank"] == summary["cross_rank"]
    # One process: every figure under the row, as Timer.log_mlflow_all(stats="all") names it.
    single = RunSummaries()
    single.add(run_span_request("one", work=per_rank[0]))
    one = single.get("one")
    assert one is not None
    assert {
        name: value
        for name, value in summary_metrics(one).items()
        if name.rsplit("/", 1)[1] in WORK_FIELDS
    } == {f"maeltrace/batch/all/{f}": float(v) for f, v in per_rank[0].items()}


def test_only_run_spans_make_statistics_and_restarted_ranks_replace() -> None:
    summaries = RunSummaries(max_runs=2)
    request = run_span_request("r", rank=0, world_size=2)
    other = request.resource_spans[0].scope_spans[0].spans.add()
    other.name = "batch"
    assert summaries.add(request) == ["r"]
    assert summaries.add(run_span_request("r", rank=0, world_size=2, durations_ns=(5,))) == ["r"]
    summary = summaries.get("r")
    assert summary is not None
    assert summary["spans_received"] == 3 and summary["process_count"] == 1
    assert summary["processes"]["rank0"]["stats"]["batch"]["cpu"]["count"] == 1
    assert summary["finished"] is False
    summaries.add(run_span_request("other"))
    summaries.add(run_span_request("third"))
    assert summaries.get("r") is None  # beyond max_runs: the least recently updated goes
    # Restored from a pending file, a run takes back the processes it does not know.
    summaries.restore(summary)
    summaries.add(run_span_request("r", rank=1, world_size=2))
    restored = summaries.get("r")
    assert restored is not None and restored["finished"] is True
    assert sorted(restored["processes"]) == ["rank0", "rank1"]


def test_metric_names_are_valid_mlflow_names() -> None:
    from mlflow.utils.validation import _validate_metric_name

    for key in ("batch", "a/b", "..", "/lead", "x//y", "weird:key?*", "k" * 400, "ü ñ", " "):
        name = clock_metric_name(key, "gpu.first_call", "rank3", "mean")
        _validate_metric_name(name)  # type: ignore[no-untyped-call]
        assert len(name) <= 250 and name.endswith("/gpu/first_call/all/rank3/mean")
    assert clock_metric_name("k" * 400, "cpu", "mean") != clock_metric_name(
        "k" * 399, "cpu", "mean"
    )
    summaries = RunSummaries()
    summaries.add(run_span_request("m", rank=0, world_size=4))
    summary = summaries.get("m")
    assert summary is not None
    metrics = summary_metrics(summary)
    assert set(metrics) == {
        *(f"maeltrace/batch/all/{f}" for f in ("count", "total", "mean", "min", "max", "stdev")),
        "maeltrace/batch/all/rank0/mean",
        "maeltrace/batch/all/slowest_rank",
        "maeltrace/batch/all/skew",
    }
    assert set(FIELDS) >= {"median", "p99"}


class FlakySink:
    name = "flaky"

    def __init__(self, failures: int, retryable: bool = True) -> None:
        self.failures = failures
        self.retryable = retryable
        self.logged: list[str] = []

    def log(self, summary: Any) -> str:
        if self.failures > 0:
            self.failures -= 1
            raise SinkError("down", retryable=self.retryable)
        self.logged.append(summary["run_id"])
        return f"id-{summary['run_id']}"


def test_publisher_retries_then_keeps_pending_then_resends(tmp_path: Path) -> None:
    sleeps: list[float] = []
    sink = FlakySink(failures=4)
    pending = PendingFile(tmp_path / "p.jsonl")
    publisher = Publisher(sink, pending, attempts=3, backoff_s=0.5, sleep=sleeps.append)
    assert publisher.publish({"run_id": "a", "v": 1}) == "pending"
    assert sleeps == [0.5, 1.0]
    assert publisher.resend() == 0  # the 4th failure: still down, still pending
    assert list(pending.load()) == ["a"]
    assert publisher.publish({"run_id": "b"}) == "logged"  # a success sends what waits
    assert sink.logged == ["b", "a"] and not pending.path.exists()
    # A newer summary of a pending run replaces the pending one rather than following it.
    sink.failures = 3
    publisher.publish({"run_id": "c", "v": 1})
    publisher.publish({"run_id": "c", "v": 2})
    assert sink.logged == ["b", "a", "c"] and not pending.path.exists()
    # A refusal is not retried and not kept.
    refused = Publisher(FlakySink(1, retryable=False), pending, sleep=sleeps.append)
    assert refused.publish({"run_id": "d"}).startswith("failed")
    assert not pending.path.exists()


def test_main_serves_until_terminated(tmp_path: Path) -> None:
    code = (
        "import sys; from maeltrace.collect.service import main; "
        "sys.exit(main(['--port', '0', '--mlflow-uri', 'none', '--state-dir', sys.argv[1]]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert process.stderr is not None
        lines = [process.stderr.readline() for _ in range(2)]  # the sinks, then the address
        line = lines[-1]
        assert "listening on http://127.0.0.1:" in line, lines
        url = line.split("listening on ")[1].strip().removesuffix("/v1/traces")
        assert get_json(f"{url}/health") == {"status": "ok"}
        # uvicorn shuts down gracefully, then re-raises the signal: Ctrl-C ends main with 130.
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
