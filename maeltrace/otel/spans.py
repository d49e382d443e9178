"""Regions become OpenTelemetry spans, after the fact, as OTLP protobuf messages.

Nothing here runs on the hot path: a `SpanBuilder` reads closed regions (`maeltrace.Records`)
at flush time and builds ``opentelemetry.proto`` messages directly, with explicit start and end
times on the wall clock (through the timer's `maeltrace.clock.ClockAnchor`). Building SDK span
objects would cost tens of microseconds per span; these cost a few.

Trace shape: every region of the trace key (the epoch) starts a trace whose id is derived from
(run id, epoch ordinal), so every rank of a run puts the same epoch into the same trace without
talking. Regions outside any epoch go to the run's trace, under a ``run`` span that links the
epochs. A trace keeps at most `TraceBudget.max_spans` spans: beyond it, the epoch's children
(batches, IO waits, ... with everything inside them) are sampled: the first ones, the slowest
ones, and every k-th. The statistics never sample: they are computed over every region.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from maeltrace._version import __version__
from maeltrace.clock import ClockAnchor
from maeltrace.records import NO_DEVICE_TIME, NO_PARENT, NO_TRACE, STATUS_OK, Records

__all__ = ["SCOPE_NAME", "SpanBuilder", "TraceBudget", "run_trace_id", "trace_id"]

SCOPE_NAME = "maeltrace"
"""Instrumentation scope of every span."""

RUN_SPAN_NAME = "run"
"""Name of the span that covers a process's whole run and links its epochs."""

GPU_SUFFIX = " [gpu]"
"""Appended to a region's name for the child span placed on the device timeline."""


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


# A region as the builder keeps it: (key_id, seq, parent, start, end, status, trace, device_ns,
# device_start, thread); tuples, as an epoch's regions may wait in memory for its end.
_Row = tuple[int, int, int, int, int, int, int, int, int, int]
KEY, SEQ, PARENT, START, END, STATUS, TRACE, DEVICE, DEVICE_START, THREAD = range(10)

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


