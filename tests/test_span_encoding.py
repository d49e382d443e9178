"""The wire encoder: `SpanBuilder.encode` writes, byte for byte, what the message-building
builder of maeltrace 0.x built (kept below as `ReferenceSpanBuilder`), compiled and in Python,
as protobuf and as OTLP JSON."""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import (
    ResourceSpans,
    ScopeSpans,
    Span,
    Status,
    TracesData,
)

from maeltrace import Timer, TimeType
from maeltrace._clock import ClockAnchor
from maeltrace._version import __version__
from maeltrace.otel import _encode as encode
from maeltrace.otel._otlp_json import traces_from_json_line, traces_to_json_line
from maeltrace.otel._resource import resource
from maeltrace.otel.spans import (
    GPU_SUFFIX,
    RUN_SPAN_NAME,
    SCOPE_NAME,
    SpanBuilder,
    TraceBudget,
    attributes,
    run_trace_id,
    span_field_size,
    trace_id,
)
from maeltrace.records import NO_DEVICE_TIME, NO_PARENT, NO_TRACE, STATUS_OK, Records
from tests.fakes.cuda import fake_gpu_clock

try:
    from maeltrace import _spanenc
except ImportError:  # not built here: the Python encoder is tested alone
    _spanenc = None  # type: ignore[assignment]

ENCODERS = {"python": encode.python_encoder}
if _spanenc is not None:
    ENCODERS["compiled"] = _spanenc

Scenario = Callable[[Timer], Iterator[None]]
"""Records regions into a timer, yielding wherever the export thread would read new ones."""


def _epochs(tmr: Timer, epochs: int = 3, batches: int = 5) -> Iterator[None]:
    for e in range(epochs):
        with tmr.region(TimeType.EPOCH):
            for b in tmr.iterate(range(batches)):
                with tmr.region(TimeType.BATCH), tmr.region(TimeType.FORWARD):
                    pass
                if b == 1 and e != 1:
                    yield  # half an epoch closed: its regions wait for the epoch's end
        yield


def _around_epochs(tmr: Timer) -> Iterator[None]:
    with tmr.region("setup"), tmr.region("load"):
        pass
    yield
    with tmr.region("fit"):
        yield from _epochs(tmr, epochs=2, batches=2)
    with tmr.region("save"):
        pass
    yield


def _no_epochs(tmr: Timer) -> Iterator[None]:
    for step in range(40):
        with tmr.region("step"), tmr.region("forward"):
            pass
        if step % 13 == 0:
            yield
    yield


def _gpu(tmr: Timer) -> Iterator[None]:
    with tmr.region(TimeType.EPOCH, gpu=True):
        for _ in range(4):
            with tmr.region("step", gpu=True), tmr.region("inner"):
                pass
        yield
    with tmr.region("eval", gpu=True):
        pass
    yield


def _failures(tmr: Timer) -> Iterator[None]:
    with pytest.raises(KeyError), tmr.region("load"):
        raise KeyError("shard-7")
    with tmr.region(TimeType.EPOCH):
        with tmr.region(TimeType.BATCH):
            pass
        with pytest.raises(ValueError, match="colon"), tmr.region("bad"):
            raise ValueError('no: colon, "quoted" ✓\n')
    yield
    with pytest.raises(RuntimeError), tmr.region(TimeType.EPOCH), tmr.region("x"):
        raise RuntimeError
    yield


def _sampled(tmr: Timer) -> Iterator[None]:
    yield from _epochs(tmr, epochs=2, batches=150)


def _sampled_gpu(tmr: Timer) -> Iterator[None]:
    with tmr.region(TimeType.EPOCH):
        for i in range(120):
            with tmr.region(TimeType.BATCH, gpu=i % 3 == 0), tmr.region("inner"):
                pass
    yield


def _threads(tmr: Timer) -> Iterator[None]:
    def work() -> None:
        for _ in range(3):
            with tmr.region("worker"), tmr.region("read"):
                pass

    with tmr.region(TimeType.EPOCH):
        threads = [threading.Thread(target=work, name=f"loader-{i}") for i in range(2)]
        for thread in threads:
            thread.start()
        with tmr.region(TimeType.BATCH):
            pass
        for thread in threads:
            thread.join()
    yield
    work()
    yield


