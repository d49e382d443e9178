"""Spans on the wire: region rows become serialised OTLP spans, compiled or in pure Python.

`maeltrace.otel.spans.SpanBuilder` decides what a span holds; this module only writes bytes.
Regions travel here as packed rows (`ROW_FIELDS` int64 values each, 56 bytes, the size of a
region in the recorder), and every span comes out as one serialised
``opentelemetry.proto.trace.v1.Span`` message, or as one compact OTLP/JSON span object, built
from fragments the builder serialises once per key and thread (the name, the attributes every
span of that key and thread shares).

The compiled encoder (``maeltrace._spanenc``) does the per-row work with the GIL released, so a
training thread is not held up by the export thread; the functions here are its pure-Python
fallback and its reference: both produce the same bytes, field for field. The fields are
written in field-number order, as protobuf itself serialises them, and the JSON keys in that
order too, as ``maeltrace.otel._otlp_json.traces_to_json_line`` writes them.

``MAELTRACE_PURE_PYTHON=1`` selects the fallback, as it does for the recorder.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from maeltrace.environment import MAELTRACE_PURE_PYTHON, env_flag
from maeltrace.otel import semconv
from maeltrace.records import NO_DEVICE_TIME, NO_PARENT, NO_TRACE, STATUS_OK, Records, ThreadInfo

__all__ = [
    "KEY_MASK",
    "ROW_FIELDS",
    "Encoder",
    "Special",
    "Template",
    "encoder",
    "merge_records",
    "python_encoder",
    "varint",
]

ROW_FIELDS = 7
"""int64 values per packed row: seq, parent seq, start, end, key-thread-status, device
duration, device start."""

R_SEQ, R_PARENT, R_START, R_END, R_KTS, R_DEVICE, R_DEVICE_START = range(ROW_FIELDS)

KEY_MASK = (1 << 32) - 1
THREAD_SHIFT = 32
STATUS_SHIFT = 56
TEMPLATE_MASK = (1 << STATUS_SHIFT) - 1
"""A row's key-thread-status value is ``key | thread << 32 | status << 56``; masked with this,
it is the key of the row's `Template`."""

_MASK64 = (1 << 64) - 1
_BYTES = [bytes((i,)) for i in range(128)]

Template = tuple[bytes, bytes, bytes, bytes]
"""Fragments shared by every span of one key on one thread: the name and kind, the attributes,
the name and kind of the [gpu] child, and the child's ``maeltrace.key`` attribute."""

Special = tuple[int, bytes | None, bytes | None, bytes, bytes]
"""A row that is not built by the common rules: (row index, trace id or None for the
ordinal's, parent span id or None for the usual parent (b"": none), extra attributes written
after ``maeltrace.cpu.duration_ns``, tail: events, links and status). JSON fragments begin with
a comma."""


class Encoder(Protocol):
    """What `encoder` returns: the compiled module, or this module's Python functions."""

    def group(
        self,
        key_id: Any,
        seq: Any,
        parent_seq: Any,
        start_ns: Any,
        end_ns: Any,
        status: Any,
        trace: Any,
        device_ns: Any,
        device_start_ns: Any,
        thread: Any,
        trace_key: int,
    ) -> list[tuple[int, int, int, bytes]]: ...

    def sort_rows(self, rows: bytes) -> bytes: ...

    def span_fields(self, spans: Sequence[bytes]) -> bytes: ...

    def request(
        self, spans: Sequence[bytes], resource_field: bytes, scope_field: bytes
    ) -> bytes: ...

    def json_line(self, spans: Sequence[bytes], prefix: bytes, suffix: bytes) -> bytes: ...

    def special_rows(self, rows: bytes, trace_key: int, roots: bool) -> list[int]: ...

    def template_keys(self, rows: bytes) -> set[int]: ...

    def encode(
        self,
        rows: bytes,
        json: bool,
        trace: bytes,
        run_parent: bytes,
        base: int,
        offset: int,
        counters: array[int],
        templates: Mapping[int, Template],
        specials: Sequence[Special],
        gpu_clock: bytes,
    ) -> list[bytes]: ...


