"""OTLP JSON lines: encoding, decoding, the file functions, and the hand-written encoder checked
against protobuf's json_format."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status, TracesData

from maeltrace.otel import _otlp_json as otlp_json
from maeltrace.otel._otlp_json import (
    append_json_line,
    read_json_lines,
    traces_from_json_line,
    traces_to_json_line,
)

TRACE_A = bytes.fromhex("5b8efff798038103d269b633813fc60c")
TRACE_B = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
SPAN_1 = bytes.fromhex("eee19b7ec3c1b174")
SPAN_2 = bytes.fromhex("b7ad6b7169203331")
SPAN_3 = bytes.fromhex("00f067aa0ba902b7")
T0 = 1_700_000_000_123_456_789  # beyond 2**53: JSON numbers would lose it


def _attribute(key: str, **value: object) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))  # type: ignore[arg-type]


def rich_traces() -> TracesData:
    """Two resources, every attribute type, events, links, status, parents, trace state."""
    data = TracesData()
    first = data.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
    first.resource.attributes.extend(
        [
            _attribute("service.name", string_value="train"),
            _attribute("process.pid", int_value=4242),
        ]
    )
    first.resource.dropped_attributes_count = 1
    scope = first.scope_spans.add(schema_url="https://example.com/scope")
    scope.scope.name = "maeltrace"
    scope.scope.version = "0.1.0"
    scope.scope.attributes.append(_attribute("scope.flag", bool_value=True))
    root = scope.spans.add(
        trace_id=TRACE_A,
        span_id=SPAN_1,
        trace_state="vendor=a",
        flags=0x301,
        name="epoch",
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=T0,
        end_time_unix_nano=T0 + 5_000_000_000,
        dropped_attributes_count=2,
        dropped_events_count=3,
        dropped_links_count=4,
    )
    root.attributes.extend(
        [
            _attribute("str", string_value="héllo \u2028 \n world"),
            _attribute("empty", string_value=""),
            _attribute("int", int_value=-(2**63)),
            _attribute("zero", int_value=0),
            _attribute("double", double_value=0.1),
            _attribute("big", double_value=1e300),
            _attribute("inf", double_value=float("inf")),
            _attribute("bool", bool_value=False),
            _attribute("bytes", bytes_value=b"\x00\xff\x10"),
        ]
    )
    array = root.attributes.add(key="array").value.array_value
    array.values.extend(
        [AnyValue(string_value="a"), AnyValue(int_value=7), AnyValue(double_value=-2.5)]
    )
    kvlist = root.attributes.add(key="kvlist").value.kvlist_value
    kvlist.values.append(_attribute("nested", bool_value=True))
    root.attributes.add(key="empty.array").value.array_value.SetInParent()
    root.attributes.add(key="no.value")
    root.events.add(
        time_unix_nano=T0 + 1,
        name="checkpoint",
        attributes=[_attribute("step", int_value=100)],
        dropped_attributes_count=1,
    )
    root.events.add(name="no time")
    root.links.add(
        trace_id=TRACE_B,
        span_id=SPAN_3,
        trace_state="vendor=b",
        attributes=[_attribute("why", string_value="previous run")],
        dropped_attributes_count=5,
        flags=1,
    )
    root.status.code = Status.STATUS_CODE_ERROR
    root.status.message = "loss is NaN"
    child = scope.spans.add(
        trace_id=TRACE_A,
        span_id=SPAN_2,
        parent_span_id=SPAN_1,
        name="forward",
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=T0 + 10,
        end_time_unix_nano=T0 + 20,
    )
    child.status.SetInParent()  # set but empty: written as {}

    second = data.resource_spans.add()
    second.resource.attributes.append(_attribute("service.name", string_value="eval"))
    validate = second.scope_spans.add().spans.add(
        trace_id=TRACE_B, span_id=SPAN_3, name="validate", start_time_unix_nano=1
    )
    # The profiles signal's dictionary references, which trace spans rarely hold.
    validate.attributes.add(key_strindex=3).value.string_value_strindex = 7
    validate.attributes.add(key="negative.zero").value.double_value = -0.0
    return data


def test_round_trip_equals_the_original() -> None:
    data = rich_traces()
    line = traces_to_json_line(data)
    assert "\n" not in line and "\r" not in line
    assert traces_from_json_line(line) == data


def test_json_follows_the_otlp_mapping() -> None:
    obj = json.loads(traces_to_json_line(rich_traces()))
    first, second = obj["resourceSpans"]
    spans = first["scopeSpans"][0]["spans"]
    root, child = spans
    # Ids in lowercase hex, of 32 and 16 characters.
    assert root["traceId"] == TRACE_A.hex() and len(root["traceId"]) == 32
    assert root["spanId"] == SPAN_1.hex() and len(root["spanId"]) == 16
    assert child["parentSpanId"] == SPAN_1.hex()
    assert root["links"][0]["traceId"] == TRACE_B.hex()
    assert root["links"][0]["spanId"] == SPAN_3.hex()
    assert "parentSpanId" not in root  # default values are left out
    # 64-bit integers as strings, enums as integers, 32-bit integers as numbers.
    assert root["startTimeUnixNano"] == str(T0)
    assert root["events"][0]["timeUnixNano"] == str(T0 + 1)
    assert root["kind"] == Span.SPAN_KIND_INTERNAL
    assert root["status"] == {"code": Status.STATUS_CODE_ERROR, "message": "loss is NaN"}
    assert child["status"] == {}
    assert root["flags"] == 0x301 and root["droppedLinksCount"] == 4
    attributes = {kv["key"]: kv.get("value") for kv in root["attributes"]}
    assert attributes["int"] == {"intValue": str(-(2**63))}
    assert attributes["zero"] == {"intValue": "0"}  # a set oneof member is written
    assert attributes["bool"] == {"boolValue": False}
    assert attributes["double"] == {"doubleValue": 0.1}
    assert attributes["inf"] == {"doubleValue": "Infinity"}
    assert attributes["bytes"] == {"bytesValue": "AP8Q"}  # base64: only ids are hex
    assert attributes["array"]["arrayValue"]["values"][1] == {"intValue": "7"}
    assert attributes["empty.array"] == {"arrayValue": {}}
    assert attributes["no.value"] is None
    assert first["schemaUrl"].startswith("https://")
    assert first["scopeSpans"][0]["scope"]["version"] == "0.1.0"
    assert "kind" not in second["scopeSpans"][0]["spans"][0]


def test_export_request_encodes_as_traces_data() -> None:
    data = rich_traces()
    request = ExportTraceServiceRequest(resource_spans=data.resource_spans)
    assert traces_to_json_line(request) == traces_to_json_line(data)
    assert traces_to_json_line(TracesData()) == "{}"


def test_nan_is_written_as_a_string() -> None:
    data = TracesData()
    span = data.resource_spans.add().scope_spans.add().spans.add(name="x")
    span.attributes.append(_attribute("nan", double_value=float("nan")))
    line = traces_to_json_line(data)
    assert '"doubleValue":"NaN"' in line
    back = traces_from_json_line(line)
    assert math.isnan(
        back.resource_spans[0].scope_spans[0].spans[0].attributes[0].value.double_value
    )


def test_uppercase_hex_and_numbers_are_accepted() -> None:
    line = json.dumps(
        {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": TRACE_A.hex().upper(),
                                    "spanId": SPAN_1.hex().upper(),
                                    "name": "x",
                                    "kind": "SPAN_KIND_SERVER",
                                    "startTimeUnixNano": 12,
                                }
                            ]
                        }
                    ]
                }
            ],
            "someFutureField": {"a": 1},
        }
    )
    span = traces_from_json_line(line).resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == TRACE_A and span.span_id == SPAN_1
    assert span.kind == Span.SPAN_KIND_SERVER and span.start_time_unix_nano == 12


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"resourceSpans": 3}', "not an OTLP TracesData"),
        ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}', "traceId"),
        ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "abc"}]}]}]}', "hex"),
        ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "ab cd"}]}]}]}', "hex"),
        # base64 of a trace id: refused, not guessed at
        ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "W47/95gDgQM="}]}]}]}', "hex"),
        (
            '{"resourceSpans": [{"scopeSpans": [{"spans": [{"links": [{"spanId": "zz"}]}]}]}]}',
            "spanId",
        ),
        ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]}', "not an OTLP"),
        ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"endTimeUnixNano": "soon"}]}]}]}', "OTLP"),
    ],
)
def test_malformed_lines_raise_value_error(line: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        traces_from_json_line(line)


def test_read_json_lines_skips_blank_and_bad_lines_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "traces.jsonl"
    data = rich_traces()
    append_json_line(path, data)
    with open(path, "ab") as file:
        file.write(b"\n   \n")
    append_json_line(path, TracesData())
    with open(path, "ab") as file:
        file.write(b'{"resourceSpans": [\n')  # a line cut short by a crash
    append_json_line(path, data)

    with caplog.at_level(logging.WARNING, logger="maeltrace.files"):
        assert list(read_json_lines(path)) == [data, TracesData(), data]
    [warning] = [r.getMessage() for r in caplog.records if r.name == "maeltrace.files"]
    assert "traces.jsonl: skipped 1 unreadable line: line 5: not valid JSON" in warning


def test_read_json_lines_skips_bad_utf8(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"resourceSpans": []}\n{"x": "\xff"}\n')
    with caplog.at_level(logging.WARNING, logger="maeltrace.files"):
        assert list(read_json_lines(path)) == [TracesData()]
    assert "line 2: not UTF-8" in caplog.text


def test_lines_split_only_on_newline(tmp_path: Path) -> None:
    # U+2028 and U+0085 are line breaks to str.splitlines, not to a JSON lines file.
    data = TracesData()
    data.resource_spans.add().scope_spans.add().spans.add(name="a\u2028b\x85c\rd\ne")
    path = tmp_path / "t.jsonl"
    append_json_line(path, data)
    append_json_line(path, data)
    assert path.read_bytes().count(b"\n") == 2
    assert list(read_json_lines(path)) == [data, data]


def test_append_needs_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        append_json_line(tmp_path / "missing" / "t.jsonl", TracesData())


def test_concurrent_appends_do_not_interleave(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    threads, per_thread = 8, 25

    def batch(index: int) -> TracesData:
        data = TracesData()
        spans = data.resource_spans.add().scope_spans.add().spans
        for k in range(200):  # lines of tens of kilobytes: several pipe/page sizes
            spans.add(name=f"t{index}-{k}-" + "x" * 100, span_id=SPAN_1, trace_id=TRACE_A)
        return data

    def work(index: int) -> None:
        data = batch(index)
        for _ in range(per_thread):
            append_json_line(path, data)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    lines = list(read_json_lines(path))
    assert len(lines) == threads * per_thread
    assert all(len(line.resource_spans[0].scope_spans[0].spans) == 200 for line in lines)


def test_append_writes_a_new_file_with_permissions(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    append_json_line(path, rich_traces())
    assert path.read_bytes().endswith(b"\n")
    if os.name == "posix":
        assert path.stat().st_mode & 0o600 == 0o600


# -- properties -------------------------------------------------------------------------------

_u64 = st.integers(min_value=0, max_value=2**64 - 1)
_u32 = st.integers(min_value=0, max_value=2**32 - 1)
_text = st.text(max_size=20)
_scalar = st.one_of(
    _text.map(lambda s: AnyValue(string_value=s)),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda i: AnyValue(int_value=i)),
    st.floats(allow_nan=False).map(lambda x: AnyValue(double_value=x)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.binary(max_size=8).map(lambda b: AnyValue(bytes_value=b)),
)


def _array(values: list[AnyValue]) -> AnyValue:
    value = AnyValue()
    value.array_value.values.extend(values)
    return value


def _kvlist(pairs: list[tuple[str, AnyValue]]) -> AnyValue:
    value = AnyValue()
    value.kvlist_value.values.extend(KeyValue(key=k, value=v) for k, v in pairs)
    return value


_value = st.one_of(
    _scalar,
    st.lists(_scalar, max_size=3).map(_array),
    st.lists(st.tuples(_text, _scalar), max_size=3).map(_kvlist),
)
_attributes = st.lists(st.builds(KeyValue, key=_text, value=_value), max_size=4)


@st.composite
def _spans(draw: st.DrawFn) -> Span:
    span = Span(
        trace_id=draw(st.binary(min_size=16, max_size=16)),
        span_id=draw(st.binary(min_size=8, max_size=8)),
        parent_span_id=draw(st.sampled_from([b"", *[bytes([i]) * 8 for i in range(3)]])),
        name=draw(_text),
        kind=draw(st.sampled_from(Span.SpanKind.values())),
        start_time_unix_nano=draw(_u64),
        end_time_unix_nano=draw(_u64),
        flags=draw(_u32),
        attributes=draw(_attributes),
    )
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        span.events.add(time_unix_nano=draw(_u64), name=draw(_text), attributes=draw(_attributes))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        span.links.add(
            trace_id=draw(st.binary(min_size=16, max_size=16)),
            span_id=draw(st.binary(min_size=8, max_size=8)),
            flags=draw(_u32),
        )
    if draw(st.booleans()):
        span.status.code = draw(st.sampled_from(Status.StatusCode.values()))
        span.status.message = draw(_text)
    return span


@st.composite
def _traces(draw: st.DrawFn) -> TracesData:
    data = TracesData()
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        rs: ResourceSpans = data.resource_spans.add(schema_url=draw(_text))
        rs.resource.attributes.extend(draw(_attributes))
        scope = rs.scope_spans.add()
        scope.scope.name = draw(_text)
        scope.spans.extend(draw(st.lists(_spans(), max_size=3)))
    return data


@settings(max_examples=150, deadline=None)
@given(_traces())
def test_round_trip_property(data: TracesData) -> None:
    line = traces_to_json_line(data)
    assert "\n" not in line
    assert traces_from_json_line(line) == data
    assert json.loads(line) == otlp_json._reference_dict(data)
