"""The record store: compact, columnar, per-thread logs of closed regions.

Each thread appends to its own log, so recording takes no lock. A log is a list of
``array('q')`` chunks of `CHUNK_REGIONS` regions; a region is `FIELDS` consecutive int64
values (see the ``F_*`` offsets), 56 bytes in all. Reading merges the logs into columns,
off the hot path.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHUNK_REGIONS",
    "FIELDS",
    "NO_DEVICE_TIME",
    "NO_PARENT",
    "STATUS_FAILED",
    "STATUS_OK",
    "Records",
    "ThreadLog",
]

F_KEY, F_SEQ, F_PARENT, F_START, F_END, F_STATUS, F_DEVICE = range(7)
FIELDS = 7
"""int64 values per region: key id, sequence number, parent's sequence number, start and end
(ns, `time.perf_counter_ns`), status, device duration (ns)."""

CHUNK_REGIONS = 4096
"""Regions per chunk: a log grows by one chunk of 224 KiB at a time."""

CHUNK_VALUES = CHUNK_REGIONS * FIELDS

NO_PARENT = -1
"""Parent sequence number of a region that had no enclosing open region on its thread."""

NO_DEVICE_TIME = -1
"""Device duration of a region that has none (yet)."""

STATUS_OK = 0
STATUS_FAILED = 1


class ThreadLog:
    """What one thread has open and what it has recorded.

    Only its own thread writes to it. ``open`` maps a key id to ``(seq, parent, start_ns)``;
    ``stack`` lists the sequence numbers of the open regions, innermost last, to find parents.
    """

    __slots__ = ("chunks", "current", "ident", "name", "native_id", "open", "stack")

    def __init__(self, thread: threading.Thread) -> None:
        self.ident = thread.ident
        self.native_id = thread.native_id
        self.name = thread.name
        self.open: dict[int, tuple[int, int, int]] = {}
        self.stack: list[int] = []
        self.current = array("q")
        self.chunks: list[array[int]] = [self.current]

    def new_chunk(self) -> array[int]:
        """Starts the next chunk once the current one is full, and returns it."""
        self.current = array("q")
        self.chunks.append(self.current)
        return self.current

    def clear_records(self) -> None:
        """Drops the recorded regions; open regions stay open."""
        self.current = array("q")
        self.chunks = [self.current]

    def values(self) -> array[int]:
        """A copy of every value recorded so far, whole regions only."""
        out = array("q")
        for chunk in list(self.chunks):
            out.extend(chunk)
        del out[len(out) - len(out) % FIELDS :]
        return out

    def nbytes(self) -> int:
        """Bytes held by the chunks' buffers."""
        return sum(c.buffer_info()[1] * c.itemsize for c in self.chunks)


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """The thread a region was recorded on."""

    ident: int | None
    native_id: int | None
    name: str


@dataclass(frozen=True, slots=True)
class Records:
    """Every closed region of a timer, as columns in start order (one row per region).

    Attributes:
        key_id: index into ``keys``.
        seq: the region's sequence number, unique in the timer, increasing with start time.
        parent_seq: the enclosing region's sequence number, or `NO_PARENT`.
        start_ns: start on the `time.perf_counter_ns` clock.
        end_ns: end on the same clock.
        status: `STATUS_OK` or `STATUS_FAILED`.
        device_ns: device duration in ns, or `NO_DEVICE_TIME`.
        thread: index into ``threads``.
        keys: the keys, in order of first use.
        threads: the threads that recorded regions.
    """

    key_id: array[int]
    seq: array[int]
    parent_seq: array[int]
    start_ns: array[int]
    end_ns: array[int]
    status: array[int]
    device_ns: array[int]
    thread: array[int]
    keys: tuple[Any, ...]
    threads: tuple[ThreadInfo, ...]

    def __len__(self) -> int:
        return len(self.seq)

    def rows(self, key_id: int) -> Iterator[int]:
        """Row indices of one key, in start order."""
        return (i for i, k in enumerate(self.key_id) if k == key_id)

    def durations_ns(self, key_id: int) -> list[int]:
        """CPU durations of one key's regions, in start order."""
        start, end = self.start_ns, self.end_ns
        return [end[i] - start[i] for i in self.rows(key_id)]

    @classmethod
    def merge(cls, logs: list[ThreadLog], keys: tuple[Any, ...]) -> Records:
        """Merges per-thread logs into columns sorted by sequence number."""
        flat = array("q")
        thread = array("q")
        infos = []
        for index, log in enumerate(logs):
            values = log.values()
            flat.extend(values)
            thread.extend([index] * (len(values) // FIELDS))
            infos.append(ThreadInfo(log.ident, log.native_id, log.name))
        columns = [flat[f::FIELDS] for f in range(FIELDS)]
        # Logs hold regions in order of their end; readers want them in order of their start.
        seq = columns[F_SEQ]
        if any(seq[i] > seq[i + 1] for i in range(len(seq) - 1)):
            order = sorted(range(len(seq)), key=seq.__getitem__)
            columns = [array("q", [col[i] for i in order]) for col in columns]
            thread = array("q", [thread[i] for i in order])
        return cls(
            key_id=columns[F_KEY],
            seq=columns[F_SEQ],
            parent_seq=columns[F_PARENT],
            start_ns=columns[F_START],
            end_ns=columns[F_END],
            status=columns[F_STATUS],
            device_ns=columns[F_DEVICE],
            thread=thread,
            keys=keys,
            threads=tuple(infos),
        )
