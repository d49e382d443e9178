"""The record layout, and `Records`: every closed region of a timer as columns.

A recorder (compiled in maeltrace._hotpath, or maeltrace._recorder in pure Python) keeps one
log per thread: chunks of `CHUNK_REGIONS` regions, each region `FIELDS` int64 values, 56 bytes
in all. Reading merges the logs into columns, off the hot path.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
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
    "ThreadInfo",
]

F_KEY, F_SEQ, F_PARENT, F_START, F_END, F_STATUS, F_DEVICE = range(7)
FIELDS = 7
"""int64 values per region: key id, sequence number, parent's sequence number, start and end
(ns, `time.perf_counter_ns`), status, device duration (ns)."""

CHUNK_REGIONS = 4096
"""Regions per chunk: a thread's log grows by 224 KiB at a time."""

NO_PARENT = -1
"""Parent sequence number of a region that had no enclosing open region on its thread."""

NO_DEVICE_TIME = -1
"""Device duration of a region that has none (yet)."""

STATUS_OK = 0
"""The region's body completed."""

STATUS_FAILED = 1
"""The region's body raised; the region is kept but left out of the statistics."""


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

    @classmethod
    def merge(
        cls,
        logs: Sequence[tuple[tuple[int | None, int | None, str], bytes]],
        keys: tuple[Any, ...],
    ) -> Records:
        """Merges per-thread logs (thread info, native int64 bytes) into sorted columns."""
        flat = array("q")
        thread = array("q")
        for index, (_, data) in enumerate(logs):
            flat.frombytes(data)
            thread.extend([index] * (len(data) // (FIELDS * flat.itemsize)))
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
            threads=tuple(ThreadInfo(*info) for info, _ in logs),
        )
