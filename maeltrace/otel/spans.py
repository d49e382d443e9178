"""Regions become OpenTelemetry spans, after the fact, as serialised OTLP spans.

Nothing here runs on the hot path: a `SpanBuilder` reads closed regions (`maeltrace.Records`)
at flush time and writes each span straight to the wire format, protobuf or OTLP/JSON, with
explicit start and end times on the wall clock (through the timer's
`maeltrace._clock.ClockAnchor`), through `maeltrace.otel._encode`. Building SDK span objects
would cost tens of microseconds per span, protobuf messages a few; the compiled encoder takes
about 0.1 us of the GIL per span, and does the rest of its work with the GIL released.

Trace shape: every region of the trace key (the epoch) starts a trace whose id is derived from
(run id, epoch ordinal), so every rank of a run puts the same epoch into the same trace without
talking. Regions outside any epoch go to the run's trace, under a ``run`` span that links the
epochs. A trace keeps at most `TraceBudget.max_spans` spans: beyond it, the epoch's children
(batches, IO waits, ... with everything inside them) are sampled: the first ones, the slowest
ones, and every k-th. The statistics never sample: they are computed over every region.
"""

# Over 600 lines, just: the span model (templates, budget, ids, the run span) in one place;
# about half is docstrings.

from __future__ import annotations

import base64
import hashlib
import json
import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# protobuf ships no type information (types-protobuf trails protobuf 7).
from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import (
    ResourceSpans,
    ScopeSpans,
    Span,
    Status,
    TracesData,
)

from maeltrace._clock import ClockAnchor
from maeltrace._version import __version__
from maeltrace.otel import semconv
from maeltrace.otel._encode import (
    KEY_MASK,
    R_DEVICE,
    R_END,
    R_KTS,
    R_PARENT,
    R_SEQ,
    R_START,
    ROW_FIELDS,
    STATUS_SHIFT,
    THREAD_SHIFT,
    Encoder,
    Special,
    Template,
    group_records,
    varint,
)
from maeltrace.otel._encode import encoder as default_encoder
from maeltrace.otel.semconv import GPU_SUFFIX, RUN_SPAN_NAME, SCOPE_NAME
from maeltrace.records import NO_DEVICE_TIME, NO_PARENT, NO_TRACE, STATUS_OK, Records

__all__ = [
    "SCOPE_NAME",
    "SpanBuilder",
    "TraceBudget",
    "run_trace_id",
    "span_field_size",
    "trace_id",
]


def _hash(*parts: object, size: int) -> bytes:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=size).digest()
    # An all-zero id is invalid in OTLP; a 2**-64 chance, but never emit one.
    return digest if any(digest) else b"\x01" + digest[1:]


def trace_id(run_id: str, ordinal: int) -> bytes:
    """The id of epoch ``ordinal``'s trace: the same on every process of the run."""
    return _hash(run_id, "trace", ordinal, size=16)


def run_trace_id(run_id: str) -> bytes:
    """The id of the run's trace, which holds the run spans and the regions outside epochs."""
    return _hash(run_id, "run", size=16)