class SpanBuilder:
    """Builds the spans of a timer's regions, a flush at a time.

    Each region is built once. Regions of an epoch wait until the epoch itself has closed, so
    that the trace's budget can choose among all of them; regions outside epochs go out at the
    next flush. Spans are built in place in the message that is exported, from a serialised
    template per key and thread (the attributes those share), a few microseconds each.

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
        self.trace_key_id = trace_key_id
        self.budget = budget or TraceBudget()
        self._pending: dict[int, list[_Row]] = {}
        self._closed_traces: set[int] = set()
        self._roots: list[tuple[bytes, bytes]] = []
        self._index: dict[int, int] = {}
        self._templates: dict[tuple[int, int], bytes] = {}
        self.spans_built = 0
        self.spans_dropped = 0

    # -- ids -----------------------------------------------------------------------------------

    def span_id(self, seq: int) -> bytes:
        """The span id of region ``seq`` of this process."""
        return ((self._base + seq) & _MASK).to_bytes(8, "big") or b"\x01"

    def gpu_span_id(self, seq: int) -> bytes:
        """The span id of the device-timeline child of region ``seq``."""
        return ((self._base + seq + (1 << 63)) & _MASK).to_bytes(8, "big")

    @property
    def run_span_id(self) -> bytes:
        """The id of this process's run span."""
        return _hash(self.run_id, self.process_id, "run", size=8)

    def _trace_of(self, ordinal: int) -> bytes:
        return run_trace_id(self.run_id) if ordinal == NO_TRACE else trace_id(self.run_id, ordinal)

    # -- building ------------------------------------------------------------------------------

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
        """Builds into ``out`` the spans of newly closed regions that are ready; the rest wait
        for their epoch. Returns the number of spans built.

        Args:
            out: a message from `new_message`.
            records: regions not given to `add` before (`maeltrace.Timer.records` with
                ``since``), in start order.
            failures: descriptions of failed regions, by sequence number.
            device_clock: name of the clock of device times, for the attributes.
        """
        trace_key = self.trace_key_id
        closed = self._closed_traces
        ready: dict[int, list[_Row]] = {}
        pending = self._pending
        for row in zip(
            records.key_id,
            records.seq,
            records.parent_seq,
            records.start_ns,
            records.end_ns,
            records.status,
            records.trace,
            records.device_ns,
            records.device_start_ns,
            records.thread,
            strict=True,
        ):
            ordinal = row[TRACE]
            if ordinal != NO_TRACE and row[KEY] == trace_key:
                closed.add(ordinal)
            (ready if ordinal == NO_TRACE or ordinal in closed else pending).setdefault(
                ordinal, []
            ).append(row)
        for ordinal in [o for o in pending if o in closed]:
            ready.setdefault(ordinal, []).extend(pending.pop(ordinal))
        context = _Context(records, failures or {}, device_clock or "gpu")
        built = 0
        spans = out.scope_spans[0].spans
        for ordinal, rows in ready.items():
            rows.sort(key=lambda r: r[SEQ])
            kept, note = self._sample(rows)
            built += self._emit(spans, ordinal, kept, context, note)
        self.spans_built += built
        return built

    def _sample(self, rows: list[_Row]) -> tuple[list[_Row], tuple[int, int] | None]:
        """Keeps a trace within budget by choosing whole units (children of its root, each with
        its subtree); returns the rows kept and (units dropped, regions dropped) if any."""
        sizes = [2 if r[DEVICE] != NO_DEVICE_TIME else 1 for r in rows]
        if sum(sizes) <= self.budget.max_spans:
            return rows, None
        root_seqs = {r[SEQ] for r in rows if r[KEY] == self.trace_key_id}
        seqs = {r[SEQ] for r in rows}
        unit_of: dict[int, int] = {}
        units: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            seq, parent = r[SEQ], r[PARENT]
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
            return first[END] - first[START]

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
        kept = sorted((rows[i] for u in keep for i in units.get(u, [])), key=lambda r: r[SEQ])
        dropped = len(rows) - len(kept)
        self.spans_dropped += dropped
        return kept, (len(units) - len(keep & units.keys()), dropped)

    def _template(self, key_id: int, thread: int, context: _Context) -> bytes:
        """The serialised part of a span that every region of a key on a thread shares."""
        template = self._templates.get((key_id, thread))
        if template is None:
            name = str(context.records.keys[key_id])
            span = Span(name=name, kind=Span.SpanKind.SPAN_KIND_INTERNAL)
            values: dict[str, object] = {"maeltrace.key": name}
            if context.records.threads:
                info = context.records.threads[thread]
                values["thread.name"] = info.name
                if info.native_id is not None:
                    values["thread.id"] = info.native_id
            span.attributes.extend(attributes(values))
            template = self._templates[(key_id, thread)] = span.SerializeToString()
        return template

    def _emit(
        self,
        spans: Any,
        ordinal: int,
        rows: list[_Row],
        context: _Context,
        sampled: tuple[int, int] | None,
    ) -> int:
        trace = self._trace_of(ordinal)
        offset = self._offset_ns
        base = self._base
        index = self._index
        run_parent = self.run_span_id if ordinal == NO_TRACE else b""
        user_parents, user_traces = self._user_parents, self._user_traces
        built = 0
        for r in rows:
            key_id, seq, parent = r[KEY], r[SEQ], r[PARENT]
            span = spans.add()
            span.MergeFromString(self._template(key_id, r[THREAD], context))
            user = user_parents.pop(seq, None) if parent == NO_PARENT else None
            if ordinal == NO_TRACE and (user is not None or parent in user_traces):
                # Under a span of the user's: its trace, not the run's.
                user_trace = user[0] if user is not None else user_traces[parent]
                user_traces[seq] = user_trace
                span.trace_id = user_trace
                if user is not None:
                    span.parent_span_id = user[1]
            else:
                span.trace_id = trace
                if user is not None:  # an epoch keeps its trace and links to the user's span
                    link = span.links.add()
                    link.trace_id, link.span_id = user
            span.span_id = ((base + seq) & _MASK).to_bytes(8, "big")
            span.start_time_unix_nano = r[START] + offset
            span.end_time_unix_nano = r[END] + offset
            n = index.get(key_id, 0)
            index[key_id] = n + 1
            attrs = span.attributes
            kv = attrs.add()
            kv.key = "maeltrace.index"
            kv.value.int_value = n
            kv = attrs.add()
            kv.key = "maeltrace.cpu.duration_ns"
            kv.value.int_value = r[END] - r[START]
            if key_id == self.trace_key_id and ordinal != NO_TRACE:
                self._root(span, trace, parent, ordinal, sampled)
            elif parent != NO_PARENT:
                span.parent_span_id = ((base + parent) & _MASK).to_bytes(8, "big")
            elif run_parent and user is None:
                span.parent_span_id = run_parent
            if r[STATUS] != STATUS_OK:
                self._failed(span, context.failures.get(seq, "failed"))
            built += 1
            if r[DEVICE] != NO_DEVICE_TIME:
                attrs.extend(
                    attributes(
                        {
                            "maeltrace.gpu.duration_ns": r[DEVICE],
                            "maeltrace.gpu.clock": context.device_clock,
                        }
                    )
                )
                self._gpu_span(spans.add(), span, r, context)
                built += 1
        return built

    def _root(
        self,
        span: Span,
        trace: bytes,
        parent: int,
        ordinal: int,
        sampled: tuple[int, int] | None,
    ) -> None:
        self._roots.append((trace, span.span_id))
        values: dict[str, object] = {"maeltrace.trace": ordinal}
        if parent != NO_PARENT:  # an enclosing region lives in the run's trace: link to it
            link = span.links.add()
            link.trace_id = run_trace_id(self.run_id)
            link.span_id = self.span_id(parent)
        if sampled is not None:
            values["maeltrace.sampling.dropped_units"] = sampled[0]
            values["maeltrace.sampling.dropped_regions"] = sampled[1]
        span.attributes.extend(attributes(values))

    @staticmethod
    def _failed(span: Span, description: str) -> None:
        kind, _, message = description.partition(": ")
        span.status.code = Status.STATUS_CODE_ERROR
        span.status.message = description
        event = span.events.add()
        event.name = "exception"
        event.time_unix_nano = span.end_time_unix_nano
        event.attributes.extend(
            attributes({"exception.type": kind, "exception.message": message or kind})
        )

    def _gpu_span(self, span: Span, parent: Span, r: _Row, context: _Context) -> None:
        start = r[DEVICE_START] + self._offset_ns
        span.trace_id = parent.trace_id
        span.span_id = self.gpu_span_id(r[SEQ])
        span.parent_span_id = parent.span_id
        span.name = parent.name + GPU_SUFFIX
        span.kind = Span.SpanKind.SPAN_KIND_INTERNAL
        span.start_time_unix_nano = start
        span.end_time_unix_nano = start + r[DEVICE]
        span.attributes.extend(
            attributes(
                {
                    "maeltrace.key": parent.name,
                    "maeltrace.gpu.duration_ns": r[DEVICE],
                    "maeltrace.gpu.clock": context.device_clock,
                }
            )
        )

    def add_run_span(
        self, out: ResourceSpans, end_perf_ns: int, stats: Mapping[str, object] | None = None
    ) -> None:
        """Adds this process's run span to ``out``: from the timer's start to ``end_perf_ns``,
        linking every epoch built so far, with the run's exact statistics as attributes."""
        span = out.scope_spans[0].spans.add()
        span.trace_id = run_trace_id(self.run_id)
        span.span_id = self.run_span_id
        span.name = RUN_SPAN_NAME
        span.kind = Span.SpanKind.SPAN_KIND_INTERNAL
        span.start_time_unix_nano = self._anchor.wall_time_unix_nano
        span.end_time_unix_nano = end_perf_ns + self._offset_ns
        for trace, span_id in self._roots:
            link = span.links.add()
            link.trace_id = trace
            link.span_id = span_id
        values: dict[str, object] = {
            "maeltrace.run_id": self.run_id,
            "maeltrace.spans_built": self.spans_built,
            "maeltrace.regions_sampled_out": self.spans_dropped,
        }
        values.update(stats or {})
        span.attributes.extend(attributes(values))
        self.spans_built += 1


@dataclass(frozen=True, slots=True)
class _Context:
    records: Records
    failures: Mapping[int, str]
    device_clock: str
