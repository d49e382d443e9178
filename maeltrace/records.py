"""The record layout, and `Records`: every closed region of a timer as columns.

A recorder (compiled in maeltrace._hotpath, or maeltrace._recorder in pure Python) keeps one
log per thread: chunks of `CHUNK_REGIONS` regions, each region `FIELDS` int64 values, 56 bytes
in all. What only some regions have is kept apart, by sequence number, in a `SeqValues` store:
device times and peak device memory (known later, for gpu regions only,
`maeltrace.devices.DeviceTimes`), and the work a region did (`RegionCounts`: items and tokens,
for regions given a count). Reading merges them into `Records`, off the hot path.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CHUNK_REGIONS",
    "FIELDS",
    "FLAG_COMPILED",
    "NO_DEVICE_TIME",
    "NO_PARENT",
    "NO_TRACE",
    "STATUS_FAILED",
    "STATUS_OK",
    "Records",
    "RegionCounts",
    "Samples",
    "SeqValues",
    "ThreadInfo",
    "key_samples",
]

F_KEY, F_SEQ, F_PARENT, F_START, F_END, F_STATUS, F_TRACE = range(7)
FIELDS = 7
"""int64 values per region: key id, sequence number, parent's sequence number, start and end
(ns, `time.perf_counter_ns`), status, trace ordinal."""

CHUNK_REGIONS = 4096
"""Regions per chunk: a thread's log grows by 224 KiB at a time."""

NO_PARENT = -1
"""Parent sequence number of a region that had no enclosing open region on its thread."""

NO_TRACE = -1
"""Trace ordinal of a region outside any region of the trace key (the epoch, by default)."""

NO_DEVICE_TIME = -1
"""Device start and duration of a region that has none."""

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


FLAG_COMPILED = 1
"""Device flag: the region compiled code (a first call of a jitted function); its samples are
reported apart from the key's steady state."""


class SeqValues:
    """A sparse column: values of some regions, by sequence number, appended from any thread.

    One flat ``array('q')`` of (seq, value, ...) tuples of ``1 + width`` values; one ``extend``
    call per entry keeps a tuple whole under the GIL. A region may be given values more than
    once: `by_seq` keeps the last, or, with ``summed``, adds them up.
    """

    __slots__ = ("_values", "_width")

    def __init__(self, width: int) -> None:
        self._values = array("q")
        self._width = width

    def add(self, seq: int, *values: int) -> None:
        """Appends the values of region ``seq`` (``width`` of them)."""
        self._values.extend((seq, *values))

    def by_seq(self, *, summed: bool = False) -> dict[int, tuple[int, ...]]:
        """seq -> values, for merging into `Records`."""
        v = self._values[:]
        step = self._width + 1
        out: dict[int, tuple[int, ...]] = {}
        for i in range(0, len(v) - len(v) % step, step):
            values = tuple(v[i + 1 : i + step])
            before = out.get(v[i]) if summed else None
            if before is not None:
                values = tuple(a + b for a, b in zip(before, values, strict=True))
            out[v[i]] = values
        return out

    def clear(self) -> None:
        """Drops every entry."""
        del self._values[:]

    def __len__(self) -> int:
        return len(self._values) // (self._width + 1)


