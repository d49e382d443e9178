"""Export throughput of maeltrace into a real Jaeger, against the OpenTelemetry SDK, and what
configuring export costs the hot path.

What it measures:
    1. Spans per second from recorded regions into Jaeger. A timer with export off records
       ``--epochs`` x ``--batches`` batches of a training loop (per batch an ``io`` wait and a
       ``batch`` region holding ``forward`` and ``backward``; one ``epoch`` region around
       each epoch's batches): 200,010 regions by default. The same regions then go, once
       over OTLP/HTTP protobuf and once over OTLP/gRPC, into a Jaeger v2 that the script
       starts (``tests/services/jaeger.py``), as the export thread sends them: read the
       regions (``Timer.records``, split into requests of ``--request-regions``), build the
       spans (`SpanBuilder.add` into a new ``ExportTraceServiceRequest`` per request) and
       export each request (``make_exporter(config).export``). The table gives spans/s end
       to end and per part (read, build, send: serialisation and the round trip), and
       protobuf serialisation alone, timed apart on the same requests and not added to the
       end-to-end time; also the CPU time this process spent in the timed parts (all its
       threads, not Jaeger's), which moves less than wall time when other work shares the
       machine. ``TraceBudget(max_spans=10**9)`` keeps every region (nothing is sampled);
       each measurement has its own run id (so its own trace ids) and service name.
    2. The OpenTelemetry SDK path, in the same run, as the baseline: the same spans (names,
       attributes, parents, start and end times) made with ``tracer.start_span(...,
       start_time=...)`` and ``span.end(end_time=...)`` on a ``TracerProvider`` whose
       ``SimpleSpanProcessor`` hands each ended span to an ``InMemorySpanExporter``; then,
       per ``--request-regions`` spans, encoded to OTLP protobuf, serialised and posted with
       urllib to the same Jaeger's OTLP/HTTP receiver. The encoder is the SDK's own
       ``encode_spans`` where ``opentelemetry-exporter-otlp-proto-common`` is installed (it is
       no dependency of maeltrace); without it, `_encode_stand_in` in this file does the same
       per-span work, and the table says which of the two ran. The comparison is given
       against the SDK path end to end and against SDK span creation alone (a lower bound on
       the SDK's cost, whichever encoder ran).

       After each of the three, Jaeger's query API is asked for every trace (one epoch per
       trace, ``JaegerService.trace``) until it holds every span: received/expected, and how
       long after the last export that took. That check is not in the throughput; most of
       it is Jaeger answering with the spans as JSON (about 150 MB for 200,000), so it is an
       upper bound on Jaeger's ingest delay. (One query by service for all 200,000 spans
       outlasts the service's 10 s HTTP timeout on a loaded 2-core machine.)
    3. The hot path with export configured: ns per region (``start``/``end`` of one key in a
       tight loop, in an epoch whose own ``start`` and ``end`` are timed too, since the
       epoch's end is where export hands work to the background thread) for a timer with
       export off, a second one (A/A: the noise between two identical timers), one
       exporting to the Jaeger over OTLP/HTTP and one exporting into the embedded default
       (OTLP JSON lines in a temporary folder), each keeping every region
       (``TraceBudget(10**9)``). The four run round-robin for ``--hot-rounds`` rounds after a
       warm-up round, in an order rotated each round; in its turn each timer runs

       * a *quiet* epoch of ``--hot-regions`` regions, its exporter idle;
       * 10 ms of spinning, untimed: the quiet epoch's end handed its spans to the exporter,
         which is now building them and competing for the interpreter lock;
       * a *busy* epoch of as many regions, while that export is under way;
       * an untimed ``flush``, which waits until both epochs' spans have left, and a 0.2 s
         pause so that Jaeger's 200 ms batch processor has stored them before the next turn.

       A ratio is the median over rounds of the same-round ratio to the first export-off
       timer. The A/A timer's ratios (10th to 90th percentile, widened to at least 5 % either
       side of 1) are the noise band that "the same within noise" is judged by. The
       exporter's wall time per region (from the quiet epoch's end until both epochs were
       exported, over their regions) is shown as the background cost, which the hot path
       does not pay directly; and the median time of the epoch's ``end`` call alone, where a
       timer that exports wakes its export thread (in the quiet and busy figures, spread
       over the epoch's regions: small with 20,000 of them, not with ``--quick``'s 2,000).

How to run::

    uv run --group bench python benchmarks/export.py            # full, 1.5 to 2.5 minutes
    uv run --group bench python benchmarks/export.py --quick    # small sizes, ~10 s
    uv run --group bench python benchmarks/export.py --json export.json

    Most of a full run is the checks in Jaeger and, in the hot-path rounds, waiting for the
    embedded default to write its OTLP JSON lines (several times the protobuf path's cost per
    span). Jaeger comes from ``scripts/build-jaeger`` (built once, then cached) or
    ``$MAELTRACE_JAEGER_BIN``. The figures are only comparable within one run: the machine,
    its load (printed) and Jaeger sharing its cores all move them. Nothing here asserts a
    timing; the targets section prints verdicts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import re
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns, process_time_ns
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import maeltrace
from maeltrace import TimeType
from maeltrace.otel.export import ExportConfig, ExportFailed, make_exporter
from maeltrace.otel.resource import resource
from maeltrace.otel.spans import SpanBuilder, TraceBudget, run_trace_id, trace_id
from maeltrace.records import NO_PARENT, NO_TRACE, Records

try:
    from benchmarks import _common as common
except ModuleNotFoundError:  # run as a script: benchmarks/ is first on sys.path
    import _common as common  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_EPOCHS = 10
DEFAULT_BATCHES = 5_000
QUICK_EPOCHS = 2
QUICK_BATCHES = 625
REGIONS_PER_BATCH = 4
"""io, batch, forward, backward."""

DEFAULT_REQUEST_REGIONS = 10_000
"""Regions per export request: about 2 MB of protobuf, under gRPC's default 4 MiB limit."""
GRPC_LIMIT_BYTES = 4 * 1024 * 1024

