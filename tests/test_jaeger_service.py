"""End-to-end check of the Jaeger test service: OTLP/JSON in, the same span tree out.

The first run builds Jaeger from Go modules (``scripts/build-jaeger``; minutes when Go's caches
are cold). A failing build fails these tests; nothing is skipped.
"""

from __future__ import annotations

import socket

import pytest

from tests.helpers import SmokeTrace
from tests.services.jaeger import JaegerService

SERVICE = "maeltrace-smoke"


def test_otlp_json_round_trip(jaeger: JaegerService) -> None:
    smoke = SmokeTrace.new()
    trace_id, parent_id, child_id = smoke.trace_id, smoke.parent_id, smoke.child_id
    parent_start, child_start = smoke.parent_start_us, smoke.child_start_us
    jaeger.send_otlp_json(smoke.payload(SERVICE))  # raises on an error status

    traces = jaeger.wait_for_spans(SERVICE, 2, timeout=30, start_us=parent_start)
    assert SERVICE in jaeger.services()
    (trace,) = [t for t in traces if t["traceID"] == trace_id]
    # The same trace by id (span order is not stable between queries).
    assert {span["spanID"] for span in jaeger.trace(trace_id)["spans"]} == {parent_id, child_id}

    spans = {span["operationName"]: span for span in trace["spans"]}
    assert sorted(spans) == ["forward", "train_step"]
    parent, child = spans["train_step"], spans["forward"]
    assert (parent["spanID"], child["spanID"]) == (parent_id, child_id)
    assert parent["references"] == []
    assert child["references"] == [
        {"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent_id}
    ]
    assert (parent["startTime"], parent["duration"]) == (parent_start, 40_000)
    assert (child["startTime"], child["duration"]) == (child_start, 12_345)
    for span in (parent, child):
        assert trace["processes"][span["processID"]]["serviceName"] == SERVICE
        assert {"key": "maeltrace.key", "type": "string", "value": span["operationName"]} in (
            span["tags"]
        )


def test_second_instance_uses_other_ports_and_stops(jaeger: JaegerService) -> None:
    with JaegerService() as other:
        assert other.query_url != jaeger.query_url
        assert other.otlp_http_endpoint != jaeger.otlp_http_endpoint
        assert other.services() == []  # serving, and a store of its own
        port = int(other.query_url.rsplit(":", 1)[1])
    assert not other.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert jaeger.running  # the module's instance is unaffected
    jaeger.services()
