"""Chrome Trace Event Format: a timer's regions as a trace for Perfetto and chrome://tracing.

`chrome_trace` turns a `Records` snapshot into the JSON Object Format
(``{"traceEvents": [...], "displayTimeUnit": "ms", "metadata": {...}}``) that
https://ui.perfetto.dev and chrome://tracing open: one complete event (``"ph": "X"``) per
region on its thread's track, so nested regions (epoch > batch > forward) draw as a flame chart,
and one more per region with a device time, on a GPU track beside its thread's.

Timestamps. ``ts`` and ``dur`` are microseconds, as the format wants, written as floats that
carry whole nanoseconds (``ns / 1000``). ``ts`` counts from an origin on the wall clock,
``metadata["ts_origin_unix_nano"]`` (by default the whole second at or before the timer's
anchor), and not from the Unix epoch: today's Unix time in microseconds is about 1.7e15, where
a float64 only resolves 0.25 us, and Perfetto reads a float ``ts`` through a double
(``llround(ts * 1000)``). From the origin, ``ts`` stays exact to the nanosecond for three weeks,
so a region that ends a few nanoseconds before its parent still nests inside it. Pass
``origin_unix_nano=0`` for absolute Unix microseconds at that coarser resolution, or one value
shared by every process of a run to lay their traces on one timeline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from maeltrace._clock import ClockAnchor
from maeltrace._files import atomic_write_text
from maeltrace._version import __version__
from maeltrace.records import (
    FLAG_COMPILED,
    NO_DEVICE_TIME,
    NO_PARENT,
    NO_TRACE,
    STATUS_OK,
    Records,
)

__all__ = ["chrome_trace", "write_chrome_trace"]

_NS_PER_S = 1_000_000_000

Event = dict[str, object]


@dataclass(slots=True)
class _Track:
    """One row of the trace: a thread's CPU or GPU lane.

    Attributes:
        tid: the ``tid`` its events carry.
        name: the ``thread_name`` it is shown under.
    """

    tid: int
    name: str


@dataclass(slots=True)
class _Slice:
    """A complete event before it is written: a region's CPU or device interval, in ns."""

    start: int
    end: int
    row: int
    gpu: bool


class _Lanes:
    """Assigns intervals of one thread to lanes in which they nest properly.

    Complete events on one track must nest or be disjoint: a viewer rebuilds each track's stack
    of slices from the times alone. maeltrace allows regions of different keys to overlap on
    one thread without nesting (``start("batch"); start("io"); end("batch"); end("io")``).
    Left on one track, such a pair is drawn wrong: Perfetto's importer makes the later region a
    child of the earlier one although it outlives it, and when a later event starts after the
    earlier region's end it pops the top of its stack, which is the wrong slice, so regions
    after the overlap can nest under the wrong parents too; chrome://tracing reports slices
    that are not properly nested. The damage would reach well past the overlap itself. So a
    region that does not fit inside the regions open on the thread's track goes to the first
    auxiliary track of that thread where it does nest (a new one if none does): every region
    keeps its exact times, every track is a valid stack, and the overlap is plain to see.
    Properly nested regions, the common case, all stay on the thread's own track.
    """

    def __init__(self) -> None:
        self._stacks: list[list[int]] = []

    def place(self, start: int, end: int) -> int:
        """The lane of an interval; intervals come in order of start, longer first on ties."""
        for lane, stack in enumerate(self._stacks):
            while stack and stack[-1] <= start:
                stack.pop()
            if not stack or end <= stack[-1]:
                stack.append(end)
                return lane
        self._stacks.append([end])
        return len(self._stacks) - 1


def _order(piece: _Slice) -> tuple[int, int, int]:
    """Start order; on a tie the longer interval first, as it encloses the shorter."""
    return (piece.start, -piece.end, piece.row)


def _metadata_event(name: str, pid: int, tid: int, args: dict[str, object]) -> Event:
    return {"name": name, "ph": "M", "ts": 0, "pid": pid, "tid": tid, "args": args}