DEFAULT_HOT_REGIONS = 20_000
DEFAULT_HOT_ROUNDS = 10
QUICK_HOT_REGIONS = 2_000
QUICK_HOT_ROUNDS = 3
HOT_KEY = "step"
SPIN_NS = 10_000_000
"""Spinning between the quiet and the busy epoch, so the exporter is under way."""
PAUSE_S = 0.2
"""After each turn: Jaeger's batch processor flushes every 200 ms."""

TARGET_SPANS_PER_S = 100_000
"""Spans per second from recorded regions into Jaeger (the issue's 2-core machines)."""
MIN_NOISE = 0.05
"""The narrowest noise band, either side of 1, that "the same within noise" allows."""

BIG_BUDGET = TraceBudget(max_spans=10**9)
HTTP = "http/protobuf"
GRPC = "grpc"

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


# -- recording ------------------------------------------------------------------------------


def record(epochs: int, batches: int) -> maeltrace.Timer:
    """A timer with export off holding ``epochs`` x ``batches`` batches of a training loop."""
    tmr = maeltrace.Timer(enabled=True, export=False)
    start, end = tmr.start, tmr.end
    epoch, io, batch = TimeType.EPOCH, TimeType.IO, TimeType.BATCH
    forward, backward = TimeType.FORWARD, TimeType.BACKWARD
    for _ in range(epochs):
        start(epoch)
        for _ in range(batches):
            start(io)
            end(io)
            start(batch)
            start(forward)
            end(forward)
            start(backward)
            end(backward)
            end(batch)
        end(epoch)
    return tmr


_COLUMNS = [f.name for f in dataclasses.fields(Records) if f.name not in ("keys", "threads")]


def split(records: Records, size: int) -> list[Records]:
    """``records`` in consecutive slices of at most ``size`` regions."""
    return [
        dataclasses.replace(records, **{c: getattr(records, c)[i : i + size] for c in _COLUMNS})
        for i in range(0, len(records), size)
    ]


# -- Jaeger ---------------------------------------------------------------------------------


def _jaeger_module() -> Any:
    # tests/ is not a package of the distribution; the benchmark runs from a checkout.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.services import jaeger

    return jaeger


@dataclass(slots=True)
class Confirmation:
    """What Jaeger's query API showed after a measurement."""

    received: int
    expected: int
    seconds: float
    note: str = ""


def confirm(jaeger: Any, expected: Mapping[str, int], timeout_s: float) -> Confirmation:
    """Waits (untimed for the throughput) until Jaeger holds every span of every trace.

    Asks for one trace at a time (``JaegerService.trace``): a query by service for 200,000
    spans makes Jaeger answer with ~150 MB of JSON, which takes longer than the service's
    10 s HTTP timeout on a loaded 2-core machine; a trace of one epoch is a tenth of that.

    Args:
        jaeger: the running `JaegerService`.
        expected: spans per trace, by hex trace id.
        timeout_s: how long to keep asking; the time starts when called, right after the
            last export returned.
    """
    module = _jaeger_module()
    started = time.monotonic()
    deadline = started + timeout_s
    seen = dict.fromkeys(expected, 0)
    note = ""
    # Jaeger's batch processor stores what it got within 200 ms.
    time.sleep(0.3)
    while True:
        for hex_id, count in expected.items():
            if seen[hex_id] >= count:
                continue
            try:
                seen[hex_id] = len(jaeger.trace(hex_id)["spans"])
            except (module.JaegerError, OSError) as err:
                note = str(err).splitlines()[0]
        short = [h for h, count in expected.items() if seen[h] < count]
        if not short or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if short:
        note = f"{len(short)} of {len(expected)} traces incomplete after {timeout_s:.0f} s" + (
            f"; last error: {note}" if note else ""
        )
    else:
        note = ""
    return Confirmation(
        sum(seen.values()), sum(expected.values()), time.monotonic() - started, note
    )


