"""The summary service under hostile input: garbage, truncated protobuf, random JSON, huge and
lying bodies, wrong content types and tokens.

One real service (uvicorn on a loopback port, no MLflow) takes every example over a real socket.
Whatever comes in, the answer is one of 200, 400, 401, 413 and 415, never a 500; the server
logs no error; and after each batch of garbage a valid request is still answered 200 and
summarised.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import math
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from maeltrace import Timer, TimeType
from maeltrace.collect._mlflow_out import summary_metrics
from maeltrace.collect._summaries import (
    FIELDS,
    INT_WORK_FIELDS,
    MAX_RATE,
    WORK_FIELDS,
    RunSummaries,
)
from maeltrace.collect.service import CollectConfig, CollectServer
from maeltrace.otel._otlp_json import read_json_lines, traces_to_json_line
from maeltrace.otel.spans import attributes
from maeltrace.report import MAX_BYTES
from maeltrace.stats import compute_stats

HOST = "127.0.0.1"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TOKEN = "fuzz-token"
CAP = 64 * 1024

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class _Errors(logging.Handler):
    """Keeps the error records the server logs (a 500 is logged as one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


ERRORS = _Errors()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectServer]:
    config = CollectConfig(
        port=0,
        token=TOKEN,
        max_body_bytes=CAP,
        mlflow_tracking_uri=None,
        state_dir=tmp_path_factory.mktemp("collect-fuzz"),
    )
    errors = ERRORS
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "maeltrace.collect")]
    for logger in loggers:
        logger.addHandler(errors)
    try:
        with CollectServer(config) as service:
            yield service
    finally:
        for logger in loggers:
            logger.removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records]


@pytest.fixture
def real_request(tmp_path: Path) -> ExportTraceServiceRequest:
    """What a timer really exports (epochs, batches, a failed region, the run span), read
    back from the OTLP JSON lines the embedded default writes."""
    tmr = Timer(export=True, output_dir=tmp_path / "spans", run_id="real-spans")
    for _ in range(2):
        with tmr.region(TimeType.EPOCH):
            for _ in range(3):
                with tmr.region(TimeType.BATCH), tmr.region(TimeType.FORWARD):
                    pass
    with pytest.raises(ZeroDivisionError), tmr.region("broken"):
        _ = 1 / 0
    tmr.close()
    request = ExportTraceServiceRequest()
    for data in read_json_lines(tmr.traces_path):
        request.resource_spans.extend(data.resource_spans)
    assert any(s.name == "run" for rs in request.resource_spans for s in rs.scope_spans[0].spans)
    return request


def post(
    server: CollectServer,
    body: bytes,
    content_type: str | None = PROTOBUF,
    *,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> int:
    """POSTs to /v1/traces over a new connection; returns the status."""
    sent = dict(headers or {})
    if content_type is not None:
        sent["Content-Type"] = content_type
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        connection.request("POST", "/v1/traces", body=body, headers=sent)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def raw(server: CollectServer, data: bytes) -> bytes:
    """Sends raw bytes on a new connection; returns the answer's status line and headers."""
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def get_json(server: CollectServer, path: str) -> Any:
    request = urllib.request.Request(f"{server.url}{path}")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def run_span(run_id: str, durations_ns: list[int]) -> ExportTraceServiceRequest:
    stats = compute_stats(durations_ns).to_dict()
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        attributes({"maeltrace.run_id": run_id, "host.name": "h", "process.pid": 7})
    )
    span = resource_spans.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = uuid.uuid4().bytes, b"\x01" * 8, "run"
    span.attributes.extend(
        attributes(
            {"maeltrace.run_id": run_id}
            | {f"maeltrace.stats.batch.cpu.{k}": v for k, v in stats.items()}
        )
    )
    return request


def assert_still_serving(server: CollectServer) -> None:
    """A valid run span after the garbage: 200, and its statistics in the summary."""
    run_id = f"valid-{uuid.uuid4().hex}"
    durations = [3_000, 1_000, 2_000]
    assert post(server, run_span(run_id, durations).SerializeToString()) == 200
    summary = get_json(server, f"/runs/{run_id}")
    (process,) = summary["processes"].values()
    assert process["stats"]["batch"]["cpu"] == compute_stats(durations).to_dict()
    assert not ERRORS.records, [r.getMessage() for r in ERRORS.records]


