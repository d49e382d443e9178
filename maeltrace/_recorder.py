"""The pure-Python recorder: the fallback for, and the reference of, maeltrace._hotpath.

Both record the same thing the same way; the test suite runs against each. Each thread owns a
`ThreadLog` found through a `threading.local`, so recording takes no lock. A closed region is
`FIELDS` int64 values appended to the thread's current ``array('q')`` chunk (see
`maeltrace.records` for the layout); open regions live in a list ordered by open time, which is
also the parent stack. A discarded (cancelled) region is nobody's parent: its children move
to its own parent.
"""

from __future__ import annotations

import itertools
import operator
import sys
import threading
from array import array
from collections.abc import Callable
from contextvars import ContextVar
from itertools import compress
from time import perf_counter_ns
from types import TracebackType
from typing import TypeVar

from maeltrace.keys import Key
from maeltrace.records import (
    CHUNK_REGIONS,
    FIELDS,
    NO_PARENT,
    NO_TRACE,
    STATUS_FAILED,
    STATUS_OK,
)

__all__ = ["PyRecorder", "PyRegion", "ThreadInfoTuple", "otel_span_probe", "release_free_memory"]

ThreadInfoTuple = tuple[int | None, int | None, str]
T = TypeVar("T")

_CHUNK_VALUES = CHUNK_REGIONS * FIELDS

SpanProbe = tuple[ContextVar[dict[str, object]], str]
"""OpenTelemetry's context variable and the key of the current span in its Context."""


def otel_span_probe() -> SpanProbe | None:
    """Where OpenTelemetry keeps the active span, so a recorder can see one without a call.

    OpenTelemetry's default runtime context keeps the current ``Context`` (a dict) in a
    `contextvars.ContextVar`; the active span is its value under the current-span key. Both
    are private names of the API package, so anything unexpected (another runtime context
    chosen with ``OTEL_PYTHON_CONTEXT``, a version that moved them) gives None, and the
    recorder then asks the root hook at every root region, as it did before.

    Returns:
        (the context variable, the span key), or None; None too where OpenTelemetry was not
        imported (this never imports it).
    """
    if "opentelemetry.trace" not in sys.modules:
        return None
    try:
        from opentelemetry import context as otel_context
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace.propagation import _SPAN_KEY
    except ImportError:
        return None
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    if type(runtime) is not ContextVarsRuntimeContext:  # a subclass may read it otherwise
        return None
    var = getattr(runtime, "_current_context", None)
    if not isinstance(var, ContextVar) or not isinstance(_SPAN_KEY, str):
        return None
    return var, _SPAN_KEY


def release_free_memory() -> None:
    """Hands the C heap's free pages back to the system (``malloc_trim(0)`` on glibc).

    Large arrays live on the C heap, and glibc keeps what they freed (and each arena an
    export thread used) for reuse; without this a process's RSS stays at its high-water mark
    after `maeltrace.Timer.reset`. Elsewhere, and where the call is unavailable, it does
    nothing.
    """
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = _find_malloc_trim()
    _malloc_trim()