# -- maeltrace into Jaeger ------------------------------------------------------------------


@dataclass(slots=True)
class Throughput:
    """One way of getting the recorded regions into Jaeger, timed by part.

    Attributes:
        label: the row's name.
        spans: spans delivered (or made, for a part that does not deliver).
        parts_ns: wall ns of each part, in order; their sum is the end-to-end time.
        extra_ns: parts measured apart, not in the end-to-end time.
        requests: requests sent.
        max_request_bytes: the largest request's encoded size.
        cpu_ns: CPU time of this process (every thread) over the timed parts; Jaeger's not.
        traces: spans per trace delivered, by hex trace id (for the check).
        confirmation: what Jaeger showed afterwards.
        note: a remark printed under the table.
        error: why it stopped early, if it did.
    """

    label: str
    spans: int = 0
    parts_ns: dict[str, int] = field(default_factory=dict)
    extra_ns: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    max_request_bytes: int = 0
    cpu_ns: int = 0
    traces: dict[str, int] = field(default_factory=dict)
    confirmation: Confirmation | None = None
    note: str = ""
    error: str = ""

    @property
    def total_ns(self) -> int:
        return sum(self.parts_ns.values())

    def rate(self, ns: int | None = None) -> float | None:
        """Spans per second over ``ns`` (default the end-to-end time)."""
        ns = self.total_ns if ns is None else ns
        return self.spans / (ns / 1e9) if ns > 0 and self.spans else None


def _builder(tmr: maeltrace.Timer, records: Records, tag: str, service: str) -> SpanBuilder:
    # Its own run id gives the measurement its own trace ids, so that Jaeger does not merge
    # its traces with another measurement's of the same regions.
    run_id = f"{tmr.run_id}-{tag}"
    trace_key = str(TimeType.EPOCH)
    return SpanBuilder(
        run_id=run_id,
        process_id=f"{socket.gethostname()}/{os.getpid()}/{tag}",
        anchor=tmr.anchor,
        resource_attributes=resource(run_id, extra={"service.name": service}),
        trace_key_id=records.keys.index(trace_key) if trace_key in records.keys else None,
        budget=BIG_BUDGET,
    )


def export_maeltrace(
    tmr: maeltrace.Timer, protocol: str, endpoint: str, request_regions: int, service: str
) -> Throughput:
    """Reads, builds and exports the timer's regions as the export thread does; timed by part."""
    label = f"maeltrace -> Jaeger, {'OTLP/HTTP protobuf' if protocol == HTTP else 'OTLP/gRPC'}"
    result = Throughput(label)
    # No environment: headers, timeouts or compression set for real runs must not leak in.
    config = ExportConfig.from_env(environ={}, endpoint=endpoint, protocol=protocol)
    assert config is not None
    exporter = make_exporter(config)
    gc.collect()
    try:
        c0, t0 = process_time_ns(), perf_counter_ns()
        records = tmr.records(flush=False)
        slices = split(records, request_regions)
        read_ns = perf_counter_ns() - t0
        result.cpu_ns += process_time_ns() - c0
        builder = _builder(tmr, records, protocol.replace("/", "-"), service)
        run_id = builder.run_id
        build_ns = send_ns = serialise_ns = 0
        for part in slices:
            c0, t0 = process_time_ns(), perf_counter_ns()
            request = ExportTraceServiceRequest()
            message = request.resource_spans.add()
            message.CopyFrom(builder.new_message())
            count = builder.add(message, part)
            t1 = perf_counter_ns()
            try:
                exporter.export(request)
            except ExportFailed as err:
                result.error = str(err)
                break
            t2 = perf_counter_ns()
            result.cpu_ns += process_time_ns() - c0
            build_ns += t1 - t0
            send_ns += t2 - t1
            result.spans += count
            result.requests += 1
            # Apart, untimed for the throughput: how much of sending is protobuf encoding.
            t3 = perf_counter_ns()
            size = len(request.SerializeToString())
            serialise_ns += perf_counter_ns() - t3
            result.max_request_bytes = max(result.max_request_bytes, size)
            for ordinal, count in Counter(part.trace).items():
                hex_id = (
                    run_trace_id(run_id) if ordinal == NO_TRACE else trace_id(run_id, ordinal)
                ).hex()
                result.traces[hex_id] = result.traces.get(hex_id, 0) + count
        if builder.spans_dropped:
            result.note = f"{builder.spans_dropped:,} regions sampled out (budget too small)"
        result.parts_ns = {"read": read_ns, "build": build_ns, "send": send_ns}
        result.extra_ns = {"serialise": serialise_ns}
    finally:
        exporter.shutdown()
    return result