def _odd_names(tmr: Timer) -> Iterator[None]:
    for name in ('naïve "quoted" ✓', "tab\tnew\nline\x01", "back\\slash", "\u2028"):
        with tmr.region(name):
            pass
    yield


SCENARIOS: dict[str, tuple[Scenario, dict[str, Any]]] = {
    "epochs": (_epochs, {}),
    "around_epochs": (_around_epochs, {}),
    "no_epochs": (_no_epochs, {}),
    "gpu": (_gpu, {"device": fake_gpu_clock}),
    "failures": (_failures, {}),
    "sampled": (_sampled, {"budget": TraceBudget(max_spans=100, first=5, slowest=5)}),
    "sampled_gpu": (
        _sampled_gpu,
        {"device": fake_gpu_clock, "budget": TraceBudget(max_spans=60, first=3, slowest=4)},
    ),
    "threads": (_threads, {}),
    "odd_names": (_odd_names, {}),
    "user_parents": (_around_epochs, {"user": True}),
    "user_parents_no_epochs": (_no_epochs, {"user": True}),
}


@dataclass
class _Built:
    """What one scenario made: per read, the reference message and the new encoders' spans."""

    reference: list[ResourceSpans]
    spans: list[list[bytes]]
    json_spans: list[list[bytes]]
    builder: SpanBuilder
    json_builder: SpanBuilder
    reference_builder: ReferenceSpanBuilder
    end_ns: int


def _user_parent(seq: int) -> tuple[bytes, bytes]:
    digest = hashlib.sha256(str(seq).encode()).digest()
    return digest[:16], digest[16:24]


def _build(name: str, enc: encode.Encoder) -> _Built:
    return _build_all(name, [enc])[0]


def _build_all(name: str, encoders: list[encode.Encoder]) -> list[_Built]:
    """Runs scenario ``name`` once, building its spans with the reference and with each
    encoder, from the same records."""
    scenario, options = SCENARIOS[name]
    tmr = Timer(device=options.get("device"))
    users: list[dict[int, tuple[bytes, bytes]]] = [{} for _ in range(1 + 2 * len(encoders))]

    def builder(cls: Any, users: dict[int, tuple[bytes, bytes]], **extra: Any) -> Any:
        return cls(
            run_id="run-1",
            process_id="p1",
            anchor=tmr.anchor,
            resource_attributes=resource("run-1"),
            budget=options.get("budget"),
            user_parents=users,
            **extra,
        )

    reference = builder(ReferenceSpanBuilder, users[0])
    outs = [
        _Built(
            [],
            [],
            [],
            builder(SpanBuilder, users[1 + 2 * i], encoder=enc),
            builder(SpanBuilder, users[2 + 2 * i], encoder=enc),
            reference,
            0,
        )
        for i, enc in enumerate(encoders)
    ]
    for _ in scenario(tmr):
        tmr._flush_device()
        records, failures, clock = tmr._read_new()
        if options.get("user"):
            for seq, parent, key in zip(
                records.seq, records.parent_seq, records.key_id, strict=True
            ):
                if parent == NO_PARENT and records.keys[key] != "save":
                    for found in users:
                        found[seq] = _user_parent(seq)
        key = tmr._key_ids.get(TimeType.EPOCH)
        reference.trace_key_id = key
        message = reference.new_message()
        reference.add(message, records, failures, clock)
        for out in outs:
            out.builder.trace_key_id = out.json_builder.trace_key_id = key
            out.reference.append(message)
            out.spans.append(out.builder.encode(records, failures, clock))
            out.json_spans.append(out.json_builder.encode(records, failures, clock, json=True))
            if len(records):
                out.end_ns = max(out.end_ns, max(records.end_ns))
    assert all(found == users[0] for found in users)  # each took out the parents it used
    return outs


@pytest.fixture(params=sorted(ENCODERS))
def encoder_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