class RegionCounts(SeqValues):
    """The work regions did, as the user gave it (``Timer.region(key, items=, tokens=)``,
    ``Timer.add_items``): (items, tokens) by sequence number, several counts of one region
    added up."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(2)

    @property
    def extend(self) -> Callable[[Iterable[int]], None]:
        """Appends one ``(seq, items, tokens)`` triple (the array's own ``extend``, for the hot
        path of `maeltrace.Timer.region` with a count)."""
        return self._values.extend

    def counts(self) -> dict[int, tuple[int, int]]:
        """seq -> (items, tokens), summed."""
        return self.by_seq(summed=True)  # type: ignore[return-value]  # width 2


@dataclass(slots=True)
class Samples:
    """Completed regions' durations (ns) per key id, in start order.

    Attributes:
        cpu: CPU durations.
        gpu: device durations, of the regions that have one.
        cpu_compiled: CPU durations of regions flagged `FLAG_COMPILED`, kept apart.
        gpu_compiled: their device durations.
        failed: regions whose body raised, per key id (in no list above).
        counts: (items, tokens) of each region, aligned with the list of durations of the same
            (key id, compiled, gpu); only where the records have counts.
        memory: peak device memory (bytes) of the regions that have one, per (key id,
            compiled), in start order.
    """

    cpu: dict[int, list[int]] = field(default_factory=dict)
    gpu: dict[int, list[int]] = field(default_factory=dict)
    cpu_compiled: dict[int, list[int]] = field(default_factory=dict)
    gpu_compiled: dict[int, list[int]] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)
    counts: dict[tuple[int, bool, bool], list[tuple[int, int]]] = field(default_factory=dict)
    memory: dict[tuple[int, bool], list[int]] = field(default_factory=dict)

    def cpu_for(self, key_id: int, compiled: bool) -> list[int]:
        return (self.cpu_compiled if compiled else self.cpu).setdefault(key_id, [])

    def gpu_for(self, key_id: int, compiled: bool) -> list[int]:
        return (self.gpu_compiled if compiled else self.gpu).setdefault(key_id, [])


def key_samples(
    seqs: array[int],
    durations_ns: array[int],
    device: Mapping[int, tuple[int, int, int]] | None,
    *,
    gpu: bool,
) -> array[int]:
    """One key's durations as `Records.samples` gives them, without building `Records`.

    Reading one key straight from the recorder's logs (``key_durations``) and passing the
    result here costs 16 bytes per region of that key, where `Records` costs well over a
    hundred per region of every key.

    Args:
        seqs: the key's completed regions' sequence numbers, in start order.
        durations_ns: their CPU durations.
        device: seq -> (device start, duration, flags) of regions that have a device time.
        gpu: the device durations instead of the CPU ones.

    Returns:
        The CPU (or device) durations in start order, regions flagged `FLAG_COMPILED` left out;
        ``durations_ns`` itself where nothing is left out.
    """
    if not device:
        return array("q") if gpu else durations_ns
    if not gpu and not any(flags & FLAG_COMPILED for _, _, flags in device.values()):
        return durations_ns
    out = array("q")
    for seq, cpu in zip(seqs, durations_ns, strict=True):
        found = device.get(seq)
        if found is None:
            if not gpu:
                out.append(cpu)
        elif not found[2] & FLAG_COMPILED:
            if not gpu:
                out.append(cpu)
            elif found[1] != NO_DEVICE_TIME:
                out.append(found[1])
    return out


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
        trace: ordinal (0, 1, ... in opening order) of the nearest enclosing region of the trace
            key, the region itself included, or `NO_TRACE`: one trace per epoch by default.
        device_ns: device duration in ns, or `NO_DEVICE_TIME`.
        device_start_ns: device start on the perf_counter clock, or `NO_DEVICE_TIME`.
        device_flags: flags of the device time (`FLAG_COMPILED`).
        thread: index into ``threads``.
        keys: the keys, in order of first use.
        threads: the threads that recorded regions.
        counts: seq -> (items, tokens) of the regions given a count.
        peak_memory: seq -> peak device memory in bytes, of the regions that have one.
    """

    key_id: array[int]
    seq: array[int]
    parent_seq: array[int]
    start_ns: array[int]
    end_ns: array[int]
    status: array[int]
    trace: array[int]
    device_ns: array[int]
    device_start_ns: array[int]
    device_flags: array[int]
    thread: array[int]
    keys: tuple[Any, ...]
    threads: tuple[ThreadInfo, ...]
    counts: Mapping[int, tuple[int, int]] = field(default_factory=dict)
    peak_memory: Mapping[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.seq)

    def rows(self, key_id: int) -> Iterator[int]:
        """Row indices of one key, in start order."""
        return (i for i, k in enumerate(self.key_id) if k == key_id)

    def work(self) -> dict[int, tuple[int, int]]:
        """seq -> (items, tokens) of every region that did counted work: its own count, or,
        for a region given none, the sum of its completed children's (an epoch counts the
        items of its batches). Empty without counts."""
        own = self.counts
        if not own:
            return {}
        out = dict(own)
        # Children open after their parent, so a higher sequence number: walking down the
        # numbers, a region's total is complete before its parent takes it.
        for seq, parent, status in zip(
            reversed(self.seq), reversed(self.parent_seq), reversed(self.status), strict=True
        ):
            count = out.get(seq)
            if count is None or parent == NO_PARENT or parent in own or status != STATUS_OK:
                continue
            before = out.get(parent)
            out[parent] = count if before is None else (before[0] + count[0], before[1] + count[1])
        return out

    def samples(self) -> Samples:
        """The durations the statistics use, grouped by key in one pass."""
        out = Samples()
        compiled = FLAG_COMPILED
        counts, memory = self.work(), self.peak_memory
        for seq, key_id, start, end, status, device, flags in zip(
            self.seq,
            self.key_id,
            self.start_ns,
            self.end_ns,
            self.status,
            self.device_ns,
            self.device_flags,
            strict=True,
        ):
            if status != STATUS_OK:
                out.failed[key_id] = out.failed.get(key_id, 0) + 1
                continue
            first = bool(flags & compiled)
            out.cpu_for(key_id, first).append(end - start)
            if device != NO_DEVICE_TIME:
                out.gpu_for(key_id, first).append(device)
            if counts:
                count = counts.get(seq, (0, 0))
                out.counts.setdefault((key_id, first, False), []).append(count)
                if device != NO_DEVICE_TIME:
                    out.counts.setdefault((key_id, first, True), []).append(count)
            if memory and seq in memory:
                out.memory.setdefault((key_id, first), []).append(memory[seq])
        return out

    @classmethod
    def merge(
        cls,
        logs: Sequence[tuple[tuple[int | None, int | None, str], bytes]],
        keys: tuple[Any, ...],
        device: Mapping[int, tuple[int, int, int]] | None = None,
        device_offset_ns: int = 0,
        counts: Mapping[int, tuple[int, int]] | None = None,
        peak_memory: Mapping[int, int] | None = None,
    ) -> Records:
        """Merges per-thread logs into columns sorted by sequence number.

        Args:
            logs: (thread info, native int64 bytes) per thread.
            keys: the keys, by id.
            device: seq -> (device start, duration, flags) of the regions that have one.
            device_offset_ns: moves device starts onto the perf_counter clock.
            counts: seq -> (items, tokens) of the regions given a count.
            peak_memory: seq -> peak device memory (bytes) of the regions that have one.
        """
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
        device = device or {}
        none = (NO_DEVICE_TIME - device_offset_ns, NO_DEVICE_TIME, 0)
        found = [device.get(s, none) for s in columns[F_SEQ]]
        return cls(
            key_id=columns[F_KEY],
            seq=columns[F_SEQ],
            parent_seq=columns[F_PARENT],
            start_ns=columns[F_START],
            end_ns=columns[F_END],
            status=columns[F_STATUS],
            trace=columns[F_TRACE],
            device_ns=array("q", [d[1] for d in found]),
            device_start_ns=array("q", [d[0] + device_offset_ns for d in found]),
            device_flags=array("q", [d[2] for d in found]),
            thread=thread,
            keys=keys,
            threads=tuple(ThreadInfo(*info) for info, _ in logs),
            counts=counts or {},
            peak_memory=peak_memory or {},
        )
