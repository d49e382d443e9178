"""The outbox: export requests on disk before they are sent, marked once the endpoint took them.

A run's spans must survive a crash of the process that recorded them, whatever the endpoint
does. So each request goes into the outbox file before it is sent, and a small acknowledgement
record follows once the endpoint accepted it; `maeltrace replay` (`Outbox.pending` through
`maeltrace.otel._replay.replay`) sends what has no acknowledgement. A SIGKILL then loses at most
what was never built (the epoch in progress); one that comes after the endpoint accepted a
request and before its acknowledgement was written makes a replay send it again, under the same
span ids, so a backend may see those spans twice.

The file is a sequence of records, each a 16-byte header (``<4sIII``: a tag, the payload's
length, its CRC-32, and the number of spans) and the payload:

- ``MTS1``: a serialised ``ExportTraceServiceRequest``;
- ``MTA1``: an acknowledgement, whose payload is the file offset (``<Q``) of the request record
  that the endpoint accepted.

One process writes a file at a time (an exclusive ``flock``; its threads take turns): a second
timer of the same process or run folder takes the next free name. A record cut short (a crash or
a full disk in the middle of a write) is recognised by its length or CRC: readers stop there
with one warning, and a writer cuts it off before appending.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from maeltrace.errors import ExportWarning, OutboxBusy, warn_safely

__all__ = [
    "OUTBOX_SUFFIX",
    "Outbox",
    "OutboxBusy",
    "OutboxEntry",
    "is_outbox",
    "outbox_path",
    "read_outbox",
]

OUTBOX_SUFFIX = ".otlp.outbox"
"""Suffix of outbox files: ``outbox<.rankN>[.K].otlp.outbox`` in the run folder."""

_HEADER = struct.Struct("<4sIII")
_REQUEST = b"MTS1"
_ACK = b"MTA1"
_OFFSET = struct.Struct("<Q")
_MAX_RECORD = 1 << 30  # a length beyond this is a torn or foreign header, not a record


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A request in the outbox.

    Attributes:
        offset: where its record starts in the file (its id for the acknowledgement).
        body: the serialised ``ExportTraceServiceRequest``.
        spans: how many spans it holds.
    """

    offset: int
    body: bytes
    spans: int


def outbox_path(folder: Path, suffix: str, number: int = 1) -> Path:
    """The name of a timer's outbox in ``folder``: ``outbox<suffix>[.<number>].otlp.outbox``."""
    extra = "" if number == 1 else f".{number}"
    return folder / f"outbox{suffix}{extra}{OUTBOX_SUFFIX}"


def is_outbox(path: Path) -> bool:
    """Whether ``path`` names an outbox file (by its suffix)."""
    return path.name.endswith(OUTBOX_SUFFIX)


def _scan(file: BinaryIO, path: Path) -> tuple[list[OutboxEntry], set[int], int]:
    """Reads every complete record: the requests, the acknowledged offsets, and where the last
    complete record ends (a torn one after it is reported once)."""
    requests: list[OutboxEntry] = []
    acked: set[int] = set()
    offset = 0
    file.seek(0)
    while True:
        header = file.read(_HEADER.size)
        if not header:
            break
        torn = len(header) < _HEADER.size
        if not torn:
            tag, length, crc, spans = _HEADER.unpack(header)
            torn = tag not in (_REQUEST, _ACK) or length > _MAX_RECORD
        if not torn:
            payload = file.read(length)
            torn = len(payload) < length or zlib.crc32(payload) != crc
        if torn:
            warn_safely(
                f"maeltrace: {path} ends in an incomplete record at byte {offset} "
                "(a crash or a full disk while it was written); the records before it are kept",
                ExportWarning,
                stacklevel=3,
            )
            break
        if tag == _REQUEST:
            requests.append(OutboxEntry(offset, payload, spans))
        elif len(payload) == _OFFSET.size:
            acked.add(_OFFSET.unpack(payload)[0])
        offset += _HEADER.size + length
    return requests, acked, offset


class Outbox:
    """One writer's outbox file: append requests, acknowledge them, read back what is pending.

    Args:
        path: the file; created if missing. An existing file is continued: its pending requests
            stay pending (`pending`), and an incomplete last record is cut off.

    Raises:
        OutboxBusy: another process holds the file.
        OSError: the file cannot be opened or created.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutboxBusy(f"{self.path} is in use by another process") from err
            raise
        self._file = os.fdopen(fd, "r+b", buffering=0)
        requests, acked, end = _scan(self._file, self.path)
        self._end = end
        if os.fstat(fd).st_size != end:
            os.ftruncate(fd, end)
        self._pending = {e.offset: e for e in requests if e.offset not in acked}
        self._lock = threading.Lock()

    @classmethod
    def open_free(cls, folder: Path, suffix: str, tries: int = 64) -> Outbox:
        """The first outbox of ``folder`` that no other writer holds (a second timer of the same
        run folder gets ``outbox<suffix>.2``, and so on).

        Raises:
            OSError: no file could be opened.
        """
        for number in range(1, tries + 1):
            with contextlib.suppress(OutboxBusy):
                return cls(outbox_path(folder, suffix, number))
        raise OSError(errno.EBUSY, f"no free outbox in {folder} after {tries} tries")

    @property
    def pending_spans(self) -> int:
        """Spans in requests not yet acknowledged."""
        with self._lock:
            return sum(e.spans for e in self._pending.values())

    def pending(self) -> list[OutboxEntry]:
        """The requests not yet acknowledged, oldest first."""
        with self._lock:
            return sorted(self._pending.values(), key=lambda e: e.offset)

    def append(self, body: bytes, spans: int) -> OutboxEntry:
        """Writes a request; returns its entry, pending until `acknowledge`.

        Raises:
            OSError: it could not be written whole (the file is cut back to what it was).
        """
        with self._lock:
            entry = OutboxEntry(self._end, body, spans)
            self._write(_REQUEST, body, spans)
            self._pending[entry.offset] = entry
        return entry

    def acknowledge(self, entry: OutboxEntry) -> None:
        """Marks a request delivered.

        Raises:
            OSError: the mark could not be written; the request stays pending in the file (a
                replay would send it again) but no longer here.
        """
        with self._lock:
            self._pending.pop(entry.offset, None)
            self._write(_ACK, _OFFSET.pack(entry.offset), 0)

    def _write(self, tag: bytes, payload: bytes, spans: int) -> None:
        """Writes one record at the end (with ``_lock`` held: the export thread appends while
        the send thread acknowledges)."""
        record = _HEADER.pack(tag, len(payload), zlib.crc32(payload), spans) + payload
        try:
            written = os.pwrite(self._file.fileno(), record, self._end)
            if written != len(record):
                raise OSError(errno.ENOSPC, f"short write to {self.path}")
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._file.fileno(), self._end)
            raise
        self._end += len(record)

    def close(self) -> None:
        """Releases the file (and its lock)."""
        with self._lock:
            self._file.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_outbox(path: str | os.PathLike[str]) -> Iterator[OutboxEntry]:
    """The pending requests of an outbox, read without taking it (for inspection)."""
    with open(path, "rb") as file:
        requests, acked, _ = _scan(file, Path(path))
    return iter([e for e in requests if e.offset not in acked])