class TestSameSpansAsTheMessageBuilder:
    @pytest.mark.parametrize("scenario", sorted(SCENARIOS))
    def test_protobuf_requests_are_byte_identical(self, scenario: str, encoder_name: str) -> None:
        built = _build(scenario, ENCODERS[encoder_name])
        assert any(built.spans), "the scenario built nothing"
        for message, spans in zip(built.reference, built.spans, strict=True):
            expected = ExportTraceServiceRequest(resource_spans=[message])
            got = built.builder.request_bytes(spans)
            assert ExportTraceServiceRequest.FromString(got) == expected
            assert got == expected.SerializeToString()
        assert built.builder.spans_built == built.reference_builder.spans_built
        assert built.builder.spans_dropped == built.reference_builder.spans_dropped

    @pytest.mark.parametrize("scenario", sorted(SCENARIOS))
    def test_json_lines_equal_the_protobuf_spans(self, scenario: str, encoder_name: str) -> None:
        built = _build(scenario, ENCODERS[encoder_name])
        for message, spans in zip(built.reference, built.json_spans, strict=True):
            line = built.json_builder.json_line(spans)
            assert line.endswith(b"\n") and line.count(b"\n") == 1
            data = traces_from_json_line(line.decode())
            assert list(data.resource_spans[0].scope_spans[0].spans) == list(
                message.scope_spans[0].spans
            )
            if spans:  # traces_to_json_line leaves an empty span list out
                assert (
                    line
                    == (traces_to_json_line(TracesData(resource_spans=[message])) + "\n").encode()
                )

    @pytest.mark.parametrize("scenario", ["around_epochs", "sampled", "user_parents"])
    def test_the_run_span_is_the_same(self, scenario: str, encoder_name: str) -> None:
        built = _build(scenario, ENCODERS[encoder_name])
        stats = {"maeltrace.epoch.mean_s": 0.25, "flag": True, "name": "x", "n": 3}
        message = built.reference_builder.new_message()
        built.reference_builder.add_run_span(message, built.end_ns, stats)
        (expected,) = message.scope_spans[0].spans
        assert Span.FromString(built.builder.encode_run_span(built.end_ns, stats)) == expected
        line = built.json_builder.json_line(
            [built.json_builder.encode_run_span(built.end_ns, stats, json=True)]
        )
        (got,) = traces_from_json_line(line.decode()).resource_spans[0].scope_spans[0].spans
        assert got == expected


@pytest.mark.skipif(_spanenc is None, reason="the compiled encoder is not built here")
class TestCompiledEqualsPython:
    @pytest.mark.parametrize("scenario", sorted(SCENARIOS))
    def test_every_span_is_the_same_bytes(self, scenario: str) -> None:
        compiled, python = _build_all(scenario, [ENCODERS["compiled"], ENCODERS["python"]])
        assert compiled.spans == python.spans
        assert compiled.json_spans == python.json_spans


class TestMergeRecords:
    @pytest.mark.parametrize("name", sorted(ENCODERS))
    def test_the_columns_are_those_of_records_merge(self, name: str) -> None:
        tmr = Timer(device=fake_gpu_clock)
        for _ in _threads(tmr):
            pass
        with tmr.region("gpu", gpu=True), tmr.region("inner"):
            pass
        tmr._flush_device()
        logs = tmr._recorder.snapshot([])
        keys = tuple(tmr._keys)
        device = tmr._device_times.by_seq()
        assert device and len(logs) == 3
        expected = Records.merge(logs, keys, device, 123)
        got = encode.merge_records(logs, keys, device, 123, ENCODERS[name])
        assert got == expected
        assert list(got.seq) == sorted(got.seq)
        assert encode.merge_records([], (), {}, 0, ENCODERS[name]) == Records.merge([], (), {}, 0)