@pytest.fixture
def check(server: CollectServer) -> Iterator[None]:
    """Runs `assert_still_serving` after a test's batch of examples."""
    yield
    assert_still_serving(server)


# -- bodies ------------------------------------------------------------------------------------


@FUZZ
@given(
    body=st.binary(max_size=4096),
    content_type=st.sampled_from([PROTOBUF, JSON]),
    zipped=st.booleans(),
)
@example(body=b"", content_type=JSON, zipped=False)
@example(body=b"[" * 60_000, content_type=JSON, zipped=False)
@example(body=b'{"resourceSpans":' + b"[" * 5000, content_type=JSON, zipped=True)
@example(body=b"\n\xff\xff\xff\xff\x0f", content_type=PROTOBUF, zipped=False)
def test_garbage_bodies_are_400_or_harmless(
    server: CollectServer, check: None, body: bytes, content_type: str, zipped: bool
) -> None:
    status = post(
        server,
        gzip.compress(body) if zipped else body,
        content_type,
        headers={"Content-Encoding": "gzip"} if zipped else None,
    )
    # Random bytes can be a valid (if meaningless) protobuf message, or valid JSON: then 200.
    assert status in {200, 400}


@FUZZ
@given(body=st.binary(min_size=1, max_size=2048))
def test_garbage_gzip_is_400(server: CollectServer, check: None, body: bytes) -> None:
    status = post(server, body, PROTOBUF, headers={"Content-Encoding": "gzip"})
    assert status == 400 or (status == 200 and body[:2] == b"\x1f\x8b")


@FUZZ
@given(data=st.data())
def test_truncated_and_flipped_protobuf(
    server: CollectServer, check: None, real_request: ExportTraceServiceRequest, data: Any
) -> None:
    body = bytearray(real_request.SerializeToString())
    cut = data.draw(st.integers(0, len(body)), label="cut")
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(body) - 1), st.integers(0, 255)), max_size=3)
    )
    for position, value in flips:
        body[position] = value
    assert post(server, bytes(body[:cut])) in {200, 400}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "00", "zz", "run", "1e999"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(value=json_values)
