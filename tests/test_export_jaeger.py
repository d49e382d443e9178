"""End to end: a real PyTorch training loop exports its regions as spans into a real Jaeger, over
OTLP/HTTP and gRPC, with the endpoint down and replayed, and into the embedded default."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from maeltrace import Timer, TimeType
from maeltrace.cli import main
from tests.helpers import outbox_span_names
from tests.services.jaeger import JaegerService, free_port

torch = pytest.importorskip("torch", reason="the torch extra is not installed")

EPOCHS, BATCHES = 2, 4
# Per epoch: the epoch, BATCHES io waits and batches, and forward and backward in each batch.
SPANS_PER_EPOCH = 1 + 2 * BATCHES + 2 * BATCHES
RUN_SPANS = 1


def _train(tmr: Timer) -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    data = [(torch.randn(16, 8), torch.randn(16, 1)) for _ in range(BATCHES)]
    for _ in range(EPOCHS):
        with tmr.region(TimeType.EPOCH):
            for x, y in tmr.iterate(data):
                with tmr.region(TimeType.BATCH):
                    with tmr.region(TimeType.FORWARD):
                        loss = torch.nn.functional.mse_loss(net(x), y)
                    with tmr.region(TimeType.BACKWARD):
                        optimizer.zero_grad()
                        loss.backward()
                        optimizer.step()


def _service(monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"maeltrace-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("OTEL_SERVICE_NAME", name)
    return name


def _tree(trace: dict[str, Any]) -> dict[str, Counter[str]]:
    """operationName of each parent -> Counter of its children's operationNames."""
    names = {s["spanID"]: s["operationName"] for s in trace["spans"]}
    tree: dict[str, Counter[str]] = {}
    for span in trace["spans"]:
        parents = [r["spanID"] for r in span["references"] if r["refType"] == "CHILD_OF"]
        parent = names.get(parents[0], "?") if parents else "(root)"
        tree.setdefault(parent, Counter())[span["operationName"]] += 1
    return tree


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def _check_run(jaeger: JaegerService, service: str, stats_path: Path) -> None:
    traces = jaeger.wait_for_spans(service, EPOCHS * SPANS_PER_EPOCH + RUN_SPANS)
    epochs = [t for t in traces if any(s["operationName"] == "epoch" for s in t["spans"])]
    assert len(epochs) == EPOCHS  # one trace per epoch
    for trace in epochs:
        assert len(trace["spans"]) == SPANS_PER_EPOCH
        assert _tree(trace) == {
            "(root)": Counter({"epoch": 1}),
            "epoch": Counter({"io": BATCHES, "batch": BATCHES}),
            "batch": Counter({"forward": BATCHES, "backward": BATCHES}),
        }
        root = next(s for s in trace["spans"] if s["operationName"] == "epoch")
        assert _tags(root)["maeltrace.key"] == "epoch"
    (run_trace,) = [t for t in traces if t not in epochs]
    (run_span,) = run_trace["spans"]
    assert run_span["operationName"] == "run"
    linked = {r["traceID"] for r in run_span["references"]}
    assert linked >= {t["traceID"] for t in epochs}  # the run span links every epoch
    # Span durations equal the statistics to the microsecond.
    stats = {r["key"]: r["stats"] for r in json.loads(stats_path.read_text())["regions"]}
    for key in ("batch", "forward", "backward", "io", "epoch"):
        durations = sorted(
            s["duration"] for t in epochs for s in t["spans"] if s["operationName"] == key
        )
        assert len(durations) == stats[key]["count"]
        assert abs(durations[0] - stats[key]["min"] * 1e6) <= 1
        assert abs(durations[-1] - stats[key]["max"] * 1e6) <= 1
    batch = next(s for t in epochs for s in t["spans"] if s["operationName"] == "batch")
    tags = _tags(batch)
    assert tags["maeltrace.key"] == "batch"
    assert tags["thread.name"] == "MainThread"
    assert {"maeltrace.index", "maeltrace.cpu.duration_ns"} <= tags.keys()
    assert abs(tags["maeltrace.cpu.duration_ns"] / 1000 - batch["duration"]) <= 1
    process = run_trace["processes"][run_span["processID"]]
    assert process["serviceName"] == service
    assert {"maeltrace.run_id", "host.name", "process.pid"} <= {t["key"] for t in process["tags"]}


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_training_loop_exports_one_trace_per_epoch(
    jaeger: JaegerService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, protocol: str
) -> None:
    service = _service(monkeypatch)
    endpoint = jaeger.otlp_grpc_endpoint if protocol == "grpc" else jaeger.otlp_http_endpoint
    with Timer(export=True, endpoint=endpoint, protocol=protocol, output_dir=tmp_path) as tmr:
        _train(tmr)
    assert tmr.export_health.spans_exported == EPOCHS * SPANS_PER_EPOCH + RUN_SPANS
    assert tmr.export_health.spans_pending == 0
    _check_run(jaeger, service, tmp_path / "stats.json")


def test_with_the_endpoint_down_spans_wait_in_the_outbox_and_are_replayed(
    jaeger: JaegerService,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = _service(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
    down = f"http://127.0.0.1:{free_port()}"
    with Timer(export=True, endpoint=down, output_dir=tmp_path) as tmr:
        _train(tmr)  # nothing listens: the training loop must not notice
    assert len(outbox_span_names(tmr.outbox_path)) == EPOCHS * SPANS_PER_EPOCH + RUN_SPANS
    assert main(["replay", str(tmr.outbox_path), "--endpoint", jaeger.otlp_http_endpoint]) == 0
    assert f"sent {EPOCHS * SPANS_PER_EPOCH + RUN_SPANS} spans" in capsys.readouterr().out
    assert outbox_span_names(tmr.outbox_path) == []  # acknowledged: a second replay sends none
    _check_run(jaeger, service, tmp_path / "stats.json")


def test_the_embedded_default_writes_files_the_collector_and_replay_read(
    jaeger: JaegerService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service = _service(monkeypatch)
    with Timer(export=True, output_dir=tmp_path) as tmr:
        _train(tmr)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "stats.json",
        "stats.md",
        "trace.json",
        "traces.otlp.jsonl",
    ]
    chrome = json.loads((tmp_path / "trace.json").read_text())
    assert sum(e["ph"] == "X" and e["name"] == "batch" for e in chrome["traceEvents"]) == (
        EPOCHS * BATCHES
    )
    traces = str(tmp_path / "traces.otlp.jsonl")
    assert main(["replay", traces, "--endpoint", jaeger.otlp_http_endpoint]) == 0
    _check_run(jaeger, service, tmp_path / "stats.json")