class TestSizes:
    def test_a_request_is_its_wrapper_plus_each_span_field(self) -> None:
        built = _build("epochs", encode.python_encoder)
        builder = built.builder
        spans = [s for batch in built.spans for s in batch]
        empty = len(builder.request_bytes([]))
        assert empty == builder.request_size(0)
        for count in (1, 2, len(spans)):
            payload = sum(span_field_size(len(s)) for s in spans[:count])
            size = len(builder.request_bytes(spans[:count]))
            assert size == builder.request_size(payload)
            assert empty + payload <= size <= empty + payload + 6
        big = [b"x" * 1_000_000] * 5  # lengths that need more varint bytes
        payload = sum(span_field_size(len(s)) for s in big)
        assert len(builder.request_bytes(big)) == builder.request_size(payload)

    def test_a_json_line_is_its_wrapper_plus_the_spans_and_commas(self) -> None:
        built = _build("epochs", encode.python_encoder)
        spans = [s for batch in built.json_spans for s in batch]
        empty = len(built.json_builder.json_line([]))
        for count in (1, 2, len(spans)):
            line = built.json_builder.json_line(spans[:count])
            assert len(line) == empty + sum(map(len, spans[:count])) + count - 1
        big = [b'{"name":"x"}'] * 20_000  # past the size the compiled encoder copies unlocked
        assert len(built.json_builder.json_line(big)) == empty + 13 * 20_000 - 1
        data = traces_from_json_line(built.json_builder.json_line([]).decode())
        assert not data.resource_spans[0].scope_spans[0].spans


class TestStaging:
    def test_an_open_epoch_stages_at_most_56_bytes_per_region_and_frees_them(self) -> None:
        tmr = Timer()
        builder = SpanBuilder("r", "p", tmr.anchor, resource("r"), encoder=encode.python_encoder)
        tmr.start(TimeType.EPOCH)
        for _ in range(500):
            with tmr.region(TimeType.BATCH):
                pass
        builder.trace_key_id = tmr._key_ids[TimeType.EPOCH]
        assert builder.encode(tmr._read_new()[0]) == []
        staged = sum(len(part) for parts in builder._pending.values() for part in parts)
        assert staged == 500 * 56
        tmr.end(TimeType.EPOCH)
        assert len(builder.encode(tmr._read_new()[0])) == 501
        assert builder._pending == {}

    def test_the_compiled_encoder_is_built_unless_the_build_was_asked_not_to(self) -> None:
        if os.environ.get("MAELTRACE_NO_EXTENSION") == "1":
            pytest.skip("MAELTRACE_NO_EXTENSION=1 built maeltrace without its compiled encoder")
        assert _spanenc is not None, "maeltrace._spanenc was not built (hatch_build.py)"

    def test_the_compiled_encoder_is_chosen_unless_pure_python_is_asked_for(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MAELTRACE_PURE_PYTHON", "1")
        assert encode.encoder() is encode.python_encoder
        monkeypatch.delenv("MAELTRACE_PURE_PYTHON")
        assert encode.encoder() is (_spanenc or encode.python_encoder)


# -- the reference: maeltrace 0.x's message-building SpanBuilder, unchanged --------------------


def _hash(*parts: object, size: int) -> bytes:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=size).digest()
    return digest if any(digest) else b"\x01" + digest[1:]


# A region as the builder keeps it: (key_id, seq, parent, start, end, status, trace, device_ns,
# device_start, thread); tuples, as an epoch's regions may wait in memory for its end.
_Row = tuple[int, int, int, int, int, int, int, int, int, int]
KEY, SEQ, PARENT, START, END, STATUS, TRACE, DEVICE, DEVICE_START, THREAD = range(10)

_MASK = (1 << 64) - 1


class ReferenceSpanBuilder:
    """maeltrace 0.x's SpanBuilder (protobuf messages built field by field), kept unchanged as
    the reference of what the wire encoder must produce; its original docstring follows.

    Builds the spans of a timer's regions, a flush at a time.

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
        context = _ReferenceContext(records, failures or {}, device_clock or "gpu")
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

    def _template(self, key_id: int, thread: int, context: _ReferenceContext) -> bytes:
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
        context: _ReferenceContext,
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

    def _gpu_span(self, span: Span, parent: Span, r: _Row, context: _ReferenceContext) -> None:
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
class _ReferenceContext:
    records: Records
    failures: Mapping[int, str]
    device_clock: str