@dataclass(frozen=True, slots=True)
class TraceBudget:
    """How many spans one trace keeps, and how it chooses when there are more.

    Attributes:
        max_spans: spans per trace before sampling (each region is one span, a gpu region two).
        first: the trace's first units (children of its root, with their subtrees) always kept.
        slowest: its slowest units always kept.
    """

    max_spans: int = 5000
    first: int = 20
    slowest: int = 20

    def __post_init__(self) -> None:
        for name in ("max_spans", "first", "slowest"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TraceBudget.{name} must be a non-negative int, not {value!r}")
        if self.max_spans < 1:
            raise ValueError("TraceBudget.max_spans must be at least 1")


_MASK = (1 << 64) - 1


def _value(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def attributes(values: Mapping[str, object]) -> list[KeyValue]:
    """OTLP attributes from a plain mapping (bool, int, float, else str)."""
    return [KeyValue(key=k, value=_value(v)) for k, v in values.items()]


_Row = tuple[int, int, int, int, int, int, int]
"""A packed row, unpacked (`maeltrace.otel._encode.ROW_FIELDS` values), for sampling."""

_DUMPS = {"ensure_ascii": False, "allow_nan": False, "separators": (",", ":")}
"""`json.dumps` options of `maeltrace.otel._otlp_json.traces_to_json_line`: fragments written with
them join into the same line it writes."""


def _json_object(message: Any) -> dict[str, Any]:
    """protobuf's JSON mapping of a span (or a part of one), its ids in OTLP's hex."""
    obj: dict[str, Any] = json_format.MessageToDict(message, use_integers_for_enums=True)
    for holder in [obj, *obj.get("links", [])]:
        for name in ("traceId", "spanId", "parentSpanId"):
            if name in holder:
                holder[name] = base64.b64decode(holder[name]).hex()
    return obj


def _dumps(value: object) -> bytes:
    return json.dumps(value, **_DUMPS).encode()  # type: ignore[arg-type]  # options typed loosely


def _inner(value: object) -> bytes:
    """A JSON object's members, or a list's items, without the braces or brackets around."""
    return _dumps(value)[1:-1]


def _attribute_fields(values: Mapping[str, object]) -> bytes:
    return Span(attributes=attributes(values)).SerializeToString()  # type: ignore[no-any-return]


def _attribute_json(values: Mapping[str, object]) -> bytes:
    return _inner(_json_object(Span(attributes=attributes(values))).get("attributes", []))


class SpanBuilder:
    """Builds the spans of a timer's regions, a flush at a time, as OTLP bytes.

    Each region is built once. Regions of an epoch wait until the epoch itself has closed, so
    that the trace's budget can choose among all of them (packed, 56 bytes each, freed when the
    epoch's spans are built); regions outside epochs go out at the next flush. Spans are written
    by `maeltrace.otel._encode` from fragments serialised once per key and thread; the compiled
    encoder does so with the GIL released.

    Args:
        run_id: the run's id (shared by every process of the run).
        process_id: unique per process and timer; every span id derives from it.
        anchor: places perf_counter readings on the wall clock.
        resource_attributes: the resource of every span.
        trace_key_id: key id of the trace key (the epoch), or None.
        budget: spans per trace, and how to sample beyond.
        user_parents: the user's OpenTelemetry span (trace id, span id) that was active when a
            root region opened, by the region's sequence number; the builder takes entries out
            as it uses them. A root region outside epochs becomes that span's child, in its
            trace, with everything inside it; an epoch keeps its own trace and links to it.
        encoder: writes the bytes; default `maeltrace.otel._encode.encoder` (compiled where
            built). Both encoders write the same bytes.
    """

    def __init__(
        self,
        run_id: str,
        process_id: str,
        anchor: ClockAnchor,
        resource_attributes: Mapping[str, object],
        trace_key_id: int | None = None,
        budget: TraceBudget | None = None,
        user_parents: dict[int, tuple[bytes, bytes]] | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        self.run_id = run_id
        self._user_parents = user_parents if user_parents is not None else {}
        self._user_traces: dict[int, bytes] = {}
        self.process_id = process_id
        self._anchor = anchor
        self._offset_ns = anchor.wall_time_unix_nano - anchor.perf_counter_ns
        # Span ids are base + seq: unique in a process, and processes' ranges of 2**64 ids
        # start at random-looking bases, so they do not meet.
        self._base = int.from_bytes(_hash(run_id, process_id, size=8), "big")
        self._resource = Resource(attributes=attributes(resource_attributes))
        self._scope = InstrumentationScope(name=SCOPE_NAME, version=__version__)
        self._resource_field = _field(1, self._resource.SerializeToString())
        self._scope_field = _field(1, self._scope.SerializeToString())
        self._json_wrapper: tuple[bytes, bytes] | None = None
        self.trace_key_id = trace_key_id
        self.budget = budget or TraceBudget()
        self._encoder = encoder or default_encoder()
        self._pending: dict[int, list[bytes]] = {}
        self._closed_traces: set[int] = set()
        self._roots: list[tuple[bytes, bytes]] = []
        self._counters = array("q")
        # Fragments per template key (key | thread << 32), protobuf and JSON.
        self._templates: tuple[dict[int, Template], dict[int, Template]] = ({}, {})
        self._trace_ids: dict[int, bytes] = {}
        self.spans_built = 0
        self.spans_dropped = 0

    # -- ids -----------------------------------------------------------------------------------

    def span_id(self, seq: int) -> bytes:
        """The span id of region ``seq`` of this process."""
        return ((self._base + seq) & _MASK).to_bytes(8, "big")

    def gpu_span_id(self, seq: int) -> bytes:
        """The span id of the device-timeline child of region ``seq``."""
        return ((self._base + seq + (1 << 63)) & _MASK).to_bytes(8, "big")

    @property
    def run_span_id(self) -> bytes:
        """The id of this process's run span."""
        return _hash(self.run_id, self.process_id, "run", size=8)

    def _trace_of(self, ordinal: int) -> bytes:
        found = self._trace_ids.get(ordinal)
        if found is None:
            found = (
                run_trace_id(self.run_id) if ordinal == NO_TRACE else trace_id(self.run_id, ordinal)
            )
            if len(self._trace_ids) < 64:  # the run's and the few epochs in flight
                self._trace_ids[ordinal] = found
        return found

    # -- encoding ------------------------------------------------------------------------------

    def encode(
        self,
        records: Records,
        failures: Mapping[int, str] | None = None,
        device_clock: str | None = None,
        *,
        json: bool = False,
    ) -> list[bytes]:
        """The spans of the newly closed regions that are ready; the rest wait for their epoch.

        Regions of an epoch become ready when the epoch itself has closed; a trace over its
        budget is sampled (`TraceBudget`). Each region is one span, a region with a device time
        two (its ``[gpu]`` child follows it).

        Args:
            records: regions not given to `encode` or `add` before (`maeltrace.Timer.records`
                with ``since``), in start order.
            failures: descriptions of failed regions, by sequence number.
            device_clock: name of the clock of device times, for the attributes.
            json: OTLP/JSON span objects (UTF-8: hex ids, 64-bit integers as strings, enums as
                integers, lowerCamelCase keys, as `maeltrace.otel._otlp_json` writes them)
                instead of serialised ``opentelemetry.proto.trace.v1.Span`` messages.

        Returns:
            One serialised span per item, for `request_bytes` or `json_line`.
        """
        enc = self._encoder
        trace_key = self.trace_key_id
        closed = self._closed_traces
        pending = self._pending
        ready: list[tuple[int, int, bytes]] = []  # (row where it became ready, ordinal, rows)
        for ordinal, first, close, rows in group_records(records, trace_key, enc):
            if ordinal == NO_TRACE or ordinal in closed:
                ready.append((first, ordinal, rows))
            elif close >= 0:
                closed.add(ordinal)
                ready.append((close, ordinal, rows))
            else:
                pending.setdefault(ordinal, []).append(rows)
        ready.sort(key=lambda item: item[0])
        batches = [(ordinal, [rows]) for _, ordinal, rows in ready]
        for ordinal in [o for o in pending if o in closed]:
            waiting = pending.pop(ordinal)
            for o, parts in batches:
                if o == ordinal:
                    parts[:0] = waiting
                    break
            else:
                batches.append((ordinal, waiting))
        need = len(records.keys)
        if len(self._counters) < need:
            self._counters.extend([0] * (need - len(self._counters)))
        out: list[bytes] = []
        for ordinal, parts in batches:
            rows = enc.sort_rows(parts[0] if len(parts) == 1 else b"".join(parts))
            del parts[:]  # an epoch's staged rows are freed as soon as they are joined
            rows, sampled = self._sample(rows)
            out += self._encode_rows(
                ordinal, rows, records, failures or {}, device_clock, sampled, json
            )
        self.spans_built += len(out)
        return out

    def _encode_rows(
        self,
        ordinal: int,
        rows: bytes,
        records: Records,
        failures: Mapping[int, str],
        device_clock: str | None,
        sampled: tuple[int, int] | None,
        json: bool,
    ) -> list[bytes]:
        enc = self._encoder
        templates = self._templates[json]
        for key in enc.template_keys(rows) - templates.keys():
            templates[key] = self._template(key, records, json)
        clock = device_clock or "gpu"
        if json:
            gpu_clock = b"," + _attribute_json({semconv.MAELTRACE_GPU_CLOCK: clock})
        else:
            gpu_clock = _attribute_fields({semconv.MAELTRACE_GPU_CLOCK: clock})
        trace = self._trace_of(ordinal)
        specials = self._specials(
            ordinal, trace, rows, failures, sampled, json, _region_attributes(records)
        )
        return enc.encode(
            rows,
            json,
            trace,
            self.run_span_id if ordinal == NO_TRACE else b"",
            self._base,
            self._offset_ns,
            self._counters,
            templates,
            specials,
            gpu_clock,
        )

    def _specials(
        self,
        ordinal: int,
        trace: bytes,
        rows: bytes,
        failures: Mapping[int, str],
        sampled: tuple[int, int] | None,
        json: bool,
        extras: Mapping[int, dict[str, object]],
    ) -> list[Special]:
        """The rows that the encoder's common rules do not cover: epochs, failed regions,
        regions under a span of the user's, and regions with attributes of their own
        (``extras``, by sequence number: counts and peak memory)."""
        user_parents, user_traces = self._user_parents, self._user_traces
        trace_key = (
            self.trace_key_id if ordinal != NO_TRACE and self.trace_key_id is not None else -1
        )
        candidates: Sequence[int] = self._encoder.special_rows(rows, trace_key, bool(user_parents))
        if not candidates and not (ordinal == NO_TRACE and user_traces) and not extras:
            return []
        values = array("q")
        values.frombytes(rows)
        if extras:
            seqs = values[R_SEQ::ROW_FIELDS]
            own = {i for i, seq in enumerate(seqs) if seq in extras}
            candidates = sorted(own.union(candidates))
        if ordinal == NO_TRACE and (
            user_traces or any(values[i * ROW_FIELDS + R_SEQ] in user_parents for i in candidates)
        ):
            # Regions under a span of the user's, and everything inside them, take its trace:
            # every row is looked at.
            candidates = range(len(values) // ROW_FIELDS)
        out: list[Special] = []
        for i in candidates:
            seq, parent, _, end, kts, _, _ = values[i * ROW_FIELDS : (i + 1) * ROW_FIELDS]
            user = user_parents.pop(seq, None) if parent == NO_PARENT else None
            trace_override: bytes | None = None
            parent_override: bytes | None = None
            links: list[tuple[bytes, bytes]] = []
            extra: dict[str, object] = dict(extras.get(seq, ())) if extras else {}
            if ordinal == NO_TRACE and (user is not None or parent in user_traces):
                # Under a span of the user's: its trace, not the run's.
                trace_override = user[0] if user is not None else user_traces[parent]
                user_traces[seq] = trace_override
                if user is not None:
                    parent_override = user[1]
            elif user is not None:  # an epoch keeps its trace and links to the user's span
                links.append(user)
            if kts & KEY_MASK == trace_key:
                parent_override = b""
                self._roots.append((trace, self.span_id(seq)))
                extra[semconv.MAELTRACE_TRACE] = ordinal
                if parent != NO_PARENT:  # an enclosing region lives in the run's trace
                    links.append((run_trace_id(self.run_id), self.span_id(parent)))
                if sampled is not None:
                    extra[semconv.MAELTRACE_SAMPLING_DROPPED_UNITS] = sampled[0]
                    extra[semconv.MAELTRACE_SAMPLING_DROPPED_REGIONS] = sampled[1]
            failure = failures.get(seq, "failed") if kts >> STATUS_SHIFT != STATUS_OK else None
            plain = trace_override is None and parent_override is None
            if plain and not links and not extra and failure is None:
                continue
            tail = Span(links=[Span.Link(trace_id=t, span_id=s) for t, s in links])
            if failure is not None:
                kind, _, message = failure.partition(": ")
                tail.status.code = Status.STATUS_CODE_ERROR
                tail.status.message = failure
                event = tail.events.add()
                event.name = semconv.EXCEPTION_EVENT_NAME
                event.time_unix_nano = (end + self._offset_ns) & _MASK
                event.attributes.extend(
                    attributes(
                        {semconv.EXCEPTION_TYPE: kind, semconv.EXCEPTION_MESSAGE: message or kind}
                    )
                )
            if json:
                fields = _json_object(tail)
                tail_bytes = b"," + _inner(fields) if fields else b""
                extra_bytes = b"," + _attribute_json(extra) if extra else b""
            else:
                tail_bytes = tail.SerializeToString()
                extra_bytes = _attribute_fields(extra) if extra else b""
            out.append((i, trace_override, parent_override, extra_bytes, tail_bytes))
        return out

    def _template(self, key: int, records: Records, json: bool) -> Template:
        """The fragments every span of a key on a thread shares."""
        name = str(records.keys[key & KEY_MASK])
        values: dict[str, object] = {semconv.MAELTRACE_KEY: name}
        if records.threads:
            info = records.threads[key >> THREAD_SHIFT]
            values[semconv.THREAD_NAME] = info.name
            if info.native_id is not None:
                values[semconv.THREAD_ID] = info.native_id
        internal = Span.SpanKind.SPAN_KIND_INTERNAL
        head = Span(name=name, kind=internal)
        gpu_head = Span(name=name + GPU_SUFFIX, kind=internal)
        if json:
            return (
                _inner(_json_object(head)),
                _attribute_json(values),
                _inner(_json_object(gpu_head)),
                _attribute_json({semconv.MAELTRACE_KEY: name}),
            )
        return (
            head.SerializeToString(),
            _attribute_fields(values),
            gpu_head.SerializeToString(),
            _attribute_fields({semconv.MAELTRACE_KEY: name}),
        )

    def _sample(self, rows: bytes) -> tuple[bytes, tuple[int, int] | None]:
        """Keeps a trace within budget by choosing whole units (children of its root, each with
        its subtree); returns the rows kept and (units dropped, regions dropped) if any."""
        values = array("q")
        values.frombytes(rows)
        count = len(values) // ROW_FIELDS
        devices = values[R_DEVICE::ROW_FIELDS]
        if count + len(devices) - devices.count(NO_DEVICE_TIME) <= self.budget.max_spans:
            return rows, None
        columns = [values[f::ROW_FIELDS] for f in range(ROW_FIELDS)]
        unpacked: list[_Row] = list(zip(*columns, strict=True))
        kept, note = self._choose(unpacked)
        out = array("q")
        for row in kept:
            out.extend(row)
        return out.tobytes(), note

    def _choose(self, rows: list[_Row]) -> tuple[list[_Row], tuple[int, int]]:
        sizes = [2 if r[R_DEVICE] != NO_DEVICE_TIME else 1 for r in rows]
        root_seqs = {r[R_SEQ] for r in rows if r[R_KTS] & KEY_MASK == self.trace_key_id}
        seqs = {r[R_SEQ] for r in rows}
        unit_of: dict[int, int] = {}
        units: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            seq, parent = r[R_SEQ], r[R_PARENT]
            if seq in root_seqs or parent not in seqs or parent in root_seqs:
                unit = seq  # the root, a child of it, or a region whose parent went earlier
            else:
                unit = unit_of.get(parent, seq)
            unit_of[seq] = unit
            units.setdefault(unit, []).append(i)
        keep = set(root_seqs)
        budget = self.budget.max_spans - sum(sizes[i] for u in keep for i in units.get(u, []))
        order = [u for u in units if u not in keep]

        def duration(unit: int) -> int:
            first = rows[units[unit][0]]
            return first[R_END] - first[R_START]

        slowest = sorted(order, key=duration)[-self.budget.slowest :] if self.budget.slowest else []
        for unit in order[: self.budget.first] + slowest:
            if unit not in keep:
                keep.add(unit)
                budget -= sum(sizes[i] for i in units[unit])
        rest = [u for u in order if u not in keep]
        if rest and budget > 0:
            mean = sum(sizes[i] for u in rest for i in units[u]) / len(rest)
            step = max(1, math.ceil(len(rest) * mean / budget))
            for unit in rest[::step]:
                size = sum(sizes[i] for i in units[unit])
                if size > budget:
                    break
                keep.add(unit)
                budget -= size
        kept = sorted((rows[i] for u in keep for i in units.get(u, [])), key=lambda r: r[R_SEQ])
        dropped = len(rows) - len(kept)
        self.spans_dropped += dropped
        return kept, (len(units) - len(keep & units.keys()), dropped)

    def encode_run_span(
        self, end_perf_ns: int, stats: Mapping[str, object] | None = None, *, json: bool = False
    ) -> bytes:
        """This process's run span: from the timer's start to ``end_perf_ns``, linking every
        epoch built so far, with the run's exact statistics as attributes; encoded as `encode`
        encodes spans."""
        span = Span(
            trace_id=run_trace_id(self.run_id),
            span_id=self.run_span_id,
            name=RUN_SPAN_NAME,
            kind=Span.SpanKind.SPAN_KIND_INTERNAL,
            start_time_unix_nano=self._anchor.wall_time_unix_nano,
            end_time_unix_nano=end_perf_ns + self._offset_ns,
        )
        for trace, span_id in self._roots:
            link = span.links.add()
            link.trace_id = trace
            link.span_id = span_id
        values: dict[str, object] = {
            semconv.MAELTRACE_RUN_ID: self.run_id,
            semconv.MAELTRACE_SPANS_BUILT: self.spans_built,
            semconv.MAELTRACE_REGIONS_SAMPLED_OUT: self.spans_dropped,
        }
        values.update(stats or {})
        span.attributes.extend(attributes(values))
        self.spans_built += 1
        return _dumps(_json_object(span)) if json else span.SerializeToString()

    # -- wrapping ------------------------------------------------------------------------------

    def request_bytes(self, spans: Sequence[bytes]) -> bytes:
        """A serialised ``ExportTraceServiceRequest``: one ``ResourceSpans`` with this builder's
        resource and one ``ScopeSpans`` (scope ``maeltrace`` and its version) holding the given
        protobuf spans, in order.

        Its size is exactly ``request_size(sum(span_field_size(len(s)) for s in spans))``; that
        is ``len(request_bytes([]))`` plus each span's `span_field_size`, plus at most 6 bytes
        as the wrapper's three length prefixes grow (4 MiB of spans: 6 bytes).
        """
        return self._encoder.request(spans, self._resource_field, self._scope_field)

    def request_size(self, payload: int) -> int:
        """The exact size of `request_bytes` of spans whose `span_field_size` add up to
        ``payload``."""
        scope_spans = len(self._scope_field) + payload
        resource_spans = len(self._resource_field) + span_field_size(scope_spans)
        return span_field_size(resource_spans)

    def json_line(self, spans: Sequence[bytes]) -> bytes:
        """One OTLP JSON line (``TracesData``: resourceSpans, scopeSpans, spans) holding the given
        JSON spans, ending in ``b"\\n"``; it reads back with
        `maeltrace.otel._otlp_json.traces_from_json_line` and the Collector's ``otlpjsonfile``
        receiver, and equals ``traces_to_json_line`` of the same spans.

        Its size is exactly ``len(json_line([])) + sum(map(len, spans)) + max(len(spans) - 1,
        0)`` (a comma between spans).
        """
        if self._json_wrapper is None:
            data = TracesData()
            rs = data.resource_spans.add()
            rs.resource.CopyFrom(self._resource)
            rs.scope_spans.add().scope.CopyFrom(self._scope)
            obj = json_format.MessageToDict(data, use_integers_for_enums=True)
            rs_obj = obj["resourceSpans"][0]
            prefix = b'{"resourceSpans":[{"resource":' + _dumps(rs_obj["resource"])
            prefix += b',"scopeSpans":[{"scope":' + _dumps(rs_obj["scopeSpans"][0]["scope"])
            self._json_wrapper = (prefix + b',"spans":[', b"]}]}]}\n")
        return self._encoder.json_line(spans, *self._json_wrapper)

    # -- protobuf messages (older callers) ----------------------------------------------------

    def new_message(self) -> ResourceSpans:
        """An empty message under this timer's resource and scope, for `add` to fill."""
        return ResourceSpans(resource=self._resource, scope_spans=[ScopeSpans(scope=self._scope)])

    def add(
        self,
        out: ResourceSpans,
        records: Records,
        failures: Mapping[int, str] | None = None,
        device_clock: str | None = None,
    ) -> int:
        """Adds to ``out`` (a message from `new_message`) the spans `encode` builds; returns
        their number."""
        spans = self.encode(records, failures, device_clock)
        if spans:
            out.scope_spans[0].MergeFromString(self._encoder.span_fields(spans))
        return len(spans)

    def add_run_span(
        self, out: ResourceSpans, end_perf_ns: int, stats: Mapping[str, object] | None = None
    ) -> None:
        """Adds this process's run span (`encode_run_span`) to ``out``."""
        out.scope_spans[0].spans.add().MergeFromString(self.encode_run_span(end_perf_ns, stats))


def _region_attributes(records: Records) -> dict[int, dict[str, object]]:
    """The attributes only some regions have, by sequence number: the work they counted
    (`maeltrace.Records.work`) and their peak device memory."""
    out: dict[int, dict[str, object]] = {}
    for seq, (items, tokens) in records.work().items():
        values = out.setdefault(seq, {})
        if items:
            values[semconv.MAELTRACE_ITEMS] = items
        if tokens:
            values[semconv.MAELTRACE_TOKENS] = tokens
    for seq, peak in records.peak_memory.items():
        out.setdefault(seq, {})[semconv.MAELTRACE_GPU_MEMORY_PEAK] = peak
    return {seq: values for seq, values in out.items() if values}


def span_field_size(size: int) -> int:
    """Bytes that a span of ``size`` bytes takes in a request: its field tag, its length and
    itself."""
    return 1 + len(varint(size)) + size


def _field(number: int, value: bytes) -> bytes:
    return bytes([number << 3 | 2]) + varint(len(value)) + value
