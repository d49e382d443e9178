"""OTLP JSON lines: the file format of the Collector's file exporter and otlpjsonfile receiver.

Each line is one ``TracesData`` message in the OTLP/JSON encoding, UTF-8, with no newline inside
it. The encoding is protobuf's JSON mapping with the OTLP changes: keys in lowerCamelCase, trace
and span ids as lowercase hex strings (not base64), enums as integers, 64-bit integers as
strings, fields that hold their default value left out.

Both directions go through protobuf's own ``json_format`` (no wire format is written by hand
here); only the ids are rewritten between its base64 and OTLP's hex. Reading validates every
field.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from typing import Any

# protobuf ships no type information (types-protobuf trails protobuf 7): both are Any here.
from google.protobuf import json_format  # type: ignore[import-untyped]
from google.protobuf.message import Message  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import (
    TracesData,
)

from maeltrace._files import append_line, read_lines
from maeltrace._validate import loads
from maeltrace.errors import FormatError

MAX_LINE_BYTES = 64 * 1024 * 1024
"""The longest line read: 16 times the default request size (older versions wrote lines of a
whole export, which `maeltrace replay` splits); a longer one is skipped unread."""

MAX_DEPTH = 64
"""The deepest nesting read: a span's attribute value is 8 levels down, and array and key-list
values nest further; protobuf's own parser stops at 100, by recursion."""

__all__ = [
    "MAX_DEPTH",
    "MAX_LINE_BYTES",
    "append_json_line",
    "read_json_lines",
    "traces_from_json_line",
    "traces_to_json_line",
]

_JSON = dict[str, Any]
_HEX = re.compile(r"[0-9a-fA-F]*")


# Span and link fields that OTLP/JSON writes as hex instead of protobuf JSON's base64.
_SPAN_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_LINK_ID_FIELDS = ("traceId", "spanId", "trace_id", "span_id")


def traces_to_json_line(data: TracesData | ExportTraceServiceRequest) -> str:
    """Encodes spans as one OTLP JSON line.

    Args:
        data: the spans. An ``ExportTraceServiceRequest`` encodes exactly as the ``TracesData``
            with the same resource spans (both are one ``resourceSpans`` list), which is also the
            body of an OTLP ``http/json`` export.

    Returns:
        Compact JSON, without the line's ending newline. Strings are not ASCII-escaped; control
        characters in them are, so the line never holds a newline.
    """
    obj = _reference_dict(data)
    # allow_nan=False: protobuf JSON writes NaN and infinities as strings, never bare tokens.
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def traces_from_json_line(line: str) -> TracesData:
    """Decodes one OTLP JSON line.

    Ids must be hex, as OTLP/JSON writes them (upper or lower case); base64 ids are refused
    rather than guessed at, since some hex strings are valid base64 too. Fields this version of
    the proto does not know are ignored, so lines written by newer software still load.

    Args:
        line: one line, with or without its ending newline.

    Raises:
        ValueError: the line is not strict JSON (`maeltrace._validate.loads`), is longer than
            `MAX_LINE_BYTES` or nested deeper than `MAX_DEPTH`, is not an object, or does not
            follow the ``TracesData`` mapping; the message says what is wrong, on one line.
    """
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"a line of {len(line)} characters (at most {MAX_LINE_BYTES})")
    try:
        obj = loads(line, "line", max_depth=MAX_DEPTH)
    except FormatError as err:
        place = f"{err.where}: " if err.where else ""
        raise ValueError(f"not valid JSON: {place}{err.problem}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object (a TracesData), got {type(obj).__name__}")
    _ids_hex_to_base64(obj)
    data = TracesData()
    try:
        json_format.ParseDict(obj, data, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, AttributeError, OverflowError) as err:
        # json_format reports most mismatches as ParseError, but some values of the wrong type
        # (a number where an enum's name goes, say) escape as the others.
        raise ValueError(f"not an OTLP TracesData: {str(err)[:300]}") from None
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    return data


