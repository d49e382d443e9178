"""End-to-end check of the Jaeger test service: OTLP/JSON in, the same span tree out.

The first run builds Jaeger from Go modules (``scripts/build-jaeger``; minutes when Go's caches
are cold). A failing build fails these tests; nothing is skipped.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
import urllib.request

import pytest

from tests.helpers import otlp_json_span
from tests.services.jaeger import JaegerService

SERVICE = "maeltrace-smoke"


def test_otlp_json_round_trip(jaeger: JaegerService) -> None:
    trace_id, parent_id, child_id = (
        secrets.token_hex(16),
        secrets.token_hex(8),
        secrets.token_hex(8),
    )
    parent_start = time.time_ns() // 1000 - 100_000  # µs, 100 ms ago
    child_start = parent_start + 5_000
    payload = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": SERVICE}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "maeltrace.tests"},
                        "spans": [
                            otlp_json_span(trace_id, parent_id, "train_step", parent_start, 40_000),
                            otlp_json_span(
                                trace_id, child_id, "forward", child_start, 12_345, parent_id
                            ),
                        ],
                    }
                ],
            }
        ]
    }
    request = urllib.request.Request(
        f"{jaeger.otlp_http_endpoint}/v1/traces",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

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