# -- the OpenTelemetry SDK into Jaeger ------------------------------------------------------


def _sdk_encoder() -> tuple[Callable[[Sequence[Any]], ExportTraceServiceRequest], str]:
    """The SDK's OTLP encoder where installed, else the stand-in below; and its description."""
    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    except ImportError:
        return _encode_stand_in, (
            "stand-in encoder (opentelemetry-exporter-otlp-proto-common is not installed; "
            "see _encode_stand_in)"
        )
    version = common.version("opentelemetry-exporter-otlp-proto-common")
    return encode_spans, f"the SDK's encode_spans (exporter-otlp-proto-common {version})"


def _any_value(value: Any) -> Any:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def _key_values(values: Any) -> list[Any]:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    return [KeyValue(key=k, value=_any_value(v)) for k, v in (values or {}).items()]


def _encode_stand_in(spans: Sequence[Any]) -> ExportTraceServiceRequest:
    """OTLP protobuf of SDK ``ReadableSpan`` objects, for when the SDK's encoder is missing.

    Does the per-span work an OTLP encoder must: one protobuf ``Span`` built from each
    span's context, parent, name, kind, times, attributes and status, grouped by resource
    and instrumentation scope. Events and links are left out (these spans have none).
    """
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

    groups: dict[Any, dict[Any, list[Any]]] = {}
    for sdk_span in spans:
        context = sdk_span.get_span_context()
        parent = sdk_span.parent
        state = context.trace_state
        encoded = Span(
            trace_id=context.trace_id.to_bytes(16, "big"),
            span_id=context.span_id.to_bytes(8, "big"),
            trace_state=",".join(f"{k}={v}" for k, v in state.items()) if state else None,
            parent_span_id=parent.span_id.to_bytes(8, "big") if parent else None,
            name=sdk_span.name,
            kind=sdk_span.kind.value + 1,  # the SDK counts from INTERNAL = 0, OTLP from 1
            start_time_unix_nano=sdk_span.start_time,
            end_time_unix_nano=sdk_span.end_time,
            attributes=_key_values(sdk_span.attributes),
            status=Status(
                code=sdk_span.status.status_code.value, message=sdk_span.status.description
            ),
            dropped_attributes_count=sdk_span.dropped_attributes,
        )
        scopes = groups.setdefault(sdk_span.resource, {})
        scopes.setdefault(sdk_span.instrumentation_scope, []).append(encoded)
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=_key_values(sdk_resource.attributes)),
                scope_spans=[
                    ScopeSpans(
                        scope=InstrumentationScope(name=scope.name, version=scope.version or ""),
                        spans=encoded_spans,
                    )
                    for scope, encoded_spans in scopes.items()
                ],
            )
            for sdk_resource, scopes in groups.items()
        ]
    )


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/x-protobuf"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30.0) as response:
        response.read()


def export_sdk(
    tmr: maeltrace.Timer, endpoint: str, request_regions: int, service: str
) -> Throughput:
    """Makes the timer's regions as SDK spans, encodes them and posts them; timed by part."""
    from opentelemetry import trace as trace_api
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    encode, encoder = _sdk_encoder()
    result = Throughput(
        "OpenTelemetry SDK -> Jaeger, OTLP/HTTP protobuf", note=f"encoder: {encoder}"
    )
    records = tmr.records(flush=False)
    keys = [str(k) for k in records.keys]
    epoch_id = keys.index(str(TimeType.EPOCH)) if str(TimeType.EPOCH) in keys else -1
    threads = [
        {"thread.name": t.name, **({"thread.id": t.native_id} if t.native_id is not None else {})}
        for t in records.threads
    ]
    offset = tmr.anchor.wall_time_unix_nano - tmr.anchor.perf_counter_ns
    parents = set(records.parent_seq) - {NO_PARENT}
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("maeltrace-benchmark")
    set_span_in_context = trace_api.set_span_in_context
    non_recording = trace_api.NonRecordingSpan
    internal = trace_api.SpanKind.INTERNAL
    empty = Context()
    contexts: dict[int, Any] = {}
    index = [0] * len(keys)
    epochs = 0
    url = f"{endpoint}/v1/traces"
    create_ns = encode_ns = send_ns = serialise_ns = 0
    gc.collect()
    try:
        for part in split(records, request_regions):
            c0, t0 = process_time_ns(), perf_counter_ns()
            for key_id, seq, parent, start, end, thread in zip(
                part.key_id,
                part.seq,
                part.parent_seq,
                part.start_ns,
                part.end_ns,
                part.thread,
                strict=True,
            ):
                attributes: dict[str, Any] = {
                    "maeltrace.key": keys[key_id],
                    **threads[thread],
                    "maeltrace.index": index[key_id],
                    "maeltrace.cpu.duration_ns": end - start,
                }
                index[key_id] += 1
                if key_id == epoch_id:
                    attributes["maeltrace.trace"] = epochs
                    epochs += 1
                span = tracer.start_span(
                    keys[key_id],
                    context=contexts[parent] if parent != NO_PARENT else empty,
                    kind=internal,
                    attributes=attributes,
                    start_time=start + offset,
                )
                span.end(end_time=end + offset)
                if seq in parents:
                    # The parent's context, not the span: ended spans are not kept alive.
                    contexts[seq] = set_span_in_context(
                        non_recording(span.get_span_context()), empty
                    )
            t1 = perf_counter_ns()
            spans = memory.get_finished_spans()
            memory.clear()
            request = encode(spans)
            t2 = perf_counter_ns()
            body = request.SerializeToString()
            t3 = perf_counter_ns()
            try:
                _post(url, body)
            except OSError as err:
                result.error = f"POST {url} failed: {err}"
                break
            t4 = perf_counter_ns()
            result.cpu_ns += process_time_ns() - c0
            create_ns += t1 - t0
            encode_ns += t2 - t1
            send_ns += t4 - t2
            serialise_ns += t3 - t2
            result.spans += len(spans)
            result.requests += 1
            result.max_request_bytes = max(result.max_request_bytes, len(body))
            for sdk_span in spans:  # untimed: what the check in Jaeger expects
                hex_id = format(sdk_span.context.trace_id, "032x")
                result.traces[hex_id] = result.traces.get(hex_id, 0) + 1
    finally:
        provider.shutdown()
    result.parts_ns = {"create": create_ns, "encode": encode_ns, "send": send_ns}
    result.extra_ns = {"serialise": serialise_ns}
    return result


