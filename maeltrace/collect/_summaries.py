"""Run summaries from received spans: per process, and across the ranks of a run.

Pure bookkeeping, no I/O. Each process's run span (the span named ``run``, see
`maeltrace.otel.spans.SpanBuilder.add_run_span`) carries the process's exact statistics per key
and clock as attributes ``maeltrace.stats.<key>.<cpu|gpu>[.first_call].<field>``, computed over
every region before any sampling of spans. Those are what the summaries hold; the other spans are
only counted, since a sampled trace no longer holds every region and statistics over its spans
would be biased.

Beside them the run span carries, for rows that have them, the row's throughput and memory
figures (`maeltrace.report.WORK_FIELDS`: ``items``, ``tokens``, ``items_per_s``,
``tokens_per_s``, ``mfu``, ``peak_memory_bytes``, over every sample) under the same prefix; the
summaries keep them next to the statistics of the same key and clock.

Processes are told apart by their rank (``maeltrace.rank`` in the resource) where a launcher set
one, else by host name and process id. A run span from a process seen before replaces that
process's statistics (a restarted rank reports again).

Across ranks, `cross_rank` gives per key and clock each process's mean, the slowest and fastest
process, their skew (slowest mean over fastest mean), and the pooled count, total, mean, min, max
and standard deviation, all exact functions of the per-process statistics. Pooled medians and
percentiles are not given: they cannot be computed from per-process summaries, only from the
samples themselves. The work figures pool as a job's figures do (see `WORK_POOLING`): counts
and rates add up over the processes (the pooled items/s is the job's aggregate throughput, the
ranks running side by side), MFU is the processes' mean, and the peak memory their largest.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from maeltrace.otel import semconv
from maeltrace.report import MAX_BYTES, WORK_FIELDS

__all__ = [
    "FIELDS",
    "NOT_POOLED",
    "POOLED_NOTE",
    "WORK_FIELDS",
    "WORK_POOLING",
    "ProcessSummary",
    "RunSummaries",
    "RunSummary",
    "cross_rank",
    "stats_from_attributes",
]

FIELDS: Final = ("min", "mean", "median", "max", "stdev", "count", "total", "p90", "p95", "p99")
"""The `maeltrace.TimeStats` fields a run span carries per key and clock; all are required."""

MAX_SECONDS: Final = 1e12
"""Larger durations (30,000 years) are refused as input: no real region lasts that long, and the
bound keeps every pooled value (squares of means times counts) far from float overflow."""

INT_WORK_FIELDS: Final = ("items", "tokens", "peak_memory_bytes")
"""The `WORK_FIELDS` that are whole numbers (counts, bytes): ints from 0 to `MAX_BYTES`."""

MAX_RATE: Final = MAX_BYTES * 1e9
"""Largest ``items_per_s``, ``tokens_per_s`` or ``mfu`` taken in: the largest count over a
nanosecond. Larger (or negative, or non-finite) values are no real run's, and the bound keeps
the pooled sums of any number of processes far from float overflow."""

WORK_POOLING: Final = {
    "items": "sum",
    "tokens": "sum",
    "items_per_s": "sum",
    "tokens_per_s": "sum",
    "mfu": "mean",
    "peak_memory_bytes": "max",
}
"""How `cross_rank` pools each of `WORK_FIELDS` over the processes that have it: counts add up;
rates add up too, since the ranks of a job work side by side, so the pooled items/s is the
job's aggregate throughput (what runs of different sizes are compared by); MFU is the mean,
each rank's being over its own device's peak; the peak memory is the largest of any process."""

NOT_POOLED: Final = ("median", "p90", "p95", "p99")
"""Fields that `cross_rank` leaves out: order statistics do not pool from summaries."""

POOLED_NOTE: Final = (
    "pooled count, total, mean, min, max and stdev are exact functions of each process's "
    "statistics; median and percentiles (p90, p95, p99) cannot be computed from per-process "
    "summaries, so they are given per process only; items, tokens, items_per_s and "
    "tokens_per_s are summed over the processes (the job's aggregate throughput), mfu is their "
    "mean and peak_memory_bytes their largest"
)

Stats = dict[str, float | int]
"""One key's statistics on one clock: `FIELDS` to values (seconds; ``count`` an int), and those
of `WORK_FIELDS` the row has (`INT_WORK_FIELDS` ints)."""

KeyStats = dict[str, dict[str, Stats]]
"""Statistics of a process: key -> clock (``cpu``, ``gpu``, ``cpu.first_call``, ...) -> stats."""


class _SpansMessage(Protocol):
    """An ``ExportTraceServiceRequest`` or a ``TracesData``: both hold ``resource_spans``."""

    @property
    def resource_spans(self) -> Any: ...


def _plain(value: AnyValue) -> object:
    """A scalar attribute value as Python, or None for arrays, maps, bytes and unset values."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    return None


