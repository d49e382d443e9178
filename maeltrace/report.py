"""The seed's summary tables, and the stats files: text, Markdown, CSV and JSON."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maeltrace._files import atomic_write_text
from maeltrace._validate import Checker, at, read_json
from maeltrace.keys import Key, TimeType, canonical_key, key_label
from maeltrace.otel import semconv
from maeltrace.records import Records
from maeltrace.stats import TimeStats, compute_stats

__all__ = ["FORMATS", "Row", "Summary", "format_seconds", "markdown_cell"]

SCHEMA = "maeltrace.stats/1"

MAX_STATS_BYTES = 256 * 2**20
"""The largest ``stats.json`` read: ten million samples with room to spare."""

MAX_REGIONS = 100_000
"""Most rows a ``stats.json`` may hold."""

MAX_SAMPLES = 20_000_000
"""Most samples one row may hold."""

MAX_NAME = 1024
"""Longest key, clock, host or version string read."""

MAX_COUNT = 10**12
"""Largest count (of regions, warm-up samples, failures) read."""

MAX_DURATION_NS = 10**17
"""Longest duration read, in ns: about three years. Bounds every time the report plots or
formats, so none can overflow a float or a date."""

MAX_SECONDS = MAX_DURATION_NS / 1e9
"""`MAX_DURATION_NS` in seconds, the bound of the statistics."""

EARLIEST_UNIX_NS = 946_684_800 * 10**9
"""2000-01-01 UTC: no run of maeltrace started earlier."""

LATEST_UNIX_NS = 7_258_118_400 * 10**9
"""2200-01-01 UTC: a later start time is a broken file, not a run."""

FORMATS = (".txt", ".md", ".csv", ".json")
"""File suffixes `Summary.save` understands."""

CPU = "cpu"
"""`Row.clock` of rows measured on the CPU clock."""

COLUMNS = ("Metric", "Min [s]", "Mean [s]", "Median [s]", "Max [s]", "Stdev [s]", "Count")

UNITS = ("items", "tokens")
"""What a region's count counts (`maeltrace.Timer.region`'s ``items`` and ``tokens``)."""

WORK_FIELDS = ("items", "tokens", "items_per_s", "tokens_per_s", "mfu", "peak_memory_bytes")
"""The throughput and memory figures of a row (`Row.work_values`), as the CSV columns, span
attributes, metrics and sinks name them."""

THROUGHPUT_COLUMNS = ("Metric", "Items", "Items/s", "Tokens", "Tokens/s", "MFU")

MEMORY_COLUMNS = ("Metric", "Min [MiB]", "Mean [MiB]", "Median [MiB]", "Max [MiB]", "Count")

MAX_BYTES = 2**62
"""Largest memory figure read, in bytes."""


def format_seconds(value: float) -> str:
    """Five decimals like the seed's tables; below a millisecond, three significant digits in
    scientific notation, so short regions do not print as 0.00000."""
    if value == 0 or abs(value) >= 1e-3:
        return f"{value:.5f}"
    return f"{value:.3e}"


def finite_number(value: object) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a bool, NaN or infinity, which
    Python's ``json`` reads), else None: how the report reads the numbers of its JSON files."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Row:
    """One key of a summary.

    Attributes:
        key: the region key.
        clock: ``cpu``, or the name of the device clock its durations were measured on.
        stats: statistics over every completed region.
        steady: statistics without the warm-up samples; None when warm-up is 0 or leaves none.
        failed: regions of this key whose body raised (left out of the statistics).
        compiled: the row holds the regions that compiled code (JAX's first calls), kept apart
            from the key's steady state.
        qualify: name the clock in the label, as the seed's tables do when GPU rows exist.
        samples_ns: the durations the statistics were computed from, in ns, in start order
            (``stats.json`` keeps them, so plots and ``maeltrace compare`` can use them).
        items: items (samples) the row's regions worked on (`maeltrace.Timer.region`'s
            ``items``; a region given no count counts its children's); 0 without counts.
        tokens: tokens, likewise.
        steady_items: items of the steady-state regions (those ``steady`` covers).
        steady_tokens: tokens of the steady-state regions.
        peak_memory: peak device memory of each region, in bytes, in start order (``Timer(
            memory=True)``); on the device row where there is one, else the CPU row.
    """

    key: Key
    clock: str
    stats: TimeStats
    steady: TimeStats | None
    failed: int
    compiled: bool = False
    qualify: bool = False
    samples_ns: tuple[int, ...] = ()
    items: int = 0
    tokens: int = 0
    steady_items: int = 0
    steady_tokens: int = 0
    peak_memory: tuple[int, ...] = ()

    @property
    def device(self) -> bool:
        """Whether the row holds device durations."""
        return self.clock != CPU

    @property
    def label(self) -> str:
        """The row's name in the tables: ``Batch``, ``Batch (GPU)``, ``Forward (CPU, first
        call)``."""
        notes = []
        if self.qualify:
            notes.append("GPU" if self.device else "CPU")
        if self.compiled:
            notes.append("first call")
        return key_label(self.key) + (f" ({', '.join(notes)})" if notes else "")

    def rate(self, unit: str, *, steady: bool = False) -> float | None:
        """Throughput: ``items`` or ``tokens`` per second of the row's regions (their count over
        their summed durations), over every sample or the steady state; None without counts.

        Raises:
            ValueError: ``unit`` is neither ``items`` nor ``tokens``.
        """
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(map(repr, UNITS))}, not {unit!r}")
        stats = self.steady if steady else self.stats
        count = getattr(self, f"steady_{unit}" if steady else unit)
        if stats is None or not count or stats.total <= 0:
            return None
        return float(count / stats.total)

    def mfu(self, throughput: Mapping[str, float], *, steady: bool = False) -> float | None:
        """Model FLOPs utilisation: the FLOP/s the row's counted work implies over
        ``peak_flops``. The work is tokens/s times ``flops_per_token`` where both are known,
        else items/s times ``flops_per_item``; None without a peak or such a pair."""
        peak = throughput.get("peak_flops")
        if not peak:
            return None
        for unit, figure in (("tokens", "flops_per_token"), ("items", "flops_per_item")):
            per, rate = throughput.get(figure), self.rate(unit, steady=steady)
            if per and rate:
                return per * rate / peak
        return None

    def work_values(
        self, throughput: Mapping[str, float], *, steady: bool = False
    ) -> dict[str, float]:
        """The row's throughput and memory figures, those it has, by the names every output
        uses (`WORK_FIELDS`): ``items``, ``tokens``, ``items_per_s``, ``tokens_per_s``,
        ``mfu`` (over every sample or the steady state) and ``peak_memory_bytes`` (the
        largest peak of any region)."""
        out: dict[str, float] = {}
        for unit in UNITS:
            count = getattr(self, f"steady_{unit}" if steady else unit)
            rate = self.rate(unit, steady=steady)
            if rate is not None:
                out[unit] = count
                out[f"{unit}_per_s"] = rate
        mfu = self.mfu(throughput, steady=steady)
        if mfu is not None:
            out["mfu"] = mfu
        if self.peak_memory:
            out["peak_memory_bytes"] = max(self.peak_memory)
        return out

    def memory_stats(self) -> dict[str, float] | None:
        """``min``, ``mean``, ``median`` and ``max`` of `peak_memory` (bytes) and its
        ``count``; None where no region has a peak."""
        if not self.peak_memory:
            return None
        ordered = sorted(self.peak_memory)
        n = len(ordered)
        middle = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        return {
            "min": float(ordered[0]),
            "mean": sum(ordered) / n,
            "median": float(middle),
            "max": float(ordered[-1]),
            "count": n,
        }


@dataclass(frozen=True, slots=True)
class Summary:
    """Statistics of every key of a timer, ready to print or save.

    Attributes:
        rows: one per key with a completed region, in first-use order.
        warmup: first samples of each key that ``Row.steady`` leaves out.
        metadata: run metadata (host, pid, versions, start time, run id).
    """

    rows: tuple[Row, ...]
    warmup: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_records(
        cls,
        records: Records,
        *,
        warmup: int,
        metadata: dict[str, Any] | None = None,
        device_clock: str | None = None,
    ) -> Summary:
        """Summarises a record snapshot: per key a CPU row, and a GPU row where regions have
        device times (the seed's ``Batch (CPU)``, ``Batch (GPU)``).

        Args:
            records: the snapshot.
            warmup: first samples of each row that the steady-state statistics skip.
            metadata: run metadata to carry.
            device_clock: name of the clock the device times come from.
        """
        samples = records.samples()
        qualify = bool(samples.gpu or samples.gpu_compiled)
        gpu_clock = device_clock or "gpu"
        rows = []
        for key_id, key in enumerate(records.keys):
            failed = samples.failed.get(key_id, 0)
            for compiled, clock, group in (
                (False, CPU, samples.cpu),
                (False, gpu_clock, samples.gpu),
                (True, CPU, samples.cpu_compiled),
                (True, gpu_clock, samples.gpu_compiled),
            ):
                durations = group.get(key_id)
                if not durations:
                    continue
                device = clock != CPU
                steady = durations[warmup:] if warmup else []
                counts = samples.counts.get((key_id, compiled, device), [])
                memory = samples.memory.get((key_id, compiled), ())
                if not device and (samples.gpu_compiled if compiled else samples.gpu).get(key_id):
                    memory = ()  # on the key's device row
                rows.append(
                    Row(
                        key=key,
                        clock=clock,
                        stats=compute_stats(durations),
                        steady=compute_stats(steady) if steady else None,
                        failed=failed,
                        compiled=compiled,
                        qualify=qualify,
                        samples_ns=tuple(durations),
                        items=sum(c[0] for c in counts),
                        tokens=sum(c[1] for c in counts),
                        steady_items=sum(c[0] for c in counts[warmup:]) if steady else 0,
                        steady_tokens=sum(c[1] for c in counts[warmup:]) if steady else 0,
                        peak_memory=tuple(memory),
                    )
                )
        return cls(rows=tuple(rows), warmup=warmup, metadata=metadata or {})

    @classmethod
    def from_dict(cls, obj: Any, *, source: str = "summary") -> Summary:
        """The summary that `to_dict` gave (what ``stats.json`` holds), every field checked:
        types, counts and warm-up whole and not negative, samples whole nanoseconds below
        `MAX_DURATION_NS`, statistics finite and not negative, timestamps between the years
        2000 and 2200, lists bounded.

        Files written before ``samples_ns`` was kept load with empty samples.

        Args:
            obj: the parsed JSON value.
            source: how error messages name the file (``runs/x/stats.json``).

        Raises:
            FormatError: ``obj`` is not a valid ``maeltrace.stats/1`` summary; the message
                names ``source`` and the place (a ValueError, as before).
        """
        check = Checker(source)
        if not isinstance(obj, Mapping) or obj.get("schema") != SCHEMA:
            check.fail("", f"not a maeltrace summary (schema {SCHEMA!r} expected)")
        regions = check.list(check.field(obj, "regions", ""), "regions", max_items=MAX_REGIONS)
        rows = [
            _row_from_dict(check, region, at("regions", index))
            for index, region in enumerate(regions)
        ]
        seen: set[tuple[Key, str, bool]] = set()
        for index, row in enumerate(rows):
            # Every reader (compare, the report's tables and plots) takes a row per key and clock.
            if (row.key, row.clock, row.compiled) in seen:
                check.fail(at("regions", index), f"a second row of {row.label!r} ({row.clock})")
            seen.add((row.key, row.clock, row.compiled))
        qualify = any(row.device for row in rows)
        warmup = check.integer(check.field(obj, "warmup", ""), "warmup", maximum=MAX_COUNT)
        metadata = obj.get("metadata")
        return cls(
            rows=tuple(dataclasses.replace(row, qualify=qualify) for row in rows),
            warmup=warmup,
            metadata=_metadata(check, metadata) if metadata is not None else {},
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Summary:
        """Reads a ``stats.json`` file written by `save`, checked as `from_dict` checks it.

        Raises:
            FormatError: the file is missing, unreadable, larger than `MAX_STATS_BYTES`, not
                JSON, or not a valid maeltrace summary; the message names the file and the
                place (a ValueError, as before).
        """
        source = str(path)
        return cls.from_dict(read_json(path, max_bytes=MAX_STATS_BYTES), source=source)

    @property
    def throughput(self) -> dict[str, float]:
        """The FLOPs figures the timer was given, for MFU (``flops_per_item``,
        ``flops_per_token``, ``peak_flops``); empty where none were."""
        figures = self.metadata.get("throughput")
        return dict(figures) if isinstance(figures, dict) else {}

    @property
    def device_clock(self) -> dict[str, str] | None:
        """Name and description of the clock of the GPU rows, if any."""
        clock = self.metadata.get("device_clock")
        return clock if isinstance(clock, dict) else None

    # -- rendering -----------------------------------------------------------------------------

    def notes(self) -> list[str]:
        """What the tables leave out, one sentence each, as `to_markdown` prints them under the
        tables: failed regions, the rank of a distributed run, the clock of the GPU rows (or why
        there are none: no GPU), and what the first-call rows are."""
        out = []
        failed = {key_label(row.key): row.failed for row in self.rows if row.failed}
        if failed:
            listed = ", ".join(f"{label}: {n}" for label, n in failed.items())
            out.append(f"Failed regions, not in the statistics: {listed}")
        rank = self.metadata.get("rank")
        if isinstance(rank, dict) and rank.get("world_size", 1) > 1:
            out.append(
                f"Rank {rank['rank']} of {rank['world_size']} on {rank['node']} ({rank['source']})."
            )
        clock = self.device_clock
        if clock is not None and any(row.device for row in self.rows):
            out.append(f"GPU rows: {clock['name']}: {clock['description']}.")
        elif clock is not None and clock.get("no_gpu_reason"):
            out.append(
                f"No GPU rows: no GPU was found ({clock['no_gpu_reason']}); gpu=True regions "
                "were timed on the CPU clock only."
            )
        if any(row.compiled for row in self.rows):
            out.append(
                "First-call rows: regions during which JAX compiled, kept out of the others."
            )
        return out

    def to_markdown(self) -> str:
        """The seed's table, as Markdown that also reads well as plain text."""
        out = [_table([(row.label, row.stats) for row in self.rows])]
        if self.warmup:
            steady = [(row.label, row.steady) for row in self.rows]
            out.append(f"\nSteady state (first {self.warmup} samples of each key skipped):\n\n")
            out.append(_table(steady))
        throughput = self.throughput_cells()
        if throughput:
            which = "steady state" if self.warmup else "every sample"
            out.append(f"\nThroughput ({which}):\n\n")
            out.append(_grid(THROUGHPUT_COLUMNS, throughput))
        memory = self.memory_cells()
        if memory:
            out.append("\nPeak device memory per region:\n\n")
            out.append(_grid(MEMORY_COLUMNS, memory))
        out += [f"\n{note}\n" for note in self.notes()]
        return "".join(out)

    def throughput_cells(self) -> list[list[str]]:
        """The throughput table's body (`THROUGHPUT_COLUMNS`): a row per row with counted work,
        over the steady state where the warm-up leaves one, else every sample; empty without
        counts."""
        cells = []
        for row in self.rows:
            steady = bool(self.warmup) and row.steady is not None
            items = row.steady_items if steady else row.items
            tokens = row.steady_tokens if steady else row.tokens
            if not (row.items or row.tokens):
                continue
            rates = [row.rate(unit, steady=steady) for unit in UNITS]
            mfu = row.mfu(self.throughput, steady=steady)
            cells.append(
                [
                    row.label,
                    str(items) if row.items else "-",
                    f"{rates[0]:.1f}" if rates[0] is not None else "-",
                    str(tokens) if row.tokens else "-",
                    f"{rates[1]:.1f}" if rates[1] is not None else "-",
                    f"{mfu:.1%}" if mfu is not None else "-",
                ]
            )
        return cells

    def memory_cells(self) -> list[list[str]]:
        """The peak-memory table's body (`MEMORY_COLUMNS`, MiB): a row per row with peaks."""
        cells = []
        for row in self.rows:
            stats = row.memory_stats()
            if stats is None:
                continue
            mib = [f"{stats[f] / 2**20:.1f}" for f in ("min", "mean", "median", "max")]
            cells.append([row.label, *mib, str(stats["count"])])
        return cells

    def to_csv(self) -> str:
        """One line per key and sample set (``all``, and ``steady`` with warm-up)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        fields = [f for f in TimeStats.__slots__ if f != "count"]
        writer.writerow(
            ["metric", "key", "clock", "compiled", "samples", "warmup", "count", "failed"]
            + [f"{f}_s" for f in fields]
            + list(WORK_FIELDS)
        )
        for row in self.rows:
            sets = [("all", 0, row.stats)]
            if row.steady is not None:
                sets.append(("steady", self.warmup, row.steady))
            for name, skipped, stats in sets:
                values = [repr(getattr(stats, f)) for f in fields]
                work = row.work_values(self.throughput, steady=name == "steady")
                values += [repr(work[f]) if f in work else "" for f in WORK_FIELDS]
                head = [
                    row.label,
                    str(row.key),
                    row.clock,
                    int(row.compiled),
                    name,
                    skipped,
                    stats.count,
                    row.failed,
                ]
                writer.writerow([*head, *values])
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """Every field, with units and run metadata; what ``stats.json`` holds."""
        return {
            "schema": SCHEMA,
            "units": {"time": "s", "count": "regions"},
            "warmup": self.warmup,
            "metadata": self.metadata,
            "regions": [
                {
                    "key": str(row.key),
                    "label": row.label,
                    "clock": row.clock,
                    "device": row.device,
                    "compiled": row.compiled,
                    "failed": row.failed,
                    "stats": row.stats.to_dict(),
                    "steady": row.steady.to_dict() if row.steady is not None else None,
                    "samples_ns": list(row.samples_ns),
                    **_work_dict(row),
                }
                for row in self.rows
            ],
        }

    def to_attributes(self) -> dict[str, float | int]:
        """The exact statistics as flat span attributes, as the run span carries them:
        ``maeltrace.stats.<key>.<cpu|gpu>[.first_call].<field>`` for every `TimeStats` field
        (seconds; ``count`` an int), and the row's `WORK_FIELDS` where it has them, over all
        samples (warm-up included)."""
        out: dict[str, float | int] = {}
        for row in self.rows:
            clock = semconv.STATS_GPU if row.device else semconv.STATS_CPU
            if row.compiled:
                clock += "." + semconv.FIRST_CALL
            values = {**row.stats.to_dict(), **row.work_values(self.throughput)}
            for field_name, value in values.items():
                out[semconv.stats_attribute(row.key, clock, field_name)] = value
        return out

    def to_json(self) -> str:
        """`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | os.PathLike[str], *, exist_ok: bool = True) -> Path:
        """Writes the summary atomically, in the format the suffix names.

        Raises:
            ValueError: the suffix is not one of `FORMATS`.
            FileExistsError: the file exists and ``exist_ok`` is false.
        """
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix in (".txt", ".md"):
            text = self.to_markdown()
        elif suffix == ".csv":
            text = self.to_csv()
        elif suffix == ".json":
            text = self.to_json()
        else:
            raise ValueError(
                f"cannot tell the format of {target.name!r}: use one of {', '.join(FORMATS)}"
            )
        return atomic_write_text(target, text, exist_ok=exist_ok)


def _work_dict(row: Row) -> dict[str, Any]:
    """The row's counts and peaks for ``stats.json``, only those it has (files of runs without
    them stay as they were)."""
    out: dict[str, Any] = {}
    for name in ("items", "tokens", "steady_items", "steady_tokens"):
        if getattr(row, name):
            out[name] = getattr(row, name)
    if row.peak_memory:
        out["peak_memory_bytes"] = list(row.peak_memory)
    return out


def _row_from_dict(check: Checker, value: Any, where: str) -> Row:
    region = check.object(value, where)
    samples = region.get("samples_ns")
    samples_where = at(where, "samples_ns")
    if samples is None:
        samples = []
    checked = tuple(
        check.integer(ns, at(samples_where, index), maximum=MAX_DURATION_NS)
        for index, ns in enumerate(check.list(samples, samples_where, max_items=MAX_SAMPLES))
    )
    key_where = at(where, "key")
    key_text = check.string(check.field(region, "key", where), key_where, max_length=MAX_NAME)
    if key_text == TimeType.ALL.value:
        check.fail(key_where, f"{key_text!r} cannot be a region key")
    steady = region.get("steady")
    return Row(
        key=canonical_key(key_text),
        clock=check.string(
            check.field(region, "clock", where), at(where, "clock"), max_length=MAX_NAME
        ),
        stats=_stats(check, check.field(region, "stats", where), at(where, "stats")),
        steady=_stats(check, steady, at(where, "steady")) if steady is not None else None,
        failed=check.integer(
            check.field(region, "failed", where), at(where, "failed"), maximum=MAX_COUNT
        ),
        compiled=check.boolean(check.field(region, "compiled", where), at(where, "compiled")),
        samples_ns=checked,
        items=_count(check, region, "items", where),
        tokens=_count(check, region, "tokens", where),
        steady_items=_count(check, region, "steady_items", where),
        steady_tokens=_count(check, region, "steady_tokens", where),
        peak_memory=tuple(
            check.integer(value, at(at(where, "peak_memory_bytes"), index), maximum=MAX_BYTES)
            for index, value in enumerate(
                check.list(
                    region.get("peak_memory_bytes") or [],
                    at(where, "peak_memory_bytes"),
                    max_items=MAX_SAMPLES,
                )
            )
        ),
    )


def _count(check: Checker, region: Mapping[str, Any], name: str, where: str) -> int:
    """An optional count of a row (``items``, ``tokens``...): 0 where the file has none."""
    value = region.get(name)
    return 0 if value is None else check.integer(value, at(where, name), maximum=MAX_BYTES)


def _stats(check: Checker, value: Any, where: str) -> TimeStats:
    """A `TimeStats` from its `TimeStats.to_dict` form: every field there, times finite and
    not negative seconds below `MAX_SECONDS` (the total below `MAX_COUNT` times that)."""
    stats = check.object(value, where)
    times = {
        name: check.number(
            check.field(stats, name, where),
            at(where, name),
            maximum=MAX_SECONDS * MAX_COUNT if name == "total" else MAX_SECONDS,
        )
        for name in TimeStats.__slots__
        if name != "count"
    }
    count = check.integer(check.field(stats, "count", where), at(where, "count"), maximum=MAX_COUNT)
    return TimeStats(count=count, **times)


def _metadata(check: Checker, value: Any) -> dict[str, Any]:
    """The run metadata, with the fields the reports read checked: the start time in range,
    names and versions strings, the rank and the device clock as `run_metadata` writes them."""
    meta = check.object(value, "metadata")
    for name in ("host", "run_id"):
        if meta.get(name) is not None:
            check.string(meta[name], at("metadata", name), max_length=MAX_NAME, empty=True)
    if meta.get("start_time_unix_nano") is not None:
        check.integer(
            meta["start_time_unix_nano"],
            "metadata.start_time_unix_nano",
            minimum=EARLIEST_UNIX_NS,
            maximum=LATEST_UNIX_NS,
        )
    versions = meta.get("versions")
    if versions is not None:
        for name, version in check.object(versions, "metadata.versions").items():
            check.string(version, at("metadata.versions", name), max_length=MAX_NAME, empty=True)
    rank = meta.get("rank")
    if rank is not None:
        rank = check.object(rank, "metadata.rank")
        for name in ("rank", "world_size"):
            check.integer(check.field(rank, name, "metadata.rank"), at("metadata.rank", name))
        for name in ("node", "source"):
            where = at("metadata.rank", name)
            check.string(
                check.field(rank, name, "metadata.rank"), where, max_length=MAX_NAME, empty=True
            )
    clock = meta.get("device_clock")
    if clock is not None:
        clock = check.object(clock, "metadata.device_clock")
        for name in ("name", "description"):
            where = at("metadata.device_clock", name)
            check.string(check.field(clock, name, "metadata.device_clock"), where, empty=True)
        if "no_gpu_reason" in clock:
            where = at("metadata.device_clock", "no_gpu_reason")
            check.string(clock["no_gpu_reason"], where, empty=True)
    return dict(meta)


_CELL_SPECIAL = re.compile(r"([\\|<>&])")
_TEXT_SPECIAL = re.compile(r"([\\`*_\[\]<>|#&])")


def markdown_cell(text: str, *, all_punctuation: bool = False) -> str:
    """``text`` safe in a Markdown table cell: on one line (a line break would end the row),
    with a backslash before ``|`` (which would split the cell), backslash, and the characters
    HTML gives meaning to, ``<``, ``>`` and ``&``, where the Markdown is rendered. With
    ``all_punctuation``, also before the characters that make links, emphasis, code and
    headings, for text of a rendered page (``report.md``); `stats.md` keeps those, so key
    names such as ``data_load`` read as they are in plain text.

    The one escaping of file text in Markdown: ``stats.md`` and ``report.md`` both use it.
    """
    pattern = _TEXT_SPECIAL if all_punctuation else _CELL_SPECIAL
    return pattern.sub(r"\\\1", " ".join(text.splitlines()))


def table_cells(rows: Sequence[tuple[str, TimeStats | None]]) -> list[list[str]]:
    """The body cells of the seed's table, one list per row in `COLUMNS` order: the label, the
    times as `format_seconds` prints them and the count; ``-`` in every column but the label
    where a row has no statistics (all its samples were warm-up)."""
    cells = []
    for label, stats in rows:
        if stats is None:
            cells.append([label, *(["-"] * (len(COLUMNS) - 1))])
            continue
        times = (stats.min, stats.mean, stats.median, stats.max, stats.stdev)
        cells.append([label, *(format_seconds(t) for t in times), str(stats.count)])
    return cells


def _table(rows: Sequence[tuple[str, TimeStats | None]]) -> str:
    """The seed's table of times, as Markdown."""
    return _grid(COLUMNS, table_cells(rows))


def _grid(columns: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table: a label column, then right-aligned value columns."""
    cells = [list(columns), *([markdown_cell(c) for c in r] for r in body)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        first, *rest = values
        padded = [first.ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(rest, widths[1:], strict=True)
        ]
        return "| " + " | ".join(padded) + " |\n"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|\n"
    return line(cells[0]) + rule + "".join(line(r) for r in cells[1:])
