"""The seed's summary tables, and the stats files: text, Markdown, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maeltrace.files import atomic_write_text
from maeltrace.keys import Key, key_label
from maeltrace.records import STATUS_OK, Records
from maeltrace.stats import TimeStats, compute_stats

__all__ = ["FORMATS", "Row", "Summary", "format_seconds"]

SCHEMA = "maeltrace.stats/1"

FORMATS = (".txt", ".md", ".csv", ".json")
"""File suffixes `Summary.save` understands."""

COLUMNS = ("Metric", "Min [s]", "Mean [s]", "Median [s]", "Max [s]", "Stdev [s]", "Count")


def format_seconds(value: float) -> str:
    """Five decimals like the seed's tables; below a millisecond, three significant digits in
    scientific notation, so short regions do not print as 0.00000."""
    if value == 0 or abs(value) >= 1e-3:
        return f"{value:.5f}"
    return f"{value:.3e}"


@dataclass(frozen=True, slots=True)
class Row:
    """One key of a summary.

    Attributes:
        key: the region key.
        clock: the clock its durations were measured on (``cpu`` for now).
        stats: statistics over every completed region.
        steady: statistics without the warm-up samples; None when warm-up is 0 or leaves none.
        failed: regions of this key whose body raised (left out of the statistics).
    """

    key: Key
    clock: str
    stats: TimeStats
    steady: TimeStats | None
    failed: int

    @property
    def label(self) -> str:
        """The row's name in the tables."""
        return key_label(self.key)


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
        cls, records: Records, *, warmup: int, metadata: dict[str, Any] | None = None
    ) -> Summary:
        """Summarises a record snapshot in one pass over its rows."""
        done: dict[int, list[int]] = {}
        failed: dict[int, int] = {}
        for key_id, start, end, status in zip(
            records.key_id, records.start_ns, records.end_ns, records.status, strict=True
        ):
            if status == STATUS_OK:
                done.setdefault(key_id, []).append(end - start)
            else:
                failed[key_id] = failed.get(key_id, 0) + 1
        rows = []
        for key_id, key in enumerate(records.keys):
            durations = done.get(key_id)
            if not durations:
                continue
            steady = durations[warmup:] if warmup else []
            rows.append(
                Row(
                    key=key,
                    clock="cpu",
                    stats=compute_stats(durations),
                    steady=compute_stats(steady) if steady else None,
                    failed=failed.get(key_id, 0),
                )
            )
        return cls(rows=tuple(rows), warmup=warmup, metadata=metadata or {})

    # -- rendering -----------------------------------------------------------------------------

    def to_markdown(self) -> str:
        """The seed's table, as Markdown that also reads well as plain text."""
        out = [_table([(row.label, row.stats) for row in self.rows])]
        if self.warmup:
            steady = [(row.label, row.steady) for row in self.rows]
            out.append(f"\nSteady state (first {self.warmup} samples of each key skipped):\n\n")
            out.append(_table(steady))
        failed = [f"{row.label}: {row.failed}" for row in self.rows if row.failed]
        if failed:
            out.append(f"\nFailed regions, not in the statistics: {', '.join(failed)}\n")
        return "".join(out)

    def to_csv(self) -> str:
        """One line per key and sample set (``all``, and ``steady`` with warm-up)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        fields = [f for f in TimeStats.__slots__ if f != "count"]
        writer.writerow(
            ["metric", "key", "clock", "samples", "warmup", "count", "failed"]
            + [f"{f}_s" for f in fields]
        )
        for row in self.rows:
            sets = [("all", 0, row.stats)]
            if row.steady is not None:
                sets.append(("steady", self.warmup, row.steady))
            for name, skipped, stats in sets:
                values = [repr(getattr(stats, f)) for f in fields]
                head = [row.label, str(row.key), row.clock, name, skipped, stats.count, row.failed]
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
                    "failed": row.failed,
                    "stats": row.stats.to_dict(),
                    "steady": row.steady.to_dict() if row.steady is not None else None,
                }
                for row in self.rows
            ],
        }

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


def _table(rows: Sequence[tuple[str, TimeStats | None]]) -> str:
    cells = [list(COLUMNS)]
    for label, stats in rows:
        if stats is None:
            cells.append([label, *(["-"] * (len(COLUMNS) - 1))])
            continue
        times = (stats.min, stats.mean, stats.median, stats.max, stats.stdev)
        cells.append([label, *(format_seconds(t) for t in times), str(stats.count)])
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]

    def line(values: Sequence[str]) -> str:
        first, *rest = values
        padded = [first.ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(rest, widths[1:], strict=True)
        ]
        return "| " + " | ".join(padded) + " |\n"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|\n"
    return line(cells[0]) + rule + "".join(line(r) for r in cells[1:])