def _find_malloc_trim() -> Callable[[], object]:
    try:
        from maeltrace import _hotpath
    except ImportError:
        pass
    else:
        return _hotpath.release_free_memory
    import ctypes  # here, not at the top: only reset() needs it, and only without the build

    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc; absent on musl, macOS, Windows
    except (AttributeError, OSError, TypeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


_malloc_trim: Callable[[], object] | None = None


class ThreadLog:
    """What one thread has open and what it has recorded; only its own thread writes to it.

    ``open`` lists ``(key_id, seq, parent_seq, start_ns, device, trace)`` per open region,
    oldest first; ``device`` is the device clock's handle of a gpu region, else None; ``trace``
    the ordinal of the enclosing trace-key region, else `NO_TRACE`.
    """

    __slots__ = ("chunks", "current", "info", "open")

    def __init__(self, info: ThreadInfoTuple) -> None:
        self.info = info
        self.open: list[tuple[int, int, int, int, object, int]] = []
        self.current = array("q")
        self.chunks: list[array[int]] = [self.current]

    def clear_records(self) -> None:
        self.current = array("q")
        self.chunks = [self.current]

    def key_durations(self, key_id: int, seqs: array[int], durations: array[int]) -> None:
        """Appends the sequence numbers and durations of ``key_id``'s completed regions."""
        # Column slices and C iterators (map, compress): no Python-level loop per region;
        # fromlist(list(...)) fills an array faster than extend(iterator).
        for chunk in list(self.chunks):
            n = len(chunk) // FIELDS * FIELDS  # whole regions only
            keys = chunk[0:n:FIELDS]
            statuses = chunk[5:n:FIELDS]
            everything_ok = statuses.count(STATUS_OK) == len(statuses)
            if everything_ok and keys.count(key_id) == len(keys):  # a chunk of this key only
                seqs.extend(chunk[1:n:FIELDS])
                durations.fromlist(list(map(operator.sub, chunk[4:n:FIELDS], chunk[3:n:FIELDS])))
                continue
            if everything_ok:
                picked: list[bool] = list(map(key_id.__eq__, keys))
            else:
                picked = list(
                    map(operator.and_, map(key_id.__eq__, keys), map(STATUS_OK.__eq__, statuses))
                )
            if not any(picked):
                continue
            seqs.extend(compress(chunk[1:n:FIELDS], picked))
            ends = compress(chunk[4:n:FIELDS], picked)
            durations.fromlist(list(map(operator.sub, ends, compress(chunk[3:n:FIELDS], picked))))

    def values(self, skip: int = 0) -> bytes:
        """Every whole region recorded so far after the first ``skip``, as int64 bytes."""
        data = b"".join(chunk.tobytes() for chunk in list(self.chunks))
        whole = len(data) - len(data) % (FIELDS * 8)
        return data[max(0, skip) * FIELDS * 8 : whole]


class PyRecorder:
    """Per-thread region recorder; see the module docstring.

    Args:
        key_ids: key -> id, shared with the timer, which adds to it through ``register_key``.
        keys: id -> key, shared with the timer.
        register_key: validates a key on first use and returns its id.
        region_error: the exception type for regions opened or closed out of order.
        on_failure: called with (seq, exception) for each region closed as failed.
        thread_info: returns (ident, native_id, name) of the calling thread.
        device_open: called with the key id before a gpu region opens; returns its handle.
        device_close: called with (seq, handle, status) after a gpu region closed.
        device_block: called with (handle or None, value) by `PyRegion.block`.
    """

    def __init__(
        self,
        key_ids: dict[Key, int],
        keys: list[Key],
        register_key: Callable[[object], int],
        region_error: type[Exception],
        on_failure: Callable[[int, BaseException | None], None],
        thread_info: Callable[[], ThreadInfoTuple],
        device_open: Callable[[int], object],
        device_close: Callable[[int, object, int], None],
        device_block: Callable[[object, object], object],
    ) -> None:
        self._device_open = device_open
        self._device_close = device_close
        self._device_block = device_block
        self._key_ids = key_ids
        self._keys = keys
        self._register_key = register_key
        self._region_error = region_error
        self._on_failure = on_failure
        self._thread_info = thread_info
        self._local = threading.local()
        self._logs: list[ThreadLog] = []
        self._next_seq = itertools.count().__next__  # atomic under the GIL
        self._trace_key_id = -1
        self._on_trace_closed: Callable[[int], object] | None = None
        self._on_root_open: Callable[[int], object] | None = None
        self._root_probe: SpanProbe | None = None
        self._next_trace = itertools.count().__next__

    def _log(self) -> ThreadLog:
        try:
            log: ThreadLog = self._local.log
        except AttributeError:
            log = ThreadLog(self._thread_info())
            self._logs.append(log)
            self._local.log = log
        return log

    def _key_id(self, key: object) -> int:
        try:
            return self._key_ids[key]  # type: ignore[index]  # any hashable finds or misses
        except (KeyError, TypeError):
            return self._register_key(key)

    def _find(self, log: ThreadLog, key_id: int) -> int:
        regions = log.open
        for i in range(len(regions) - 1, -1, -1):
            if regions[i][0] == key_id:
                return i
        return -1

    def open(self, key_id: int, gpu: bool = False) -> None:
        log = self._log()
        if self._find(log, key_id) >= 0:
            raise self._region_error(
                f"region {self._keys[key_id]!r} is already open on this thread; "
                "end it before starting it again"
            )
        device = self._device_open(key_id) if gpu else None
        regions = log.open
        seq = self._next_seq()
        if not regions and self._on_root_open is not None:
            probe = self._root_probe
            if probe is None:
                self._on_root_open(seq)
            else:
                try:
                    context = probe[0].get()
                except LookupError:  # never set, and no default: no span
                    context = {}
                if not isinstance(context, dict) or context.get(probe[1]) is not None:
                    self._on_root_open(seq)
        parent = regions[-1][1] if regions else NO_PARENT
        if key_id == self._trace_key_id:
            trace = self._next_trace()
        else:
            trace = regions[-1][5] if regions else NO_TRACE
        regions.append((key_id, seq, parent, perf_counter_ns(), device, trace))

    def close(self, key_id: int, status: int, end: int | None = None) -> int:
        if end is None:
            end = perf_counter_ns()
        log = self._log()
        i = self._find(log, key_id)
        if i < 0:
            raise self._region_error(
                f"region {self._keys[key_id]!r} was ended but is not open on this thread"
            )
        _, seq, parent, start, device, trace = log.open.pop(i)
        chunk = log.current
        if len(chunk) >= _CHUNK_VALUES:
            chunk = log.current = array("q")
            log.chunks.append(chunk)
        chunk.extend((key_id, seq, parent, start, end, status, trace))
        if device is not None:
            self._device_close(seq, device, status)
        if key_id == self._trace_key_id and self._on_trace_closed is not None:
            self._on_trace_closed(trace)
        return seq

    def fail(self, key_id: int, exc: BaseException | None) -> int:
        seq = self.close(key_id, STATUS_FAILED, perf_counter_ns())
        self._on_failure(seq, exc)
        return seq

    def discard(self, key_id: int) -> None:
        """Forgets an open region; its children, closed or open, move to its parent."""
        log = self._log()
        i = self._find(log, key_id)
        if i < 0:
            raise self._region_error(f"region {self._keys[key_id]!r} is not open on this thread")
        _, seq, parent, start, _, trace = log.open.pop(i)
        # A trace-key region's descendants carry its ordinal; without it they join the
        # parent's trace, so trace ids agree along the parent links.
        moved_trace = (
            self._parent_trace(log, parent, start) if key_id == self._trace_key_id else trace
        )
        opened = log.open
        for j in range(i, len(opened)):  # only regions opened after it can be its children
            k, s, p, b, d, t = opened[j]
            opened[j] = (k, s, parent if p == seq else p, b, d, moved_trace if t == trace else t)
        # Its closed children were recorded after it opened, so at the end of the log: ends are
        # read at close, in order, and the first record that ended before it started stops
        # the walk (usually at once: a cancelled region rarely has children).
        for chunk in reversed(log.chunks):
            for at in range(len(chunk) // FIELDS * FIELDS - FIELDS, -1, -FIELDS):
                if chunk[at + 4] < start:
                    return
                if chunk[at + 2] == seq:
                    chunk[at + 2] = parent
                if chunk[at + 6] == trace:
                    chunk[at + 6] = moved_trace

    def _parent_trace(self, log: ThreadLog, parent: int, start: int) -> int:
        """The trace ordinal of region ``parent`` (open, or closed after ``start``)."""
        if parent == NO_PARENT:
            return NO_TRACE
        for region in log.open:
            if region[1] == parent:
                return region[5]
        for chunk in reversed(log.chunks):
            for at in range(len(chunk) // FIELDS * FIELDS - FIELDS, -1, -FIELDS):
                if chunk[at + 1] == parent:
                    return chunk[at + 6]
                if chunk[at + 4] < start:  # cannot happen: it was open when the region opened
                    return NO_TRACE
        return NO_TRACE

    def set_trace_key(self, key_id: int, on_trace_closed: Callable[[int], object] | None) -> None:
        self._trace_key_id = key_id
        self._on_trace_closed = on_trace_closed

    def set_root_hook(
        self,
        hook: Callable[[int], object] | None,
        context_var: ContextVar[dict[str, object]] | None = None,
        span_key: str | None = None,
    ) -> None:
        """Calls ``hook(seq)`` before each root region opens; with ``context_var``, only while
        the dict it holds has a value under ``span_key`` (see `otel_span_probe`)."""
        if context_var is not None and (
            not isinstance(context_var, ContextVar) or not isinstance(span_key, str)
        ):
            raise TypeError("set_root_hook: context_var must be a ContextVar and span_key a str")
        self._on_root_open = hook
        self._root_probe = (
            None if context_var is None or span_key is None else (context_var, span_key)
        )

    def is_open(self, key_id: int) -> bool:
        return self._find(self._log(), key_id) >= 0

    def open_seq(self, key_id: int) -> int:
        log = self._log()
        i = self._find(log, key_id)
        return int(log.open[i][1]) if i >= 0 else -1

    def start(self, key: object, gpu: bool = False) -> None:
        self.open(self._key_id(key), gpu)

    def end(self, key: object) -> None:
        end = perf_counter_ns()
        self.close(self._key_id(key), STATUS_OK, end)

    def region(self, key: Key, key_id: int, gpu: bool = False) -> PyRegion:
        return PyRegion(self, key, key_id, gpu)

    def block(self, key_id: int, value: object) -> object:
        log = self._log()
        i = self._find(log, key_id)
        if i < 0:
            raise self._region_error(f"region {self._keys[key_id]!r} is not open on this thread")
        return self._device_block(log.open[i][4], value)

    def snapshot(self, since: list[int] | None = None) -> list[tuple[ThreadInfoTuple, bytes]]:
        skips = since or []
        return [
            (log.info, log.values(skips[i] if i < len(skips) else 0))
            for i, log in enumerate(list(self._logs))
        ]

    def clear_records(self) -> None:
        for log in list(self._logs):
            log.clear_records()
        release_free_memory()

    def key_durations(self, key_id: int) -> tuple[array[int], array[int]]:
        """(seqs, durations) of ``key_id``'s completed regions, in start order, read from the
        logs without building any other column."""
        seqs: array[int] = array("q")
        durations: array[int] = array("q")
        runs = 0
        for log in list(self._logs):
            before = len(seqs)
            log.key_durations(key_id, seqs, durations)
            runs += len(seqs) > before
        # One thread's regions of a key cannot overlap, so its run is in order already; only
        # several threads' runs need sorting.
        if runs > 1 and any(seqs[i] > seqs[i + 1] for i in range(len(seqs) - 1)):
            order = sorted(range(len(seqs)), key=seqs.__getitem__)
            seqs = array("q", [seqs[i] for i in order])
            durations = array("q", [durations[i] for i in order])
        return seqs, durations

    def after_fork(self) -> None:
        mine: ThreadLog | None = getattr(self._local, "log", None)
        self._logs = []
        if mine is not None:
            mine.open.clear()
            mine.clear_records()
            mine.info = self._thread_info()
            self._logs.append(mine)

    def nbytes(self) -> int:
        return sum(c.buffer_info()[1] * c.itemsize for log in self._logs for c in log.chunks)


class PyRegion:
    """Context manager timing its body under one key; reusable, shared by threads."""

    __slots__ = ("_key_id", "_recorder", "gpu", "key")

    def __init__(self, recorder: PyRecorder, key: Key, key_id: int, gpu: bool) -> None:
        self._recorder = recorder
        self.key = key
        self._key_id = key_id
        self.gpu = gpu

    def __enter__(self) -> PyRegion:
        self._recorder.open(self._key_id, self.gpu)
        return self

    def block(self, value: T) -> T:
        """Waits until ``value`` (the region's outputs) is computed; returns it."""
        return self._recorder.block(self._key_id, value)  # type: ignore[return-value]  # the hook returns its input

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        end = perf_counter_ns()
        if exc_type is None:
            self._recorder.close(self._key_id, STATUS_OK, end)
        else:
            seq = self._recorder.close(self._key_id, STATUS_FAILED, end)
            self._recorder._on_failure(seq, exc)

    def __repr__(self) -> str:
        return f"Region({self.key!r})"