def read_json_lines(path: str | os.PathLike[str]) -> Iterator[TracesData]:
    """Reads an OTLP JSON lines file, one ``TracesData`` per complete line.

    Read by `maeltrace._files.read_lines`: blank lines are passed over, and lines that cannot be
    read (a last line without its newline, a line torn by a full disk, one that is not UTF-8 or
    not OTLP JSON, one over `MAX_LINE_BYTES` or nested deeper than `MAX_DEPTH`) are skipped
    with one ``logging`` warning for the file, naming it and the
    lines. Lines are split on ``\\n`` only, and a ``\\r`` before it is ignored.

    Args:
        path: the file.

    Raises:
        OSError: the file cannot be read.
    """
    for _, data in read_lines(path, parse=_traces_from_bytes, max_line_bytes=MAX_LINE_BYTES):
        yield data


def _traces_from_bytes(line: bytes) -> TracesData:
    return traces_from_json_line(line.decode("utf-8"))


def append_json_line(
    path: str | os.PathLike[str], data: TracesData | ExportTraceServiceRequest
) -> None:
    """Appends one OTLP JSON line to a file, creating the file (not its folder) if needed.

    Written by `maeltrace._files.append_line`: the whole line in one ``write`` with
    ``O_APPEND`` under an exclusive ``flock``, so lines appended at once by several threads or
    processes never interleave; a torn last line is ended first; a failed write (disk full) is
    cut back, leaving no partial line. The line reaches the operating system before this
    returns (no buffer in between) but is not synced to disk.

    Args:
        path: the file; its folder must exist.
        data: the spans, encoded as by `traces_to_json_line`.

    Raises:
        OSError: the file cannot be opened or written (for instance its folder is missing, or the
            disk is full); the file is left as it was.
    """
    append_line(path, traces_to_json_line(data).encode("utf-8"))


# -- through json_format -----------------------------------------------------------------------


def _reference_dict(data: Message) -> _JSON:
    """``json_format``'s encoding of a TracesData (or request) with the ids turned to hex."""
    obj: _JSON = json_format.MessageToDict(data, use_integers_for_enums=True)
    for span in _spans_of(obj):
        _convert_ids(span, _SPAN_ID_FIELDS, _base64_to_hex)
        for link in _list(span, "links"):
            _convert_ids(link, _LINK_ID_FIELDS, _base64_to_hex)
    return obj


def _ids_hex_to_base64(obj: _JSON) -> None:
    """Rewrites the hex ids of a decoded OTLP JSON line in place into json_format's base64."""
    for span in _spans_of(obj):
        _convert_ids(span, _SPAN_ID_FIELDS, _hex_to_base64)
        for link in _list(span, "links"):
            _convert_ids(link, _LINK_ID_FIELDS, _hex_to_base64)


def _spans_of(obj: _JSON) -> Iterator[_JSON]:
    # Either name spelling, as json_format accepts both. Anything of the wrong shape is passed
    # over here and reported by json_format.ParseDict, which knows the types.
    for rs in _list(obj, "resourceSpans", "resource_spans"):
        for ss in _list(rs, "scopeSpans", "scope_spans"):
            yield from _list(ss, "spans")


def _list(obj: _JSON, *names: str) -> Iterator[_JSON]:
    for name in names:
        items = obj.get(name)
        if isinstance(items, list):
            yield from (item for item in items if isinstance(item, dict))


def _convert_ids(obj: _JSON, names: tuple[str, ...], convert: Any) -> None:
    for name in names:
        value = obj.get(name)
        if isinstance(value, str):
            obj[name] = convert(name, value)


def _hex_to_base64(name: str, value: str) -> str:
    # bytes.fromhex alone would also take spaces, and an odd length fails with a vaguer message.
    if not _HEX.fullmatch(value) or len(value) % 2:
        raise ValueError(f"{name} {value!r} is not a hex string (OTLP/JSON writes ids in hex)")
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")


def _base64_to_hex(name: str, value: str) -> str:
    return base64.b64decode(value).hex()
