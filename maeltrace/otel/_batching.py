"""Keeping export requests and file lines under a size limit.

Receivers refuse large requests (gRPC's default limit is 4 MiB, OTLP/HTTP receivers answer 413),
and a line that no receiver takes cannot be replayed either. So the pipeline cuts each batch of
encoded spans into requests of at most `DEFAULT_MAX_REQUEST_BYTES` (`chunk`), and a request a
receiver still refuses for its size is halved (`split_request`) and sent again; `replay` does the
same with an oversized line written by an older version (`split_traces`).
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "MIN_MAX_REQUEST_BYTES",
    "chunk",
    "split_request",
    "split_traces",
]

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""The most bytes one export request or one file line holds by default: gRPC's default message
limit, which the Collector and Jaeger keep."""

MIN_MAX_REQUEST_BYTES = 4096
"""The smallest limit accepted: below it the resource and scope alone could fill a request."""

# Bytes a span adds to a request beyond its own: its field tag in ScopeSpans and the varint of
# its length (at most 5 bytes for any length under 4 GiB), plus what its bytes can add to the
# length prefixes of the three enclosing messages as they grow (a varint grows by one byte per
# 7 bits: at most 4 more bytes each, counted once per request in `_WRAPPER_SLACK`).
_PER_SPAN_BYTES = 6
_WRAPPER_SLACK = 16


def chunk(sizes: Sequence[int], overhead: int, limit: int) -> list[range]:
    """Cuts items of the given sizes, in order, into runs whose total stays within ``limit``.

    Args:
        sizes: each item's size in bytes (a serialised span, or a JSON span object).
        overhead: the bytes of an empty request or line (resource, scope, brackets).
        limit: the most bytes one request or line may hold.

    Returns:
        Index ranges covering every item once, in order. An item too large to fit even alone
        gets a range of its own (the receiver may still refuse it; nothing smaller exists).
    """
    runs: list[range] = []
    budget = limit - overhead - _WRAPPER_SLACK
    start = 0
    used = 0
    for i, size in enumerate(sizes):
        cost = size + _PER_SPAN_BYTES
        if i > start and used + cost > budget:
            runs.append(range(start, i))
            start, used = i, 0
        used += cost
    if start < len(sizes):
        runs.append(range(start, len(sizes)))
    return runs


def _halves(message: ExportTraceServiceRequest | TracesData) -> tuple[bytes, bytes] | None:
    """The spans of a message in two messages of about half each, with the same resources and
    scopes; None when it holds fewer than two spans."""
    where = [
        (r, s, i)
        for r, resource in enumerate(message.resource_spans)
        for s, scope in enumerate(resource.scope_spans)
        for i in range(len(scope.spans))
    ]
    if len(where) < 2:
        return None
    middle = len(where) // 2
    parts = []
    for chosen in (where[:middle], where[middle:]):
        part = type(message)()
        last: tuple[int, int] | None = None
        scope_out = None
        for r, s, i in chosen:
            if last is None or last[0] != r:
                resource_out = part.resource_spans.add()
                resource_out.resource.CopyFrom(message.resource_spans[r].resource)
                resource_out.schema_url = message.resource_spans[r].schema_url
                last = None
            if last != (r, s):
                scope_in = message.resource_spans[r].scope_spans[s]
                scope_out = resource_out.scope_spans.add()
                scope_out.scope.CopyFrom(scope_in.scope)
                scope_out.schema_url = scope_in.schema_url
                last = (r, s)
            assert scope_out is not None
            scope_out.spans.add().CopyFrom(message.resource_spans[r].scope_spans[s].spans[i])
        parts.append(part.SerializeToString())
    return parts[0], parts[1]


def split_request(body: bytes) -> tuple[bytes, bytes] | None:
    """A serialised ``ExportTraceServiceRequest`` as two of about half the spans each, or None
    when it holds fewer than two spans."""
    return _halves(ExportTraceServiceRequest.FromString(body))


def split_traces(data: TracesData, limit: int) -> list[TracesData]:
    """``data`` as messages of at most ``limit`` serialised bytes each (halving until they fit;
    a single span larger than the limit stays alone)."""
    out: list[TracesData] = []
    todo = [data]
    while todo:
        message = todo.pop()
        if message.ByteSize() <= limit:
            out.append(message)
            continue
        halves = _halves(message)
        if halves is None:
            out.append(message)
            continue
        todo.extend(TracesData.FromString(h) for h in reversed(halves))
    return out