def _default_origin(records: Records, anchor: ClockAnchor) -> int:
    """The whole second at or before both the anchor and the earliest time in the trace."""
    earliest = anchor.perf_counter_ns
    if len(records):
        earliest = min(earliest, min(records.start_ns))
    device_starts = [
        s
        for s, d in zip(records.device_start_ns, records.device_ns, strict=True)
        if d != NO_DEVICE_TIME and s != NO_DEVICE_TIME
    ]
    if device_starts:
        earliest = min(earliest, min(device_starts))
    wall = anchor.to_unix_nano(earliest)
    return wall - wall % _NS_PER_S


def chrome_trace(
    records: Records,
    anchor: ClockAnchor,
    *,
    pid: int | None = None,
    process_name: str = "maeltrace",
    failures: Mapping[int, str] | None = None,
    device_clock: str | None = None,
    metadata: Mapping[str, object] | None = None,
    origin_unix_nano: int | None = None,
) -> dict[str, object]:
    """A timer's regions as a Chrome trace (JSON Object Format), ready for `json.dumps`.

    Every region becomes a complete event (``"ph": "X"``) named by its key, with ``cat``
    ``cpu``, on the track of the thread that recorded it (``tid`` 1, 2... in the order of
    ``records.threads``, named by a ``thread_name`` metadata event). ``args`` hold the key, the
    region's ``seq``, its ``parent_seq`` and ``trace`` ordinal (where it has them), its
    ``status`` (``ok`` or ``failed``, with the ``error`` description where ``failures`` has
    one), ``gpu_ms`` where it has a device time, and ``compiled`` where that time compiled code.
    A region with a device time also gets an event with ``cat`` ``gpu`` on its thread's GPU
    track (named ``<thread> [gpu: <clock>]``), placed at its device start. Regions that overlap
    others on their thread without nesting go to an auxiliary track of the thread
    (``<thread> [overlap 1]``...); see `_Lanes`. Metadata events come first, then every
    complete event in order of ``ts`` (ties keep start order, so a parent precedes its child).

    Args:
        records: the regions, from `maeltrace.Timer.records`.
        anchor: the clock anchor of the timer that recorded them (`maeltrace.Timer.anchor`).
        pid: the ``pid`` of every event; default this process's id.
        process_name: the name the viewer shows for the process.
        failures: descriptions of failed regions by ``seq`` (`maeltrace.Timer.failures`).
        device_clock: the name of the device clock (`maeltrace.Timer.device_clock` ``.name``),
            shown in the GPU tracks' names.
        metadata: more entries for the top-level ``metadata`` object, which chrome://tracing
            shows under "Metadata"; they replace the writer's own entries of the same name.
            Must be JSON-serializable.
        origin_unix_nano: the wall-clock time, in ns since the Unix epoch, that ``ts`` counts
            from; default the whole second at or before the anchor (see the module's docs).

    Returns:
        ``{"traceEvents": [...], "displayTimeUnit": "ms", "metadata": {...}}``.
    """
    failures = failures or {}
    pid = os.getpid() if pid is None else pid
    origin = _default_origin(records, anchor) if origin_unix_nano is None else origin_unix_nano
    keys = [str(key) for key in records.keys]
    gpu_label = f"gpu: {device_clock}" if device_clock else "gpu"

    def us(perf_ns: int) -> float:
        return (anchor.to_unix_nano(perf_ns) - origin) / 1000

    # Intervals per thread, CPU and device apart.
    slices: dict[tuple[int, bool], list[_Slice]] = {}
    for row in range(len(records)):
        thread = records.thread[row]
        slices.setdefault((thread, False), []).append(
            _Slice(records.start_ns[row], records.end_ns[row], row, False)
        )
        device_ns = records.device_ns[row]
        device_start = records.device_start_ns[row]
        if device_ns != NO_DEVICE_TIME and device_start != NO_DEVICE_TIME:
            slices.setdefault((thread, True), []).append(
                _Slice(device_start, device_start + device_ns, row, True)
            )

    # Tracks: thread i keeps tid i + 1 whatever else the trace holds (tid 0 is the idle task
    # to Perfetto); auxiliary and GPU tracks take the tids after the last thread's, and sort
    # indices show each thread's tracks together: its own, its overlaps, its GPU ones.
    tracks: dict[tuple[int, bool, int], _Track] = {}
    next_tid = len(records.threads) + 1
    placed: list[tuple[_Slice, _Track]] = []
    for thread, thread_info in enumerate(records.threads):
        for gpu in (False, True):
            lanes = _Lanes()
            for piece in sorted(slices.get((thread, gpu), ()), key=_order):
                lane = lanes.place(piece.start, piece.end)
                track = tracks.get((thread, gpu, lane))
                if track is None:
                    if not gpu and lane == 0:
                        tid = thread + 1
                    else:
                        tid, next_tid = next_tid, next_tid + 1
                    name = f"{thread_info.name} [{gpu_label}]" if gpu else thread_info.name
                    if lane:
                        name += f" [overlap {lane}]"
                    track = tracks[(thread, gpu, lane)] = _Track(tid, name)
                placed.append((piece, track))

    # The process's name on the first thread's tid: Perfetto creates a thread for every
    # event's (pid, tid), and tid 0 would merge with its idle task.
    events: list[Event] = [_metadata_event("process_name", pid, 1, {"name": process_name})]
    for sort_index, track_key in enumerate(sorted(tracks)):
        track = tracks[track_key]
        events.append(_metadata_event("thread_name", pid, track.tid, {"name": track.name}))
        events.append(
            _metadata_event("thread_sort_index", pid, track.tid, {"sort_index": sort_index})
        )

    placed.sort(key=lambda p: _order(p[0]))
    for piece, track in placed:
        row = piece.row
        args: dict[str, object] = {"key": keys[records.key_id[row]], "seq": records.seq[row]}
        if records.parent_seq[row] != NO_PARENT:
            args["parent_seq"] = records.parent_seq[row]
        if records.trace[row] != NO_TRACE:
            args["trace"] = records.trace[row]
        if records.status[row] == STATUS_OK:
            args["status"] = "ok"
        else:
            args["status"] = "failed"
            error = failures.get(records.seq[row])
            if error is not None:
                args["error"] = error
        if records.device_ns[row] != NO_DEVICE_TIME:
            args["gpu_ms"] = records.device_ns[row] / 1e6
            if records.device_flags[row] & FLAG_COMPILED:
                args["compiled"] = True
        if piece.gpu:
            args["cpu_ms"] = (records.end_ns[row] - records.start_ns[row]) / 1e6
        events.append(
            {
                "name": args["key"],
                "cat": "gpu" if piece.gpu else "cpu",
                "ph": "X",
                "ts": us(piece.start),
                "dur": (piece.end - piece.start) / 1000,
                "pid": pid,
                "tid": track.tid,
                "args": args,
            }
        )

    info: dict[str, object] = {
        "producer": f"maeltrace {__version__}",
        "clock": "time.perf_counter_ns",
        "ts_origin_unix_nano": origin,
        "clock_anchor": {
            "wall_time_unix_nano": anchor.wall_time_unix_nano,
            "perf_counter_ns": anchor.perf_counter_ns,
            "uncertainty_ns": anchor.uncertainty_ns,
        },
        "device_clock": device_clock,
        "threads": [
            {
                "tid": index + 1,
                "name": thread.name,
                "ident": thread.ident,
                "native_id": thread.native_id,
            }
            for index, thread in enumerate(records.threads)
        ],
        "regions": len(records),
    }
    info.update(metadata or {})
    return {"traceEvents": events, "displayTimeUnit": "ms", "metadata": info}


def write_chrome_trace(
    path: str | os.PathLike[str], trace: Mapping[str, object], *, exist_ok: bool = True
) -> Path:
    """Writes a trace from `chrome_trace` to ``path`` as compact JSON, atomically.

    Name it ``*.json`` and open it in https://ui.perfetto.dev or chrome://tracing;
    ``exist_ok=False`` refuses to replace a file.

    Raises:
        FileExistsError: the file exists and ``exist_ok`` is false.
        TypeError: the trace's metadata holds a value JSON cannot encode.
        ValueError: it holds a NaN or infinite float (not valid JSON).
        OSError: the folder does not exist or cannot be written.
    """
    text = json.dumps(trace, separators=(",", ":"), allow_nan=False)
    return atomic_write_text(path, text, exist_ok=exist_ok)