def _attribute_map(attributes: Iterable[KeyValue]) -> dict[str, object]:
    return {kv.key: _plain(kv.value) for kv in attributes}


def _int_or_none(value: object) -> int | None:
    # bool is an int in Python but never a rank; negative ranks or pids are not real.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _split_stats_name(name: str) -> tuple[str, str, str] | None:
    """``<key>.<clock>[.first_call].<field>`` (the prefix removed) as (key, clock label, field).

    Parsed from the right: the field is the last segment and the clock sits right before it (or
    before ``first_call``), so keys may hold dots themselves.
    """
    head, _, field_name = name.rpartition(".")
    if (field_name not in FIELDS and field_name not in WORK_FIELDS) or not head:
        return None
    head, _, clock = head.rpartition(".")
    first_call = False
    if clock == semconv.FIRST_CALL:
        first_call = True
        head, _, clock = head.rpartition(".")
    if clock not in semconv.STATS_CLOCKS or not head:
        return None
    return head, f"{clock}.{semconv.FIRST_CALL}" if first_call else clock, field_name


def _work_value(field_name: str, value: object) -> float | int | None:
    """One of `WORK_FIELDS` as taken in, or None if malformed: `INT_WORK_FIELDS` ints from 0 to
    `MAX_BYTES`, the rates and MFU finite numbers from 0 to `MAX_RATE` (as floats)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if field_name in INT_WORK_FIELDS:
        return value if isinstance(value, int) and 0 <= value <= MAX_BYTES else None
    return float(value) if 0 <= value <= MAX_RATE else None  # NaN fails this too


def stats_from_attributes(attributes: Mapping[str, object]) -> KeyStats:
    """The statistics a run span carries, from its attributes.

    Only complete entries are kept: a key and clock with every one of `FIELDS`, each a finite
    number of at most `MAX_SECONDS` in size (``count`` a non-negative int). Such an entry also
    keeps the `WORK_FIELDS` given for it that are well formed (see `_work_value`); work fields
    alone make no entry. Anything else under the prefix is ignored rather than refused, as the
    attributes come from the network.

    Args:
        attributes: the span's attributes as plain values.

    Returns:
        key -> clock label -> field -> value; clock labels are ``cpu``, ``gpu``,
        ``cpu.first_call`` and ``gpu.first_call``.
    """
    found: KeyStats = {}
    for name, value in attributes.items():
        if not name.startswith(semconv.STATS_PREFIX):
            continue
        parts = _split_stats_name(name[len(semconv.STATS_PREFIX) :])
        if parts is None:
            continue
        key, clock, field_name = parts
        if field_name in WORK_FIELDS:
            work = _work_value(field_name, value)
            if work is not None:
                found.setdefault(key, {}).setdefault(clock, {})[field_name] = work
            continue
        if field_name == "count":
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                continue
            number: float | int = value
        elif isinstance(value, float) and abs(value) <= MAX_SECONDS:  # NaN fails this too
            number = value
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_SECONDS:
            number = float(value)  # an exporter may send whole seconds as ints
        else:
            continue
        found.setdefault(key, {}).setdefault(clock, {})[field_name] = number
    complete: KeyStats = {}
    for key, clocks in found.items():
        for clock, stats in clocks.items():
            if all(f in stats for f in FIELDS):
                fields = (*FIELDS, *(f for f in WORK_FIELDS if f in stats))
                complete.setdefault(key, {})[clock] = {f: stats[f] for f in fields}
    return complete


@dataclass(slots=True)
class ProcessSummary:
    """One process of a run, as its run span described it.

    Attributes:
        label: how the summaries name the process: ``rank<r>``, else ``<host>/<pid>``.
        rank: its rank, where the launcher set one.
        local_rank: its rank on its host, where set.
        world_size: the number of processes of the run, where set.
        service: ``service.name`` of its resource.
        host: ``host.name`` of its resource.
        pid: ``process.pid`` of its resource.
        device_clock: the device clock its GPU rows were measured on, if any.
        end_unix_nano: when its run span ended (wall clock, ns since the epoch).
        stats: its exact statistics, key -> clock -> field -> value, with the row's
            `WORK_FIELDS` where it has them.
    """

    label: str
    rank: int | None
    local_rank: int | None
    world_size: int | None
    service: str | None
    host: str | None
    pid: int | None
    device_clock: str | None
    end_unix_nano: int
    stats: KeyStats

    def to_dict(self) -> dict[str, Any]:
        """Every field, as JSON-ready values."""
        return {
            "label": self.label,
            "rank": self.rank,
            "local_rank": self.local_rank,
            "world_size": self.world_size,
            "service": self.service,
            "host": self.host,
            "pid": self.pid,
            "device_clock": self.device_clock,
            "end_unix_nano": self.end_unix_nano,
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> ProcessSummary:
        """The inverse of `to_dict`, validating as `stats_from_attributes` does.

        Raises:
            ValueError: ``obj`` is not a process summary.
        """
        label = obj.get("label")
        end = obj.get("end_unix_nano")
        raw_stats = obj.get("stats")
        if not isinstance(label, str) or not label:
            raise ValueError("a process summary needs a non-empty label")
        if not isinstance(end, int) or isinstance(end, bool):
            raise ValueError("a process summary needs an int end_unix_nano")
        if not isinstance(raw_stats, dict):
            raise ValueError("a process summary needs a stats object")
        # Back through the attribute form, so that one validation serves both.
        flat: dict[str, object] = {}
        for key, clocks in raw_stats.items():
            if not isinstance(clocks, dict):
                raise ValueError(f"stats of {key!r} are not an object")
            for clock, stats in clocks.items():
                if not isinstance(stats, dict):
                    raise ValueError(f"stats of {key!r} on {clock!r} are not an object")
                for field_name, value in stats.items():
                    flat[semconv.stats_attribute(key, clock, field_name)] = value
        return cls(
            label=label,
            rank=_int_or_none(obj.get("rank")),
            local_rank=_int_or_none(obj.get("local_rank")),
            world_size=_int_or_none(obj.get("world_size")),
            service=_str_or_none(obj.get("service")),
            host=_str_or_none(obj.get("host")),
            pid=_int_or_none(obj.get("pid")),
            device_clock=_str_or_none(obj.get("device_clock")),
            end_unix_nano=end,
            stats=stats_from_attributes(flat),
        )


def _order(process: ProcessSummary) -> tuple[int, int, str]:
    # Ranks in numeric order first, then unranked processes by label: a stable order for ties.
    if process.rank is not None:
        return (0, process.rank, process.label)
    return (1, 0, process.label)


@dataclass(slots=True)
class RunSummary:
    """Everything known about one run.

    Attributes:
        run_id: the run's id (``maeltrace.run_id``).
        spans_received: spans received for the run, run spans included.
        processes: the processes whose run span arrived, by label.
        first_seen: when the first span of the run arrived (Unix time, s).
        updated: when a run span last arrived (Unix time, s); 0.0 before any.
        version: how many run spans arrived; grows with every change of the statistics.
    """

    run_id: str
    spans_received: int = 0
    processes: dict[str, ProcessSummary] = field(default_factory=dict)
    first_seen: float = field(default_factory=time.time)
    updated: float = 0.0
    version: int = 0

    def ordered(self) -> list[ProcessSummary]:
        """The processes, ranks in numeric order first."""
        return sorted(self.processes.values(), key=_order)

    @property
    def world_size(self) -> int | None:
        """The largest world size a process reported, if any did."""
        sizes = [p.world_size for p in self.processes.values() if p.world_size is not None]
        return max(sizes) if sizes else None

    @property
    def finished(self) -> bool:
        """Whether every expected process has reported: all ``world_size`` of them, or, with no
        world size, at least one."""
        size = self.world_size
        return len(self.processes) >= (size if size is not None else 1)

    def to_dict(self, *, brief: bool = False) -> dict[str, Any]:
        """The summary as JSON-ready values.

        Args:
            brief: leave out the statistics (per process and across ranks).
        """
        processes = self.ordered()
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "spans_received": self.spans_received,
            "process_count": len(processes),
            "world_size": self.world_size,
            "finished": self.finished,
            "services": sorted({p.service for p in processes if p.service}),
            "hosts": sorted({p.host for p in processes if p.host}),
            "first_seen": self.first_seen,
            "updated": self.updated,
            "version": self.version,
        }
        if not brief:
            out["processes"] = {p.label: p.to_dict() for p in processes}
            out["cross_rank"] = cross_rank(self)
            out["pooled_note"] = POOLED_NOTE
        return out


def _process_of(resource: Mapping[str, object], span: Mapping[str, object]) -> ProcessSummary:
    rank = _int_or_none(resource.get(semconv.MAELTRACE_RANK))
    host = _str_or_none(resource.get(semconv.HOST_NAME))
    pid = _int_or_none(resource.get(semconv.PROCESS_PID))
    if rank is not None:
        label = f"rank{rank}"
    else:
        label = f"{host or 'unknown'}/{pid if pid is not None else '?'}"
    return ProcessSummary(
        label=label,
        rank=rank,
        local_rank=_int_or_none(resource.get(semconv.MAELTRACE_LOCAL_RANK)),
        world_size=_int_or_none(resource.get(semconv.MAELTRACE_WORLD_SIZE)),
        service=_str_or_none(resource.get(semconv.SERVICE_NAME)),
        host=host,
        pid=pid,
        device_clock=_str_or_none(span.get(semconv.MAELTRACE_DEVICE_CLOCK)),
        end_unix_nano=0,
        stats=stats_from_attributes(span),
    )


class RunSummaries:
    """Summaries of every run whose spans arrived; safe to use from several threads.

    Args:
        max_runs: runs kept in memory; beyond it the least recently updated run is forgotten
            (its summary was logged already), so a stream of new run ids cannot grow memory
            without bound.

    Attributes:
        unattributed_spans: spans received without a ``maeltrace.run_id`` (not maeltrace's).
    """

    def __init__(self, max_runs: int = 1000) -> None:
        if max_runs < 1:
            raise ValueError(f"max_runs must be at least 1, not {max_runs}")
        self.max_runs = max_runs
        self._runs: OrderedDict[str, RunSummary] = OrderedDict()
        self._lock = threading.Lock()
        self.unattributed_spans = 0

    def _run(self, run_id: str) -> RunSummary:
        """The run's summary, made if new, marked most recently used (lock held)."""
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = RunSummary(run_id)
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
        else:
            self._runs.move_to_end(run_id)
        return run

    def add(self, message: _SpansMessage) -> list[str]:
        """Takes in the spans of one export request.

        Args:
            message: an ``ExportTraceServiceRequest`` or a ``TracesData``.

        Returns:
            The ids of the runs that received a run span, in order of arrival, without repeats:
            their statistics changed.
        """
        changed: list[str] = []
        now = time.time()
        with self._lock:
            for resource_spans in message.resource_spans:
                resource = _attribute_map(resource_spans.resource.attributes)
                resource_run = _str_or_none(resource.get(semconv.MAELTRACE_RUN_ID))
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self._add_span(span, resource, resource_run, now, changed)
        return changed

    def _add_span(
        self,
        span: Any,
        resource: Mapping[str, object],
        resource_run: str | None,
        now: float,
        changed: list[str],
    ) -> None:
        is_run_span = span.name == semconv.RUN_SPAN_NAME
        attributes = _attribute_map(span.attributes) if is_run_span else {}
        # The resource names the run of every span; the run span also names it itself.
        run_id = resource_run or _str_or_none(attributes.get(semconv.MAELTRACE_RUN_ID))
        if run_id is None:
            self.unattributed_spans += 1
            return
        run = self._run(run_id)
        run.spans_received += 1
        if not is_run_span or semconv.MAELTRACE_RUN_ID not in attributes:
            return
        process = _process_of(resource, attributes)
        process.end_unix_nano = int(span.end_time_unix_nano)
        run.processes[process.label] = process
        run.updated = now
        run.version += 1
        if run_id not in changed:
            changed.append(run_id)

    def restore(self, summary: Mapping[str, Any]) -> str:
        """Puts back a run from `RunSummary.to_dict` output (a summary kept in a pending file),
        adding the processes not known already; known ones are newer and stay.

        Returns:
            The run id.

        Raises:
            ValueError: ``summary`` is not a run summary.
        """
        run_id = summary.get("run_id")
        processes = summary.get("processes")
        if not isinstance(run_id, str) or not run_id or not isinstance(processes, dict):
            raise ValueError("not a run summary: needs run_id and processes")
        restored = [ProcessSummary.from_dict(p) for p in processes.values() if isinstance(p, dict)]
        spans = summary.get("spans_received")
        with self._lock:
            run = self._run(run_id)
            for process in restored:
                if process.label not in run.processes:
                    run.processes[process.label] = process
                    run.version += 1
            if isinstance(spans, int) and not isinstance(spans, bool):
                run.spans_received = max(run.spans_received, spans)
        return run_id

    def get(self, run_id: str, *, brief: bool = False) -> dict[str, Any] | None:
        """The run's summary (`RunSummary.to_dict`), or None for an unknown run."""
        with self._lock:
            run = self._runs.get(run_id)
            return None if run is None else run.to_dict(brief=brief)

    def runs(self) -> list[dict[str, Any]]:
        """Brief summaries of every run, least recently updated first."""
        with self._lock:
            return [run.to_dict(brief=True) for run in self._runs.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)


def _pooled_stdev(entries: list[Stats], total_count: int, mean: float) -> float:
    """The sample standard deviation of the union of the processes' samples, exactly as the
    sample deviation of all of them would be, from each one's count, mean and stdev."""
    if total_count < 2:
        return 0.0
    # Sum of squared deviations: within each process, plus each mean's offset from the pooled.
    within = math.fsum((int(s["count"]) - 1) * float(s["stdev"]) ** 2 for s in entries)
    between = math.fsum(int(s["count"]) * (float(s["mean"]) - mean) ** 2 for s in entries)
    return math.sqrt(max(0.0, (within + between) / (total_count - 1)))


def cross_rank(run: RunSummary) -> dict[str, dict[str, dict[str, Any]]]:
    """Statistics across the processes of a run, per key and clock.

    Each entry holds ``processes`` (how many have the key on that clock), ``mean_by_process``
    (label -> mean), ``slowest`` and ``fastest`` (labels of the highest and lowest mean; the
    first in rank order on ties), ``slowest_rank`` and ``fastest_rank`` (their ranks, or None),
    ``slowest_mean``, ``fastest_mean``, ``skew`` (slowest mean over fastest mean; None when the
    fastest mean is not positive or the ratio overflows) and ``pooled`` (count, total, mean,
    min, max, stdev over all the processes' samples; median and percentiles are not pooled, see
    `POOLED_NOTE`; and those of `WORK_FIELDS` some process has, pooled over the processes that
    have them as `WORK_POOLING` says: ``items_per_s`` is the sum of the processes' rates, the
    job's aggregate throughput).

    Args:
        run: the run.

    Returns:
        key -> clock label -> entry; keys and clocks in first-seen order.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    processes = run.ordered()
    for process in processes:
        for key, clocks in process.stats.items():
            for clock in clocks:
                out.setdefault(key, {}).setdefault(clock, {})
    for key, entries_by_clock in out.items():
        for clock in entries_by_clock:
            having = [p for p in processes if clock in p.stats.get(key, {})]
            entries = [p.stats[key][clock] for p in having]
            means = [float(s["mean"]) for s in entries]
            slow = max(range(len(having)), key=means.__getitem__)
            fast = min(range(len(having)), key=means.__getitem__)
            count = sum(int(s["count"]) for s in entries)
            total = math.fsum(float(s["total"]) for s in entries)
            mean = total / count if count else 0.0
            # A tiny fastest mean can make the ratio overflow: no skew rather than infinity.
            skew = means[slow] / means[fast] if means[fast] > 0 else math.inf
            entries_by_clock[clock] = {
                "processes": len(having),
                "mean_by_process": {p.label: m for p, m in zip(having, means, strict=True)},
                "slowest": having[slow].label,
                "slowest_rank": having[slow].rank,
                "slowest_mean": means[slow],
                "fastest": having[fast].label,
                "fastest_rank": having[fast].rank,
                "fastest_mean": means[fast],
                "skew": skew if math.isfinite(skew) else None,
                "pooled": {
                    "count": count,
                    "total": total,
                    "mean": mean,
                    "min": min(float(s["min"]) for s in entries),
                    "max": max(float(s["max"]) for s in entries),
                    "stdev": _pooled_stdev(entries, count, mean),
                    **_pooled_work(entries),
                },
            }
    return out


def _pooled_work(entries: list[Stats]) -> dict[str, float | int]:
    """The `WORK_FIELDS` pooled over the entries that have them, as `WORK_POOLING` says."""
    out: dict[str, float | int] = {}
    for field_name in WORK_FIELDS:
        values = [s[field_name] for s in entries if field_name in s]
        if not values:
            continue
        how = WORK_POOLING[field_name]
        if field_name in INT_WORK_FIELDS:
            ints = [int(v) for v in values]
            out[field_name] = max(ints) if how == "max" else sum(ints)
        elif how == "mean":
            out[field_name] = math.fsum(values) / len(values)
        else:
            out[field_name] = math.fsum(values)
    return out
