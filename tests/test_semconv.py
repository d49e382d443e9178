"""The span and attribute names: written by the timer, read back by the summary service."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

import maeltrace
from maeltrace import Timer, TimeType
from maeltrace.collect._summaries import RunSummaries
from maeltrace.otel import _encode as encode
from maeltrace.otel import semconv
from maeltrace.otel._otlp_json import read_json_lines
from maeltrace.otel.spans import TraceBudget
from tests.fakes.cuda import fake_gpu_clock

# What the timer writes and where: every public string constant of semconv is in exactly one.
RESOURCE = {
    semconv.SERVICE_NAME,
    semconv.HOST_NAME,
    semconv.PROCESS_PID,
    semconv.PROCESS_RUNTIME_NAME,
    semconv.PROCESS_RUNTIME_VERSION,
    semconv.TELEMETRY_SDK_NAME,
    semconv.TELEMETRY_SDK_LANGUAGE,
    semconv.TELEMETRY_SDK_VERSION,
    semconv.MAELTRACE_RUN_ID,
    semconv.MAELTRACE_RANK,
    semconv.MAELTRACE_LOCAL_RANK,
    semconv.MAELTRACE_WORLD_SIZE,
}
SPAN = {
    semconv.MAELTRACE_KEY,
    semconv.MAELTRACE_INDEX,
    semconv.MAELTRACE_CPU_DURATION_NS,
    semconv.MAELTRACE_GPU_DURATION_NS,
    semconv.MAELTRACE_GPU_CLOCK,
    semconv.MAELTRACE_TRACE,
    semconv.MAELTRACE_SAMPLING_DROPPED_UNITS,
    semconv.MAELTRACE_SAMPLING_DROPPED_REGIONS,
    semconv.THREAD_NAME,
    semconv.THREAD_ID,
    semconv.MAELTRACE_RUN_ID,
    semconv.MAELTRACE_SPANS_BUILT,
    semconv.MAELTRACE_REGIONS_SAMPLED_OUT,
    semconv.MAELTRACE_DEVICE_CLOCK,
    semconv.MAELTRACE_DEVICE_DESCRIPTION,
    semconv.MAELTRACE_ITEMS,
    semconv.MAELTRACE_TOKENS,
}
EVENT = {semconv.EXCEPTION_TYPE, semconv.EXCEPTION_MESSAGE}
NAMES = {
    "SCOPE_NAME",
    "RUN_SPAN_NAME",
    "GPU_SUFFIX",
    "EXCEPTION_EVENT_NAME",
    "STATS_PREFIX",
    "STATS_CPU",
    "STATS_GPU",
    # Only JAX's compiling calls make first_call rows; test_collect reads them.
    "FIRST_CALL",
    # The metric and the SDK path's scope: tests/test_otel_metrics.py and test_otel_sdk.py.
    "SCHEMA_URL",
    "REGION_DURATION",
    "REGION_DURATION_UNIT",
    "MAELTRACE_CLOCK",
    "MAELTRACE_CLOCK_CPU",
    "MAELTRACE_CLOCK_GPU",
    # Counts and peak memory as metrics (tests/test_throughput.py), and the peak on spans,
    # measured only on a GPU or its fake (tests/test_peak_memory.py).
    "REGION_ITEMS",
    "REGION_TOKENS",
    "REGION_MEMORY_PEAK",
    "MAELTRACE_GPU_MEMORY_PEAK",
}


def _string_constants() -> dict[str, str]:
    return {
        name: value for name in semconv.__all__ if isinstance(value := getattr(semconv, name), str)
    }


def test_every_constant_is_covered_by_the_round_trip() -> None:
    by_value = set(RESOURCE | SPAN | EVENT)
    for name, value in _string_constants().items():
        assert (value in by_value) != (name in NAMES), name


def test_the_c_encoder_writes_the_same_integer_keys() -> None:
    source = (Path(maeltrace.__file__).parent / "_spanenc.c").read_text()
    match = re.search(r"INT_KEYS\[3\]\s*=\s*\{([^}]*)\}", source)
    assert match is not None
    assert tuple(re.findall(r'"([^"]*)"', match.group(1))) == (
        semconv.MAELTRACE_INDEX,
        semconv.MAELTRACE_CPU_DURATION_NS,
        semconv.MAELTRACE_GPU_DURATION_NS,
    )
    assert encode._INT_KEYS == (
        semconv.MAELTRACE_INDEX,
        semconv.MAELTRACE_CPU_DURATION_NS,
        semconv.MAELTRACE_GPU_DURATION_NS,
    )


def test_a_timer_writes_every_name_and_the_summary_reader_finds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in (("RANK", "3"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "4")):
        monkeypatch.setenv(variable, value)
    # A small budget so that the epoch's trace is sampled; the cpu clock makes [gpu] children.
    budget = TraceBudget(max_spans=10, first=1, slowest=1)
    timer = Timer(export=True, output_dir=tmp_path, device=fake_gpu_clock, trace_budget=budget)
    with timer as tmr, tmr.region(TimeType.EPOCH):
        for _ in range(20):
            with tmr.region(TimeType.BATCH, gpu=True):
                pass
        # On the epoch, so that the batches' timing (and which are sampled) stays as it was.
        tmr.add_items(TimeType.EPOCH, items=80, tokens=1280)
        with pytest.raises(KeyError), tmr.region("load"):
            raise KeyError("shard-7")

    resource_keys: set[str] = set()
    span_keys: set[str] = set()
    event_keys: set[str] = set()
    span_names: set[str] = set()
    event_names: set[str] = set()
    scopes: set[str] = set()
    summaries = RunSummaries()
    for data in read_json_lines(tmr.traces_path):
        assert summaries.add(data) in ([], [tmr.run_id])
        for resource_spans in data.resource_spans:
            resource_keys |= {kv.key for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                scopes.add(scope_spans.scope.name)
                for span in scope_spans.spans:
                    span_names.add(span.name)
                    span_keys |= {kv.key for kv in span.attributes}
                    for event in span.events:
                        event_names.add(event.name)
                        event_keys |= {kv.key for kv in event.attributes}

    assert not RESOURCE - resource_keys  # the missing ones
    assert not SPAN - span_keys
    assert not EVENT - event_keys
    assert scopes == {semconv.SCOPE_NAME}
    assert event_names == {semconv.EXCEPTION_EVENT_NAME}
    assert {semconv.RUN_SPAN_NAME, "batch" + semconv.GPU_SUFFIX} <= span_names
    assert any(key.startswith(semconv.STATS_PREFIX) for key in span_keys)

    # What the summary service reads, through its own reader.
    summary = summaries.get(tmr.run_id)
    assert summary is not None
    (process,) = summary["processes"].values()
    assert process["label"] == "rank3"
    assert (process["rank"], process["local_rank"], process["world_size"]) == (3, 1, 4)
    assert process["host"] == socket.gethostname()
    assert isinstance(process["pid"], int)
    assert process["service"]
    assert process["device_clock"] == "fake-gpu"
    stats = process["stats"]
    assert stats["batch"][semconv.STATS_CPU]["count"] == 20
    assert stats["batch"][semconv.STATS_GPU]["count"] == 20
    assert stats["epoch"][semconv.STATS_CPU]["count"] == 1
    assert summary["spans_received"] > 1
