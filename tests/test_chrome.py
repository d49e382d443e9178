"""The Chrome trace writer, on real timer runs: what Perfetto and chrome://tracing will read."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import maeltrace
from maeltrace._chrome import chrome_trace, write_chrome_trace
from maeltrace.records import NO_DEVICE_TIME, Records
from tests.fakes.cuda import fake_gpu_clock

BOTH_RECORDERS = True

# Phases of the Trace Event Format (duration, complete, instant, counter, async, flow, sample,
# object, metadata, memory dump, mark, context events).
PHASES = frozenset("BEXiICbneSTpFstfPNODMVvRc()")
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "ph": str,
    "ts": (int, float),
    "pid": int,
    "tid": int,
}


def schema_errors(trace: object) -> list[str]:
    """What makes ``trace`` something other than a valid JSON Object Format trace; [] if none."""
    if not isinstance(trace, dict):
        return [f"top level is {type(trace).__name__}, not an object"]
    errors = []
    if not isinstance(trace.get("traceEvents"), list):
        errors.append("traceEvents is missing or not a list")
    if trace.get("displayTimeUnit", "ms") not in ("ms", "ns"):
        errors.append(f"displayTimeUnit {trace['displayTimeUnit']!r}")
    if not isinstance(trace.get("metadata", {}), dict):
        errors.append("metadata is not an object")
    for index, event in enumerate(trace.get("traceEvents") or []):
        where = f"event {index}"
        if not isinstance(event, dict):
            errors.append(f"{where} is not an object")
            continue
        for field, kind in REQUIRED.items():
            value = event.get(field)
            if not isinstance(value, kind) or isinstance(value, bool):
                errors.append(f"{where}: {field} is {value!r}")
        if event.get("ph") not in PHASES:
            errors.append(f"{where}: unknown phase {event.get('ph')!r}")
        ts = event.get("ts")
        if isinstance(ts, float) and not math.isfinite(ts):
            errors.append(f"{where}: ts {ts}")
        if "args" in event and not isinstance(event["args"], dict):
            errors.append(f"{where}: args is not an object")
        if event.get("ph") == "X":
            dur = event.get("dur")
            if not isinstance(dur, (int, float)) or isinstance(dur, bool) or not dur >= 0:
                errors.append(f"{where}: X event with dur {dur!r}")
            if not isinstance(event.get("cat", ""), str):
                errors.append(f"{where}: cat is not a string")
        if event.get("ph") == "M":
            args = event.get("args")
            name = event.get("name")
            if name in ("process_name", "thread_name") and not (
                isinstance(args, dict) and isinstance(args.get("name"), str)
            ):
                errors.append(f"{where}: {name} without a string args.name")
            if name in ("process_sort_index", "thread_sort_index") and not (
                isinstance(args, dict) and type(args.get("sort_index")) is int
            ):
                errors.append(f"{where}: {name} without an int args.sort_index")
    return errors


def complete(trace: Mapping[str, Any], cat: str | None = None) -> list[dict[str, Any]]:
    """The X events, of one category if given."""
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and (cat is None or e["cat"] == cat)]


def thread_names(trace: Mapping[str, Any]) -> dict[int, str]:
    return {
        e["tid"]: e["args"]["name"]
        for e in trace["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name"
    }


def ns(trace: Mapping[str, Any], us: float) -> int:
    """A ``ts`` back on the wall clock, in ns since the Unix epoch, as Perfetto reads it."""
    return round(us * 1000) + int(trace["metadata"]["ts_origin_unix_nano"])


def interval(trace: Mapping[str, Any], event: Mapping[str, Any]) -> tuple[int, int]:
    start = ns(trace, event["ts"])
    return start, start + round(event["dur"] * 1000)


def assert_tracks_are_stacks(trace: Mapping[str, Any]) -> None:
    """On every track, complete events nest or are disjoint, as the viewers require."""
    tracks: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for event in complete(trace):
        tracks.setdefault((event["pid"], event["tid"]), []).append(interval(trace, event))
    for spans in tracks.values():
        stack: list[int] = []
        for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1], "partially overlapping events on one track"
            stack.append(end)


def trace_of(tmr: maeltrace.Timer, **kwargs: Any) -> dict[str, Any]:
    clock = tmr.device_clock
    trace = chrome_trace(
        tmr.records(),
        tmr.anchor,
        failures=tmr.failures(),
        device_clock=clock.name if clock is not None else None,
        **kwargs,
    )
    assert schema_errors(trace) == []
    assert_tracks_are_stacks(trace)
    return trace


def train(tmr: maeltrace.Timer, epochs: int = 2, batches: int = 3, gpu: bool = False) -> None:
    for _ in range(epochs):
        with tmr.region("epoch"):
            for _ in tmr.iterate(range(batches)):
                with tmr.region("batch", gpu=gpu), tmr.region("forward", gpu=gpu):
                    sum(range(200))


def test_nested_regions_give_nested_complete_events() -> None:
    tmr = maeltrace.Timer()
    train(tmr)
    trace = trace_of(tmr)

    events = complete(trace)
    assert Counter(e["name"] for e in events) == {"epoch": 2, "io": 6, "batch": 6, "forward": 6}
    assert {e["cat"] for e in events} == {"cpu"}
    assert {e["tid"] for e in events} == {1}
    by_seq = {e["args"]["seq"]: e for e in events}
    names = {"batch": "epoch", "forward": "batch", "io": "epoch"}
    for event in events:
        parent_seq = event["args"].get("parent_seq")
        if event["name"] == "epoch":
            assert parent_seq is None
            continue
        parent = by_seq[parent_seq]
        assert parent["name"] == names[event["name"]]
        (start, end), (p_start, p_end) = interval(trace, event), interval(trace, parent)
        assert p_start <= start <= end <= p_end
    # The trace ordinal is the epoch's.
    epochs = [e for e in events if e["name"] == "epoch"]
    for event in events:
        epoch = epochs[event["args"]["trace"]]
        assert epoch["ts"] <= event["ts"] <= epoch["ts"] + epoch["dur"]


def test_ts_and_dur_are_the_records_on_the_wall_clock_to_the_ns() -> None:
    tmr = maeltrace.Timer()
    train(tmr)
    records = tmr.records()
    trace = trace_of(tmr)
    origin = trace["metadata"]["ts_origin_unix_nano"]
    assert origin % 1_000_000_000 == 0
    assert 0 <= tmr.anchor.wall_time_unix_nano - origin < 1_000_000_000

    by_seq = {e["args"]["seq"]: e for e in complete(trace)}
    assert len(by_seq) == len(records)
    for row in range(len(records)):
        event = by_seq[records.seq[row]]
        wall_start = tmr.anchor.to_unix_nano(records.start_ns[row])
        assert event["ts"] == (wall_start - origin) / 1000
        assert event["dur"] == (records.end_ns[row] - records.start_ns[row]) / 1000
        # Whole nanoseconds survive, read back as Perfetto does (llround(ts * 1000)).
        assert ns(trace, event["ts"]) == wall_start
        assert round(event["dur"] * 1000) == records.end_ns[row] - records.start_ns[row]
        assert event["name"] == str(records.keys[records.key_id[row]]) == event["args"]["key"]


def test_origin_zero_gives_unix_microseconds() -> None:
    tmr = maeltrace.Timer()
    train(tmr, epochs=1)
    records = tmr.records()
    trace = chrome_trace(records, tmr.anchor, origin_unix_nano=0)
    assert trace["metadata"]["ts_origin_unix_nano"] == 0  # type: ignore[index]
    by_seq = {e["args"]["seq"]: e for e in complete(trace)}
    for row in range(len(records)):
        unix_us = tmr.anchor.to_unix_nano(records.start_ns[row]) / 1000
        assert by_seq[records.seq[row]]["ts"] == unix_us


def test_events_come_sorted_metadata_first() -> None:
    tmr = maeltrace.Timer(device=fake_gpu_clock)
    train(tmr, gpu=True)
    events = trace_of(tmr)["traceEvents"]
    phases = [e["ph"] for e in events]
    first_x = phases.index("X")
    assert set(phases[:first_x]) == {"M"} and set(phases[first_x:]) == {"X"}
    stamps = [e["ts"] for e in events[first_x:]]
    assert stamps == sorted(stamps)


def test_a_region_on_another_thread_gets_its_own_named_track() -> None:
    tmr = maeltrace.Timer()

    def load() -> None:
        for _ in range(3):
            with tmr.region("io"):
                pass

    with tmr.region("epoch"):
        loader = threading.Thread(target=load, name="loader")
        loader.start()
        loader.join()
    trace = trace_of(tmr)

    names = thread_names(trace)
    tids = {e["name"]: e["tid"] for e in complete(trace)}
    assert names[tids["epoch"]] == threading.current_thread().name == "MainThread"
    assert names[tids["io"]] == "loader"
    assert tids["io"] != tids["epoch"]
    assert sorted(tids.values()) == [1, 2]
    assert all(e["args"].get("parent_seq") is None for e in complete(trace))
    threads = {t["name"]: t for t in trace["metadata"]["threads"]}
    assert threads["loader"]["native_id"] == loader.native_id
    assert threads["loader"]["tid"] == tids["io"]
    process = [e for e in trace["traceEvents"] if e["name"] == "process_name"]
    assert [e["args"]["name"] for e in process] == ["maeltrace"]


def test_a_failed_region_has_status_failed_and_its_description() -> None:
    tmr = maeltrace.Timer()
    with tmr.region("epoch"):
        with tmr.region("batch"):
            pass
        with pytest.raises(ValueError, match="boom"), tmr.region("batch"):
            raise ValueError("boom")
    events = complete(trace_of(tmr))
    statuses = [(e["name"], e["args"]["status"], e["args"].get("error")) for e in events]
    assert statuses == [
        ("epoch", "ok", None),
        ("batch", "ok", None),
        ("batch", "failed", "ValueError: boom"),
    ]
    # Without the descriptions the status is still there.
    bare = complete(chrome_trace(tmr.records(), tmr.anchor))
    assert [e["args"]["status"] for e in bare] == ["ok", "ok", "failed"]
    assert all("error" not in e["args"] for e in bare)


def test_device_times_get_a_gpu_track() -> None:
    tmr = maeltrace.Timer(device=fake_gpu_clock)
    train(tmr, gpu=True)
    assert tmr.device_clock is not None
    clock = tmr.device_clock.name
    records = tmr.records()
    trace = trace_of(tmr)

    gpu = complete(trace, "gpu")
    cpu = complete(trace, "cpu")
    assert Counter(e["name"] for e in gpu) == {"batch": 6, "forward": 6}
    assert Counter(e["name"] for e in cpu) == {"epoch": 2, "io": 6, "batch": 6, "forward": 6}
    names = thread_names(trace)
    assert {names[e["tid"]] for e in gpu} == {f"MainThread [gpu: {clock}]"}
    assert {e["tid"] for e in gpu}.isdisjoint({e["tid"] for e in cpu})

    origin = trace["metadata"]["ts_origin_unix_nano"]
    assert trace["metadata"]["device_clock"] == clock
    gpu_by_seq = {e["args"]["seq"]: e for e in gpu}
    cpu_by_seq = {e["args"]["seq"]: e for e in cpu}
    for row in range(len(records)):
        seq, device_ns = records.seq[row], records.device_ns[row]
        if device_ns == NO_DEVICE_TIME:
            assert seq not in gpu_by_seq and "gpu_ms" not in cpu_by_seq[seq]["args"]
            continue
        event = gpu_by_seq[seq]
        wall_start = tmr.anchor.to_unix_nano(records.device_start_ns[row])
        assert event["ts"] == (wall_start - origin) / 1000
        assert event["dur"] == device_ns / 1000
        assert event["args"]["gpu_ms"] == cpu_by_seq[seq]["args"]["gpu_ms"] == device_ns / 1e6
        assert interval(trace, event) == (wall_start, wall_start + device_ns)


def test_regions_that_overlap_without_nesting_move_to_an_auxiliary_track() -> None:
    tmr = maeltrace.Timer()
    with tmr.region("epoch"):
        tmr.start("batch")
        tmr.start("io")  # opened inside batch, closed after it
        tmr.end("batch")
        tmr.end("io")
        with tmr.region("batch"):
            pass
    trace = trace_of(tmr)  # every track nests properly

    names = thread_names(trace)
    placed = [(e["name"], names[e["tid"]]) for e in complete(trace)]
    assert placed == [
        ("epoch", "MainThread"),
        ("batch", "MainThread"),
        ("io", "MainThread [overlap 1]"),
        ("batch", "MainThread"),
    ]
    io = next(e for e in complete(trace) if e["name"] == "io")
    first_batch = complete(trace)[1]
    assert io["args"]["parent_seq"] == first_batch["args"]["seq"]


def test_the_written_file_is_compact_valid_json(tmp_path: Path) -> None:
    tmr = maeltrace.Timer(device=fake_gpu_clock)
    train(tmr, gpu=True)
    path = tmp_path / "trace.json"

    written = write_chrome_trace(
        path,
        chrome_trace(
            tmr.records(),
            tmr.anchor,
            pid=7,
            process_name="rank 0",
            failures=tmr.failures(),
            metadata={"run_id": tmr.run_id},
        ),
    )
    assert written == path
    text = path.read_text(encoding="utf-8")
    assert "\n" not in text and ", " not in text

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    trace = json.loads(text, parse_constant=no_constants)
    assert schema_errors(trace) == []
    assert set(trace) == {"traceEvents", "displayTimeUnit", "metadata"}
    assert trace["displayTimeUnit"] == "ms"
    assert {e["ph"] for e in trace["traceEvents"]} == {"M", "X"}
    assert {e["pid"] for e in trace["traceEvents"]} == {7}
    assert trace["metadata"]["run_id"] == tmr.run_id
    names = [e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"]
    assert names == ["rank 0"]
    origin = trace["metadata"]["ts_origin_unix_nano"]
    same = chrome_trace(
        tmr.records(),
        tmr.anchor,
        pid=7,
        process_name="rank 0",
        failures=tmr.failures(),
        metadata={"run_id": tmr.run_id},
        origin_unix_nano=origin,
    )
    assert trace == same

    with pytest.raises(FileExistsError):
        write_chrome_trace(path, chrome_trace(tmr.records(), tmr.anchor), exist_ok=False)


@pytest.mark.parametrize("enabled", [True, False])
def test_no_regions_give_a_valid_trace_without_complete_events(
    tmp_path: Path, enabled: bool
) -> None:
    tmr = maeltrace.Timer(enabled=enabled)
    records = tmr.records()
    assert len(records) == 0
    trace = chrome_trace(records, tmr.anchor)
    assert schema_errors(trace) == []
    assert complete(trace) == []
    path = write_chrome_trace(tmp_path / "empty.json", trace)
    loaded = json.loads(path.read_text(encoding="utf-8"))
    assert schema_errors(loaded) == [] and complete(loaded) == []
    assert loaded["metadata"]["regions"] == 0


def test_records_with_no_threads_name_no_tracks() -> None:
    records = Records.merge([], ())
    trace = chrome_trace(records, maeltrace.Timer().anchor, pid=1)
    assert thread_names(trace) == {}
    assert trace["metadata"]["threads"] == []  # type: ignore[index]


@pytest.mark.parametrize(
    ("trace", "error"),
    [
        ([], "not an object"),
        ({"traceEvents": {}}, "traceEvents"),
        ({"traceEvents": [{"ph": "X", "ts": 0, "pid": 1, "tid": 1, "dur": 1}]}, "name"),
        ({"traceEvents": [{"name": "a", "ph": "Q", "ts": 0, "pid": 1, "tid": 1}]}, "phase"),
        ({"traceEvents": [{"name": "a", "ph": "X", "ts": 0, "pid": 1, "tid": 1}]}, "dur"),
        (
            {"traceEvents": [{"name": "a", "ph": "X", "ts": 0, "pid": 1, "tid": 1, "dur": -1}]},
            "dur",
        ),
        ({"traceEvents": [{"name": "a", "ph": "X", "ts": "0", "pid": 1, "tid": 1}]}, "ts"),
        (
            {"traceEvents": [{"name": "thread_name", "ph": "M", "ts": 0, "pid": 1, "tid": 1}]},
            "args",
        ),
    ],
)
def test_the_validator_rejects_broken_traces(trace: object, error: str) -> None:
    errors = schema_errors(trace)
    assert errors and any(error in e for e in errors)