@example(value={"resourceSpans": {}})
@example(value={"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "abc"}]}]}]})
def test_random_json(server: CollectServer, check: None, value: Any) -> None:
    assert post(server, json.dumps(value).encode(), JSON) in {200, 400}


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            yield from _leaves(value, (*path, index))
    else:
        yield path


@FUZZ
@given(data=st.data())
def test_mutated_otlp_json(
    server: CollectServer, check: None, real_request: ExportTraceServiceRequest, data: Any
) -> None:
    """Valid OTLP JSON from a real timer with a few values replaced: wrong types, NaN, huge
    numbers, bad ids, unknown run span shapes."""
    obj = json.loads(traces_to_json_line(real_request))
    paths = list(_leaves(obj))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        path = data.draw(st.sampled_from(paths), label="path")
        target = obj
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = data.draw(json_values, label="value")
    status = post(server, json.dumps(obj).encode(), JSON)
    assert status in {200, 400}
    # Whatever was accepted, the summaries still encode as JSON (no NaN, no surrogates).
    assert isinstance(get_json(server, "/runs"), list)


def test_nan_statistics_and_surrogates(server: CollectServer, check: None) -> None:
    obj = json.loads(traces_to_json_line(run_span("nan-run", [1, 2, 3])))
    span = obj["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    for kv in span["attributes"]:
        if kv["key"].endswith(".mean"):
            kv["value"] = {"doubleValue": "NaN"}
    assert post(server, json.dumps(obj).encode(), JSON) == 200
    # An incomplete entry is left out rather than logged with a NaN.
    assert get_json(server, "/runs/nan-run")["processes"]["h/7"]["stats"] == {}
    body = json.dumps(obj).replace("nan-run", "\\ud800").encode()
    assert post(server, body, JSON) == 400


stat_values = st.one_of(
    st.floats(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0.0, 5e-324, 1e-300, 1e12, 1e300, -1.0]),
    st.booleans(),
    st.text(max_size=3),
)


def _run_span(resource: dict[str, object], stats: dict[str, object]) -> ExportTraceServiceRequest:
    """A request holding one process's run span: its resource, and the run id and ``stats``
    as the span's attributes."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(attributes(resource))
    span = resource_spans.scope_spans.add().spans.add()
    span.name = "run"
    span.attributes.extend(attributes({"maeltrace.run_id": resource["maeltrace.run_id"]} | stats))
    return request


@FUZZ
@given(
    processes=st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-3, 2**63 - 1)),
            st.dictionaries(st.sampled_from(FIELDS), stat_values, min_size=8),
        ),
        min_size=1,
        max_size=4,
    ),
    world_size=st.one_of(st.none(), st.integers(-1, 8)),
)
def test_any_statistics_summarise_to_finite_json(
    processes: list[tuple[int | None, dict[str, object]]], world_size: int | None
) -> None:
    """Extreme, mistyped or missing values never make a summary that JSON, MLflow or the
    pooling cannot take: no NaN or infinity, no overflow."""
    summaries = RunSummaries()
    for index, (rank, fields) in enumerate(processes):
        resource: dict[str, object] = {"maeltrace.run_id": "extreme", "process.pid": index}
        if rank is not None:
            resource["maeltrace.rank"] = rank
        if world_size is not None:
            resource["maeltrace.world_size"] = world_size
        summaries.add(
            _run_span(resource, {f"maeltrace.stats.k.cpu.{f}": v for f, v in fields.items()})
        )
    summary = summaries.get("extreme")
    assert summary is not None
    json.dumps(summary, allow_nan=False)
    assert all(math.isfinite(v) for v in summary_metrics(summary).values())


work_values = st.one_of(
    stat_values,
    st.integers(0, 2**62),
    st.floats(0, 1e28),
    st.sampled_from([MAX_BYTES, MAX_BYTES + 1, MAX_RATE, MAX_RATE * 1.5, -0.0, 2**63 - 1]),
)


def well_formed(field_name: str, value: object) -> bool:
    """What the service keeps of a work figure, told independently of its code."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if field_name in INT_WORK_FIELDS:
        return isinstance(value, int) and 0 <= value <= MAX_BYTES
    return math.isfinite(value) and 0 <= value <= MAX_RATE


@FUZZ
@given(
    processes=st.lists(st.dictionaries(st.sampled_from(WORK_FIELDS), work_values), max_size=4),
    world_size=st.one_of(st.none(), st.integers(1, 8)),
)
def test_any_work_figures_keep_the_valid_ones_and_pool_to_finite_json(
    processes: list[dict[str, object]], world_size: int | None
) -> None:
    """Whatever throughput and memory figures a run span carries, the summary keeps exactly the
    well-formed ones beside the statistics, pools them (sums, mean, max) without overflow, and
    logs only finite metrics."""
    summaries = RunSummaries()
    stats = compute_stats([1_000, 3_000]).to_dict()
    for rank, work in enumerate(processes):
        resource: dict[str, object] = {"maeltrace.run_id": "work", "maeltrace.rank": rank}
        if world_size is not None:
            resource["maeltrace.world_size"] = world_size
        summaries.add(
            _run_span(
                resource,
                {f"maeltrace.stats.k.cpu.{f}": v for f, v in stats.items()}
                | {f"maeltrace.stats.k.cpu.{f}": v for f, v in work.items()}
                # Work figures alone, with no statistics: no entry.
                | {f"maeltrace.stats.alone.gpu.{f}": v for f, v in work.items()},
            )
        )
    summary = summaries.get("work")
    if not processes:
        assert summary is None
        return
    assert summary is not None
    json.dumps(summary, allow_nan=False)
    assert all(math.isfinite(v) for v in summary_metrics(summary).values())
    kept: list[dict[str, float | int]] = []
    for rank, work in enumerate(processes):
        entry = summary["processes"][f"rank{rank}"]["stats"]["k"]["cpu"]
        assert list(summary["processes"][f"rank{rank}"]["stats"]) == ["k"]
        # Rates sent as ints are taken as floats.
        valid: dict[str, float | int] = {}
        for f, v in work.items():
            if well_formed(f, v):
                assert isinstance(v, int | float)
                valid[f] = v if f in INT_WORK_FIELDS else float(v)
        assert {f: v for f, v in entry.items() if f not in FIELDS} == valid
        assert {f: type(entry[f]) for f in valid} == {
            f: int if f in INT_WORK_FIELDS else float for f in valid
        }
        kept.append(valid)
    pooled = summary["cross_rank"]["k"]["cpu"]["pooled"]
    for field_name in WORK_FIELDS:
        values = [work[field_name] for work in kept if field_name in work]
        if not values:
            assert field_name not in pooled
        elif field_name == "peak_memory_bytes":
            assert pooled[field_name] == max(values)
        elif field_name == "mfu":
            assert pooled[field_name] == pytest.approx(math.fsum(values) / len(values))
        else:
            assert pooled[field_name] == pytest.approx(math.fsum(values))


# -- headers: sizes, content types, tokens -----------------------------------------------------


@FUZZ
@given(length=st.integers(2 * CAP + 1, 10**18), sent=st.binary(max_size=64))
def test_huge_declared_lengths_are_413(
    server: CollectServer, check: None, length: int, sent: bytes
) -> None:
    head = (
        f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    assert raw(server, head + sent).startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize("length", ["10" * 20, "-1", "abc", "1e3", "0x10", "5, 6"], ids=repr)
def test_malformed_declared_lengths_are_refused(
    server: CollectServer, check: None, length: str
) -> None:
    head = (
        f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    # uvicorn's HTTP parser refuses most itself (400); whatever passes it, the service does.
    status = raw(server, head + b"x" * 12)[:12]
    assert status in (b"HTTP/1.1 400", b"HTTP/1.1 413"), status


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(size=st.integers(CAP + 1, 2 * CAP), chunked=st.booleans())
def test_bodies_just_over_the_cap_are_413(
    server: CollectServer, check: None, size: int, chunked: bool
) -> None:
    body = b"\x00" * size
    if chunked:
        connection = http.client.HTTPConnection(HOST, server.port, timeout=10)
        try:
            connection.request(
                "POST",
                "/v1/traces",
                body=iter([body[i : i + 8192] for i in range(0, size, 8192)]),
                headers={"Content-Type": PROTOBUF, "Authorization": f"Bearer {TOKEN}"},
                encode_chunked=True,
            )
            assert connection.getresponse().status == 413
        finally:
            connection.close()
    else:
        assert post(server, body) == 413


@FUZZ
@given(
    content_type=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).filter(
        lambda t: t.split(";", 1)[0].strip().lower() not in (PROTOBUF, JSON)
    ),
)
@example(content_type="application/protobuf")
@example(content_type="text/plain")
@example(content_type="application/x-protobuf-x")
def test_other_content_types_are_415(server: CollectServer, check: None, content_type: str) -> None:
    assert post(server, b"", content_type) == 415


@FUZZ
@given(
    authorization=st.one_of(
        st.none(),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(
            lambda t: f"Bearer {t}"
        ),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
    ).filter(
        lambda h: (
            h is None
            or not (h.strip().lower().startswith("bearer ") and h.strip()[7:].strip() == TOKEN)
        )
    ),
    content_type=st.sampled_from([PROTOBUF, JSON, "text/plain"]),
)
@example(authorization=f"Bearer {TOKEN[:-1]}", content_type=PROTOBUF)
@example(authorization=f"Basic {TOKEN}", content_type=JSON)
@example(authorization=TOKEN, content_type=PROTOBUF)
def test_wrong_tokens_are_401(
    server: CollectServer, check: None, authorization: str | None, content_type: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    body = run_span("must-not-arrive", [1]).SerializeToString()
    assert post(server, body, content_type, token=None, headers=headers) == 401


def test_nothing_unauthorised_arrived(server: CollectServer) -> None:
    runs = {r["run_id"] for r in get_json(server, "/runs")}
    assert "must-not-arrive" not in runs
    assert_still_serving(server)


def test_a_real_export_still_works_after_the_fuzzing(
    server: CollectServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{TOKEN}")
    tmr = Timer(export=True, endpoint=server.url, output_dir=tmp_path, run_id="after-fuzz")
    for _ in range(3):
        with tmr.region(TimeType.EPOCH), tmr.region(TimeType.BATCH):
            pass
    tmr.close()
    summary = get_json(server, "/runs/after-fuzz")
    (process,) = summary["processes"].values()
    assert process["stats"]["batch"]["cpu"] == tmr.get_time_stats("batch").to_dict()
