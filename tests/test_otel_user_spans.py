"""Living with the user's own OpenTelemetry spans: regions opened under one become its children."""

from __future__ import annotations

from pathlib import Path

import pytest

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk (bench group)")

from opentelemetry import trace  # noqa: E402

from maeltrace import Timer, TimeType  # noqa: E402
from maeltrace.otel._otlp_json import read_json_lines  # noqa: E402

BOTH_RECORDERS = True


def _spans(path: Path) -> dict[str, object]:
    return {
        span.name: span
        for data in read_json_lines(path)
        for rs in data.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    }


def test_regions_under_a_user_span_join_its_trace_and_epochs_link_to_it(tmp_path: Path) -> None:
    tracer = otel_sdk.TracerProvider().get_tracer("user-code")
    tmr = Timer(export=True, output_dir=tmp_path)
    with tracer.start_as_current_span("evaluate-checkpoint") as user:
        with tmr.region("evaluate"), tmr.region("inner"):
            pass
        with tmr.region(TimeType.EPOCH), tmr.region(TimeType.BATCH):
            pass
    with tmr.region("after"):
        pass
    tmr.close()
    spans = _spans(tmr.traces_path)
    context = user.get_span_context()
    user_trace = context.trace_id.to_bytes(16, "big")
    user_span = context.span_id.to_bytes(8, "big")
    evaluate, inner = spans["evaluate"], spans["inner"]
    assert evaluate.trace_id == user_trace and evaluate.parent_span_id == user_span
    assert inner.trace_id == user_trace and inner.parent_span_id == evaluate.span_id
    epoch, batch = spans["epoch"], spans["batch"]
    assert epoch.trace_id != user_trace and not epoch.parent_span_id
    assert [(link.trace_id, link.span_id) for link in epoch.links] == [(user_trace, user_span)]
    assert batch.trace_id == epoch.trace_id
    after = spans["after"]  # no user span active: the run's trace, under the run span
    assert after.trace_id == spans["run"].trace_id
    assert after.parent_span_id == spans["run"].span_id


def test_without_an_active_user_span_nothing_changes(tmp_path: Path) -> None:
    assert not trace.get_current_span().get_span_context().is_valid
    tmr = Timer(export=True, output_dir=tmp_path)
    with tmr.region("alone"):
        pass
    tmr.close()
    spans = _spans(tmr.traces_path)
    assert spans["alone"].parent_span_id == spans["run"].span_id