def varint(value: int) -> bytes:
    """The protobuf varint of ``value`` (negative int64 values take 10 bytes)."""
    value &= _MASK64
    if value < 0x80:
        return _BYTES[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x200000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def group_records(records: Records, trace_key: int | None, enc: Encoder) -> list[Any]:
    """Packs ``records`` into rows per trace ordinal: (ordinal, first row, row of its trace-key
    region or -1, packed rows), ordinals in order of their first row."""
    return enc.group(
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
        -1 if trace_key is None else trace_key,
    )


def merge_records(
    logs: Sequence[tuple[tuple[int | None, int | None, str], bytes]],
    keys: tuple[Any, ...],
    device: Mapping[int, tuple[int, int, int]],
    device_offset_ns: int,
    enc: Encoder | None = None,
    *,
    counts: Mapping[int, tuple[int, int]] | None = None,
    peak_memory: Mapping[int, int] | None = None,
) -> Records:
    """`maeltrace.Records.merge`, sorting and copying the columns in compiled code (with the
    GIL released) where the compiled encoder is used."""
    merge = getattr(enc or encoder(), "merge", None)
    if merge is None:
        return Records.merge(
            logs, keys, device, device_offset_ns, counts=counts, peak_memory=peak_memory
        )
    columns: list[array[int]] = []
    for data in merge([data for _, data in logs], dict(device), device_offset_ns):
        column = array("q")
        column.frombytes(data)
        columns.append(column)
    key_id, seq, parent, start, end, status, trace, device_ns, device_start, flags, thread = columns
    return Records(
        key_id=key_id,
        seq=seq,
        parent_seq=parent,
        start_ns=start,
        end_ns=end,
        status=status,
        trace=trace,
        device_ns=device_ns,
        device_start_ns=device_start,
        device_flags=flags,
        thread=thread,
        keys=keys,
        threads=tuple(ThreadInfo(*info) for info, _ in logs),
        counts=counts or {},
        peak_memory=peak_memory or {},
    )


# -- the pure-Python encoder -----------------------------------------------------------------


class _PythonEncoder:
    """The reference encoder, in Python: the same bytes as the compiled one, more slowly."""

    @staticmethod
    def group(
        key_id: Any,
        seq: Any,
        parent_seq: Any,
        start_ns: Any,
        end_ns: Any,
        status: Any,
        trace: Any,
        device_ns: Any,
        device_start_ns: Any,
        thread: Any,
        trace_key: int,
    ) -> list[tuple[int, int, int, bytes]]:
        groups: dict[int, tuple[list[int], array[int]]] = {}
        columns = (key_id, seq, parent_seq, start_ns, end_ns, status, trace)
        rows = zip(*columns, device_ns, device_start_ns, thread, strict=True)
        for i, (key, s, parent, start, end, state, ordinal, dev, dev_start, th) in enumerate(rows):
            found = groups.get(ordinal)
            if found is None:
                found = groups[ordinal] = ([i, -1], array("q"))
            if key == trace_key and ordinal != NO_TRACE and found[0][1] < 0:
                found[0][1] = i
            kts = key | th << THREAD_SHIFT | state << STATUS_SHIFT
            found[1].extend((s, parent, start, end, kts, dev, dev_start))
        return [(o, where[0], where[1], packed.tobytes()) for o, (where, packed) in groups.items()]

    @staticmethod
    def span_fields(spans: Sequence[bytes]) -> bytes:
        prefixes = _PREFIXES
        parts: list[bytes] = []
        for span in spans:
            size = len(span)
            prefix = prefixes.get(size)
            if prefix is None:
                prefix = b"\x12" + varint(size)
                if len(prefixes) < 4096:
                    prefixes[size] = prefix
            parts += (prefix, span)
        return b"".join(parts)

    @classmethod
    def request(cls, spans: Sequence[bytes], resource_field: bytes, scope_field: bytes) -> bytes:
        scope_spans = scope_field + cls.span_fields(spans)
        resource_spans = resource_field + b"\x12" + varint(len(scope_spans)) + scope_spans
        return b"\x0a" + varint(len(resource_spans)) + resource_spans

    @staticmethod
    def json_line(spans: Sequence[bytes], prefix: bytes, suffix: bytes) -> bytes:
        return b"".join((prefix, b",".join(spans), suffix))

    @staticmethod
    def sort_rows(rows: bytes) -> bytes:
        values = array("q")
        values.frombytes(rows)
        seqs = values[R_SEQ::ROW_FIELDS]
        if all(seqs[i] < seqs[i + 1] for i in range(len(seqs) - 1)):
            return rows
        order = sorted(range(len(seqs)), key=seqs.__getitem__)
        out = array("q")
        for i in order:
            out.extend(values[i * ROW_FIELDS : (i + 1) * ROW_FIELDS])
        return out.tobytes()

    @staticmethod
    def special_rows(rows: bytes, trace_key: int, roots: bool) -> list[int]:
        values = array("q")
        values.frombytes(rows)
        out = []
        for i in range(len(values) // ROW_FIELDS):
            kts = values[i * ROW_FIELDS + R_KTS]
            if (
                kts >> STATUS_SHIFT != STATUS_OK
                or (kts & KEY_MASK) == trace_key
                or (roots and values[i * ROW_FIELDS + R_PARENT] == NO_PARENT)
            ):
                out.append(i)
        return out

    @staticmethod
    def template_keys(rows: bytes) -> set[int]:
        values = array("q")
        values.frombytes(rows)
        return {kts & TEMPLATE_MASK for kts in values[R_KTS::ROW_FIELDS]}

    @staticmethod
    def encode(
        rows: bytes,
        json: bool,
        trace: bytes,
        run_parent: bytes,
        base: int,
        offset: int,
        counters: array[int],
        templates: Mapping[int, Template],
        specials: Sequence[Special],
        gpu_clock: bytes,
    ) -> list[bytes]:
        special = {s[0]: s for s in specials}
        span = _json_span if json else _pb_span
        out: list[bytes] = []
        append = out.append
        mask, no_parent, no_device = _MASK64, NO_PARENT, NO_DEVICE_TIME
        for i, (seq, parent, start, end, kts, device, device_start) in enumerate(
            _ROW.iter_unpack(rows)
        ):
            key = kts & KEY_MASK
            head, attrs, gpu_head, gpu_key = templates[kts & TEMPLATE_MASK]
            index = counters[key]
            counters[key] = index + 1
            span_id = ((base + seq) & mask).to_bytes(8, "big")
            if parent != no_parent:
                parent_id = ((base + parent) & mask).to_bytes(8, "big")
            else:
                parent_id = run_parent
            span_trace, extra, tail = trace, b"", b""
            found = special.get(i)
            if found is not None:
                _, trace_override, parent_override, extra, tail = found
                span_trace = trace if trace_override is None else trace_override
                parent_id = parent_id if parent_override is None else parent_override
            start_ns, end_ns = (start + offset) & mask, (end + offset) & mask
            if device == no_device:
                append(
                    span(
                        span_trace,
                        span_id,
                        parent_id,
                        head,
                        start_ns,
                        end_ns,
                        attrs,
                        index,
                        end - start,
                        extra,
                        None,
                        b"",
                        tail,
                    )
                )
                continue
            append(
                span(
                    span_trace,
                    span_id,
                    parent_id,
                    head,
                    start_ns,
                    end_ns,
                    attrs,
                    index,
                    end - start,
                    extra,
                    device,
                    gpu_clock,
                    tail,
                )
            )
            gpu_start = (device_start + offset) & mask
            append(
                span(
                    span_trace,
                    ((base + seq + (1 << 63)) & mask).to_bytes(8, "big"),
                    span_id,
                    gpu_head,
                    gpu_start,
                    (gpu_start + device) & mask,
                    gpu_key,
                    None,
                    None,
                    b"",
                    device,
                    gpu_clock,
                    b"",
                )
            )
        return out


_ROW = struct.Struct(f"<{ROW_FIELDS}q")
_PREFIXES: dict[int, bytes] = {}
"""Tag and length of a span of each size seen (sizes cluster: a few hundred bytes)."""

_INDEX, _CPU, _GPU = 0, 1, 2
# The C encoder holds the same keys (_spanenc.c, INT_KEYS; tests/test_semconv.py checks).
_INT_KEYS = (
    semconv.MAELTRACE_INDEX,
    semconv.MAELTRACE_CPU_DURATION_NS,
    semconv.MAELTRACE_GPU_DURATION_NS,
)
_PB_KEYS = [b"\x0a" + varint(len(k)) + k.encode() for k in _INT_KEYS]
_JSON_INT = [b',{"key":"' + k.encode() + b'","value":{"intValue":"%d"}}' for k in _INT_KEYS]
_FIXED64 = struct.Struct("<Q")


# Each integer attribute is (tag, length, key, value tag, value length, 0x18) then its varint:
# everything but the varint is known from the varint's length (at most 10 bytes).
_PB_INT = [
    [
        b"\x4a" + bytes((len(key) + 3 + n,)) + key + b"\x12" + bytes((1 + n,)) + b"\x18"
        for n in range(11)
    ]
    for key in _PB_KEYS
]


def _pb_int(which: int, value: int) -> bytes:
    encoded = varint(value)
    return _PB_INT[which][len(encoded)] + encoded


def _pb_span(
    trace: bytes,
    span_id: bytes,
    parent_id: bytes,
    head: bytes,
    start: int,
    end: int,
    attrs: bytes,
    index: int | None,
    cpu: int | None,
    extra: bytes,
    gpu: int | None,
    gpu_clock: bytes,
    tail: bytes,
) -> bytes:
    parts = [b"\x0a\x10", trace, b"\x12\x08", span_id]
    if parent_id:
        parts += (b"\x22\x08", parent_id)
    parts.append(head)
    if start:
        parts += (b"\x39", _FIXED64.pack(start))
    if end:
        parts += (b"\x41", _FIXED64.pack(end))
    parts.append(attrs)
    if index is not None and cpu is not None:
        parts += (_pb_int(_INDEX, index), _pb_int(_CPU, cpu))
    parts.append(extra)
    if gpu is not None:
        parts.append(_pb_int(_GPU, gpu))
    parts += (gpu_clock, tail)
    return b"".join(parts)


def _json_span(
    trace: bytes,
    span_id: bytes,
    parent_id: bytes,
    head: bytes,
    start: int,
    end: int,
    attrs: bytes,
    index: int | None,
    cpu: int | None,
    extra: bytes,
    gpu: int | None,
    gpu_clock: bytes,
    tail: bytes,
) -> bytes:
    parts = [b'{"traceId":"', trace.hex().encode(), b'","spanId":"', span_id.hex().encode(), b'"']
    if parent_id:
        parts += (b',"parentSpanId":"', parent_id.hex().encode(), b'"')
    parts += (b",", head)
    if start:
        parts.append(b',"startTimeUnixNano":"%d"' % start)
    if end:
        parts.append(b',"endTimeUnixNano":"%d"' % end)
    parts += (b',"attributes":[', attrs)
    if index is not None and cpu is not None:
        parts += (_JSON_INT[_INDEX] % index, _JSON_INT[_CPU] % cpu)
    parts.append(extra)
    if gpu is not None:
        parts.append(_JSON_INT[_GPU] % gpu)
    parts += (gpu_clock, b"]", tail, b"}")
    return b"".join(parts)


python_encoder: Encoder = _PythonEncoder()
"""The pure-Python encoder, always available."""


def encoder() -> Encoder:
    """The compiled encoder where it was built and ``MAELTRACE_PURE_PYTHON`` is not set, else
    the pure-Python one."""
    if env_flag(MAELTRACE_PURE_PYTHON):
        return python_encoder
    try:
        from maeltrace import _spanenc
    except ImportError:
        return python_encoder
    compiled: Encoder = _spanenc
    return compiled