# -- the hot path with export configured ----------------------------------------------------


@dataclass(slots=True)
class HotCandidate:
    """A timer the hot-path rounds time, and what they measured (ns per region per round)."""

    name: str
    timer: maeltrace.Timer
    exports: bool
    quiet: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    background: list[float] = field(default_factory=list)
    window_ms: list[float] = field(default_factory=list)
    epoch_end: list[int] = field(default_factory=list)
    note: str = ""


@contextlib.contextmanager
def _without_endpoint() -> Iterator[None]:
    """No OTLP endpoint in the environment: the timer built inside picks the embedded default."""
    saved = {name: os.environ.pop(name) for name in _ENDPOINT_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def hot_candidates(folder: Path, http_endpoint: str) -> list[HotCandidate]:
    """The four timers, each with its own output folder."""

    def timer(name: str, **kwargs: Any) -> maeltrace.Timer:
        return maeltrace.Timer(enabled=True, output_dir=folder / name, **kwargs)

    with _without_endpoint():
        embedded = timer("embedded", export=True, trace_budget=BIG_BUDGET)
    candidates = [
        HotCandidate("export off", timer("off", export=False), exports=False),
        HotCandidate("export off, 2nd timer (A/A noise)", timer("off2", export=False), False),
        HotCandidate(
            "export on -> Jaeger OTLP/HTTP",
            timer(
                "http", export=True, endpoint=http_endpoint, protocol=HTTP, trace_budget=BIG_BUDGET
            ),
            exports=True,
        ),
        HotCandidate("export on, embedded default (file)", embedded, exports=True),
    ]
    for cand in candidates:
        if cand.exports and not cand.timer.export:
            cand.note = "export is off (OTEL_SDK_DISABLED?): this row measures no export"
    return candidates


def _epoch(tmr: maeltrace.Timer, n: int) -> tuple[int, int]:
    """Wall ns of one epoch of ``n`` regions, its own start and end (the export request)
    included; and of the epoch's end alone."""
    start, end = tmr.start, tmr.end
    key, epoch = HOT_KEY, TimeType.EPOCH
    t0 = perf_counter_ns()
    start(epoch)
    for _ in range(n):
        start(key)
        end(key)
    t1 = perf_counter_ns()
    end(epoch)
    t2 = perf_counter_ns()
    return t2 - t0, t2 - t1


def _spin(ns: int) -> None:
    until = perf_counter_ns() + ns
    while perf_counter_ns() < until:
        pass


def measure_hot(candidates: list[HotCandidate], *, regions: int, rounds: int) -> None:
    """Round-robin turns as the module docstring describes; one warm-up round first."""
    for round_no in range(rounds + 1):
        for cand in common.rotated(candidates, round_no):
            tmr = cand.timer
            gc.collect()
            quiet_ns, quiet_end_ns = _epoch(tmr, regions)
            quiet_end = perf_counter_ns()
            _spin(SPIN_NS)
            busy_ns, busy_end_ns = _epoch(tmr, regions)
            tmr.flush(timeout_s=120.0)
            drained = perf_counter_ns()
            time.sleep(PAUSE_S)
            if round_no == 0:
                continue
            cand.quiet.append(quiet_ns / regions)
            cand.busy.append(busy_ns / regions)
            cand.window_ms.append(busy_ns / 1e6)
            cand.epoch_end += [quiet_end_ns, busy_end_ns]
            if cand.exports:
                cand.background.append((drained - quiet_end) / (2 * regions))


def close_hot(candidates: list[HotCandidate]) -> None:
    """Checks that nothing was spilled, then drops the regions and closes the timers."""
    for cand in candidates:
        tmr = cand.timer
        if cand.exports and tmr.export:
            if tmr.spill_path.exists():
                cand.note = f"spans spilled to {tmr.spill_path.name}: the export failed"
            elif tmr.traces_path.exists():
                size = tmr.traces_path.stat().st_size
                cand.note = f"wrote {size / 1e6:,.0f} MB of OTLP JSON lines"
        # Dropped first: closing writes the stats and the Chrome trace of what is left.
        tmr.reset()
        tmr.close(timeout_s=30.0)


_same_round_ratios = common.same_round_ratios


@dataclass(frozen=True, slots=True)
class Band:
    """The A/A noise band: ratios in [low, high] are the same as export off within noise."""

    low: float
    high: float

    def holds(self, ratio: float | None) -> bool | None:
        return None if ratio is None else self.low <= ratio <= self.high


def noise_band(aa_ratios: list[float]) -> Band:
    """The middle 80 % of the A/A ratios (10th to 90th percentile; min to max with fewer than
    ten), widened to at least `MIN_NOISE` either side of 1."""
    if not aa_ratios:
        return Band(1 - MIN_NOISE, 1 + MIN_NOISE)
    if len(aa_ratios) >= 10:
        deciles = statistics.quantiles(aa_ratios, n=10)
        low, high = deciles[0], deciles[-1]
    else:
        low, high = min(aa_ratios), max(aa_ratios)
    return Band(min(low, 1 - MIN_NOISE), max(high, 1 + MIN_NOISE))


# -- reporting ------------------------------------------------------------------------------


_table = common.table
_rate = common.whole


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


_verdict = common.verdict


def report_throughput(runs: list[Throughput]) -> dict[str, Any]:
    """Prints the throughput table and returns its figures."""
    rows = []
    figures: dict[str, Any] = {}
    for run in runs:
        parts = {name: run.rate(ns) for name, ns in run.parts_ns.items()}
        extra = {name: run.rate(ns) for name, ns in run.extra_ns.items()}
        confirmation = run.confirmation
        received = (
            f"{confirmation.received:,}/{confirmation.expected:,} in {confirmation.seconds:.1f} s"
            if confirmation
            else "-"
        )
        part_cells = " ".join(f"{name} {_rate(rate)}" for name, rate in parts.items())
        rows.append(
            [
                run.label,
                f"{run.spans:,}",
                f"{run.total_ns / 1e9:.2f}",
                f"{run.cpu_ns / 1e9:.2f}",
                _rate(run.rate()),
                part_cells,
                _rate(extra.get("serialise")),
                f"{run.max_request_bytes / 2**20:.2f}",
                received,
            ]
        )
        figures[run.label] = {
            "spans": run.spans,
            "requests": run.requests,
            "seconds": run.total_ns / 1e9,
            "cpu_seconds": run.cpu_ns / 1e9,
            "spans_per_s": run.rate(),
            "parts_spans_per_s": parts,
            "parts_seconds": {k: v / 1e9 for k, v in run.parts_ns.items()},
            "serialise_spans_per_s": extra.get("serialise"),
            "max_request_bytes": run.max_request_bytes,
            "jaeger_received": confirmation.received if confirmation else None,
            "jaeger_expected": confirmation.expected if confirmation else None,
            "jaeger_check_seconds": confirmation.seconds if confirmation else None,
            "note": run.note,
            "error": run.error,
        }
    headers = [
        "path",
        "spans",
        "s",
        "CPU s",
        "spans/s",
        "by part (spans/s)",
        "of send: serialise",
        "max MiB/req",
        "in Jaeger (check took)",
    ]
    print(_table(headers, rows))
    for run in runs:
        if run.note:
            print(f"note: {run.label}: {run.note}")
        if run.error:
            print(f"WARNING: {run.label} stopped early: {run.error}")
        if run.confirmation and run.confirmation.note:
            print(f"WARNING: {run.label}: {run.confirmation.note}")
        if "gRPC" in run.label and run.max_request_bytes > GRPC_LIMIT_BYTES:
            print(f"WARNING: {run.label}: a request is over gRPC's default 4 MiB limit")
    return figures


def report_hot(candidates: list[HotCandidate], band: Band) -> dict[str, Any]:
    """Prints the hot-path table and returns its figures."""
    reference = candidates[0]
    rows = []
    figures: dict[str, Any] = {}
    for cand in candidates:
        quiet_ratio = busy_ratio = None
        if cand is not reference and cand.quiet:
            quiet_ratio = statistics.median(_same_round_ratios(cand.quiet, reference.quiet))
            busy_ratio = statistics.median(_same_round_ratios(cand.busy, reference.busy))
        background = statistics.median(cand.background) if cand.background else None
        epoch_end = statistics.median(cand.epoch_end) if cand.epoch_end else None
        quiet = statistics.median(cand.quiet) if cand.quiet else None
        busy = statistics.median(cand.busy) if cand.busy else None
        rows.append(
            [
                cand.name,
                _rate(quiet),
                "1 (reference)" if cand is reference else _ratio(quiet_ratio),
                _rate(busy),
                "1 (reference)" if cand is reference else _ratio(busy_ratio),
                "-" if epoch_end is None else f"{epoch_end / 1e3:,.1f}",
                "-" if background is None else f"{background / 1e3:,.1f}",
            ]
        )
        figures[cand.name] = {
            "quiet_ns_per_region": quiet,
            "busy_ns_per_region": busy,
            "quiet_ratio": quiet_ratio,
            "busy_ratio": busy_ratio,
            "background_us_per_region": None if background is None else background / 1e3,
            "epoch_end_us": None if epoch_end is None else epoch_end / 1e3,
            "quiet_samples": cand.quiet,
            "busy_samples": cand.busy,
            "note": cand.note,
        }
    headers = [
        "timer",
        "quiet ns",
        "x export off",
        "busy ns",
        "x export off",
        "epoch end us",
        "exporter us/region",
    ]
    print(_table(headers, rows))
    window = statistics.median(reference.window_ms) if reference.window_ms else 0.0
    print(
        f"noise band (A/A 10th..90th percentile, at least +-{MIN_NOISE:.0%}): "
        f"{band.low:.2f}x..{band.high:.2f}x;"
        f" a busy epoch lasts ~{window:.1f} ms, the interpreter's switch interval is "
        f"{sys.getswitchinterval() * 1e3:.0f} ms"
    )
    for cand in candidates:
        if cand.note:
            print(f"note: {cand.name}: {cand.note}")
    return figures


def report_targets(
    runs: list[Throughput], hot: dict[str, Any], band: Band, candidates: list[HotCandidate]
) -> dict[str, Any]:
    """Prints the targets with verdicts and returns them."""
    rows = []
    verdicts: dict[str, Any] = {}
    for run in runs:
        if not run.label.startswith("maeltrace"):
            continue
        rate = run.rate()
        ok = None if rate is None or run.error else rate >= TARGET_SPANS_PER_S
        rows.append(
            [f"{run.label}: spans/s", f">= {TARGET_SPANS_PER_S:,}", _rate(rate), _verdict(ok)]
        )
        verdicts[run.label] = ok
    sdk = next((r for r in runs if r.label.startswith("OpenTelemetry")), None)
    for cand in candidates[2:]:
        for phase in ("quiet", "busy"):
            ratio = hot[cand.name][f"{phase}_ratio"]
            ok = band.holds(ratio)
            name = f"hot path, {cand.name}, {phase}: x export off"
            rows.append([name, f"{band.low:.2f}..{band.high:.2f}x", _ratio(ratio), _verdict(ok)])
            verdicts[name] = ok
    print(_table(["target", "wanted", "measured", "met"], rows))
    if sdk is not None and sdk.rate() is not None:
        create = sdk.rate(sdk.parts_ns.get("create", 0))
        print("maeltrace over the SDK, spans/s (same spans, same Jaeger):")
        for run in runs:
            if run.label.startswith("maeltrace") and run.rate() is not None:
                vs_e2e = run.rate() / sdk.rate()  # type: ignore[operator]  # both checked
                vs_create = run.rate() / create if create else None  # type: ignore[operator]
                print(
                    f"  {run.label}: {vs_e2e:.1f}x the SDK path end to end, "
                    f"{_ratio(vs_create)} SDK span creation alone (the SDK's own code)"
                )
    return verdicts


# -- environment and main -------------------------------------------------------------------


def _jaeger_version() -> str:
    go_mod = ROOT / "collectors" / "jaeger" / "go.mod"
    try:
        found = re.search(r"github\.com/jaegertracing/jaeger (v\S+)", go_mod.read_text())
    except OSError:
        return "unknown"
    return found.group(1) if found else "unknown"


def _environment() -> dict[str, Any]:
    env = common.environment(
        "opentelemetry-sdk", "opentelemetry-proto", "protobuf", "grpcio", all_loads=True
    )
    env["jaeger"] = _jaeger_version()
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints its tables.

    Args:
        argv: command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status: 0.
    """
    parser = common.parser(__doc__, "small sizes and few rounds")
    parser.add_argument("--epochs", type=int, help=f"epochs recorded (default {DEFAULT_EPOCHS})")
    parser.add_argument(
        "--batches", type=int, help=f"batches per epoch (default {DEFAULT_BATCHES:,})"
    )
    parser.add_argument(
        "--request-regions",
        type=int,
        default=DEFAULT_REQUEST_REGIONS,
        help=f"regions per export request (default {DEFAULT_REQUEST_REGIONS:,})",
    )
    parser.add_argument(
        "--hot-regions",
        type=int,
        help=f"regions per hot-path epoch (default {DEFAULT_HOT_REGIONS:,})",
    )
    parser.add_argument(
        "--hot-rounds", type=int, help=f"hot-path rounds (default {DEFAULT_HOT_ROUNDS})"
    )
    common.add_json(parser)
    args = parser.parse_args(argv)
    epochs = common.pick(args.epochs, args.quick, QUICK_EPOCHS, DEFAULT_EPOCHS)
    batches = common.pick(args.batches, args.quick, QUICK_BATCHES, DEFAULT_BATCHES)
    hot_regions = common.pick(args.hot_regions, args.quick, QUICK_HOT_REGIONS, DEFAULT_HOT_REGIONS)
    hot_rounds = common.pick(args.hot_rounds, args.quick, QUICK_HOT_ROUNDS, DEFAULT_HOT_ROUNDS)
    if min(epochs, batches, args.request_regions, hot_regions, hot_rounds) < 1:
        parser.error("sizes and rounds must be positive")

    env = _environment()
    regions = epochs * (batches * REGIONS_PER_BATCH + 1)
    print("maeltrace export: spans/s into a real Jaeger, against the OpenTelemetry SDK path")
    print(common.header_line(env))
    print(
        f"{regions:,} regions ({epochs} epochs x {batches:,} batches of io, batch, forward, "
        f"backward), {args.request_regions:,} per request; hot path: {hot_regions:,} regions "
        f"per epoch x {hot_rounds} rounds (+1 warm-up)"
    )
    started = perf_counter_ns()
    jaeger_module = _jaeger_module()
    tag = uuid.uuid4().hex[:8]
    confirm_timeout = 30.0 + regions / 5_000
    with (
        jaeger_module.JaegerService() as jaeger,
        tempfile.TemporaryDirectory(prefix="maeltrace-bench-export-") as folder,
    ):
        print(f"Jaeger up in {common.seconds_since(started):.1f} s")
        print()
        tmr = record(epochs, batches)
        runs = []
        for protocol, endpoint in (
            (HTTP, jaeger.otlp_http_endpoint),
            (GRPC, jaeger.otlp_grpc_endpoint),
        ):
            service = f"maeltrace-bench-{tag}-{protocol.replace('/', '-')}"
            run = export_maeltrace(tmr, protocol, endpoint, args.request_regions, service)
            run.confirmation = confirm(jaeger, run.traces, confirm_timeout)
            runs.append(run)
        service = f"maeltrace-bench-{tag}-sdk"
        run = export_sdk(tmr, jaeger.otlp_http_endpoint, args.request_regions, service)
        run.confirmation = confirm(jaeger, run.traces, confirm_timeout)
        runs.append(run)
        del tmr

        print("Throughput: recorded regions -> spans in Jaeger (the check is not in spans/s)")
        throughput = report_throughput(runs)
        print()

        candidates = hot_candidates(Path(folder), jaeger.otlp_http_endpoint)
        try:
            gc.collect()
            gc.freeze()
            try:
                measure_hot(candidates, regions=hot_regions, rounds=hot_rounds)
            finally:
                gc.unfreeze()
        finally:
            close_hot(candidates)
        aa = _same_round_ratios(candidates[1].quiet, candidates[0].quiet)
        aa += _same_round_ratios(candidates[1].busy, candidates[0].busy)
        band = noise_band(aa)
        print(
            "Hot path: ns per region (start/end in a tight loop, median over rounds); quiet: "
            "exporter idle, busy: exporting the previous epoch"
        )
        hot = report_hot(candidates, band)
        print()

    print("Targets (issue):")
    verdicts = report_targets(runs, hot, band, candidates)
    env["load avg 1/5/15m at the end"] = common.load(all_three=True)
    print(
        f"\nmachine: {env['cpus']} cpus, load avg {env['load avg 1/5/15m']} at the start, "
        f"{env['load avg 1/5/15m at the end']} at the end"
    )
    print(f"took {common.seconds_since(started):.1f} s (Jaeger start and checks included)")
    payload = {
        "environment": env,
        "regions": regions,
        "request_regions": args.request_regions,
        "hot_regions": hot_regions,
        "hot_rounds": hot_rounds,
        "throughput": throughput,
        "hot_path": hot,
        "noise_band": [band.low, band.high],
        "targets": verdicts,
    }
    common.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
