"""``maeltrace compare``: whether a change made training slower, region by region.

Two sets of run summaries (a bench folder, a run folder, a ``stats.json`` file or an MLflow run
each) are matched by app, region key, clock (``cpu`` or ``gpu``) and first-call rows. For every
match the ratio of medians candidate/baseline gets a percentile bootstrap interval, and the row
a `Verdict`: `Verdict.SLOWER` (a regression) when the ratio exceeds ``1 + threshold`` and the
whole interval lies above 1, `Verdict.FASTER` in the mirror case, `Verdict.SAME` when the whole
interval lies within the threshold either way, and `Verdict.UNCLEAR` otherwise (the interval is
too wide to tell). Rows with fewer than `MIN_SAMPLES` samples a side are never flagged.

The interval covers the spread of the samples within each run, not the spread between runs: a
busy machine, another process, a different CPU frequency move every sample of a run together.
Two benches of the same code on a shared two-core machine differed by up to 50 % in a region,
well outside their intervals. Compare runs made on the same, quiet machine, and set the
threshold above the spread that two runs of the baseline show against each other.

The statistics are pure functions (`compare_samples`, `compare_summaries`); numpy and MLflow
load only in the functions that need them.
"""

# Over 600 lines: statistics, loading, rendering and the command line of one command; next
# split: the statistics section (bootstrap, verdicts) into a module of its own.

from __future__ import annotations

import argparse
import enum
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from maeltrace._arguments import non_negative_int, positive_int
from maeltrace._files import atomic_write_text
from maeltrace._imports import require
from maeltrace._output import output_root
from maeltrace._validate import read_json
from maeltrace.errors import MaeltraceError
from maeltrace.keys import canonical_key, key_label
from maeltrace.report import MAX_STATS_BYTES, Row, Summary
from maeltrace.sinks.mlflow import ARTIFACT_PATH, bounded_http
from maeltrace.tools.benchfiles import read_app_info, read_bench
from maeltrace.tools.benchstore import (
    BENCH_APP_TAG,
    BENCH_TIMEOUT_S,
    PARENT_RUN_TAG,
    STATS_ARTIFACT,
    bench_tracking_uri,
    sqlite_path,
)

if TYPE_CHECKING:
    import numpy as np
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient
    from numpy.typing import NDArray

__all__ = [
    "MIN_SAMPLES",
    "CompareError",
    "CompareReport",
    "Comparison",
    "RowComparison",
    "Unmatched",
    "Verdict",
    "compare_samples",
    "compare_summaries",
    "load_summaries",
    "main",
]

PROG = "maeltrace compare"

SCHEMA = "maeltrace.compare/1"
"""The ``schema`` of the ``--json`` output."""

MIN_SAMPLES = 3
"""Fewest samples a side for a row to be compared."""

DEFAULT_THRESHOLD = 0.05
DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0

CPU = "cpu"
GPU = "gpu"

# A 32-hex-digit string is a run id even if a file of that name exists (write ./NAME for the
# file); any other string is one only where no such path exists and MLflow would accept it.
_HEX_RUN_ID = re.compile(r"[0-9a-f]{32}")
_MLFLOW_RUN_ID = re.compile(r"[A-Za-z0-9][\w\-]{0,255}")
_FIRST_CALL = " (first call)"


class CompareError(MaeltraceError, ValueError):
    """Bad input to a comparison: an unreadable or malformed file, an unknown run id, bad
    settings, or two sides with nothing in common."""


class Verdict(enum.StrEnum):
    """What a row's comparison says."""

    SLOWER = "slower"
    """A regression: ratio above ``1 + threshold`` and the whole interval above 1."""
    FASTER = "faster"
    """Ratio below ``1 / (1 + threshold)`` and the whole interval below 1."""
    SAME = "same"
    """The whole interval lies within the threshold either way."""
    UNCLEAR = "unclear"
    """Neither: the interval is too wide to tell (more samples would)."""
    TOO_FEW = "too few samples"
    """Fewer than `MIN_SAMPLES` samples on a side; never flagged."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """Candidate against baseline durations of one row.

    Attributes:
        baseline_count: baseline samples compared.
        candidate_count: candidate samples compared.
        baseline_median_ns: their median; None without samples.
        candidate_median_ns: their median; None without samples.
        ratio: candidate median / baseline median; None without samples on a side, infinite
            or NaN where the baseline median is 0.
        low: lower end of the bootstrap interval of the ratio; None with too few samples.
        high: upper end of that interval; None with too few samples.
        verdict: what the comparison says.
        threshold: relative change below which rows are not flagged (0.05: 5 %).
        confidence: the interval's confidence level.
    """

    baseline_count: int
    candidate_count: int
    baseline_median_ns: float | None
    candidate_median_ns: float | None
    ratio: float | None
    low: float | None
    high: float | None
    verdict: Verdict
    threshold: float
    confidence: float

    @property
    def regressed(self) -> bool:
        """Whether the candidate is slower."""
        return self.verdict is Verdict.SLOWER


@dataclass(frozen=True, slots=True)
class RowComparison:
    """One matched row of the two sides.

    Attributes:
        app: the app (summary) name.
        key: the region key as ``stats.json`` holds it.
        region: the row's label, ``Batch``, ``Forward (first call)``.
        clock: ``cpu`` or ``gpu``.
        first_call: the row holds JAX's first (compiling) calls.
        comparison: the statistics.
    """

    app: str
    key: str
    region: str
    clock: str
    first_call: bool
    comparison: Comparison


@dataclass(frozen=True, slots=True)
class Unmatched:
    """An app, or one row of an app, present on one side only.

    Attributes:
        side: ``baseline`` or ``candidate``.
        app: the app name.
        key: the region key; None when the whole app is on one side only.
        region: the row's label; None for a whole app.
        clock: ``cpu`` or ``gpu``; None for a whole app.
        first_call: the row holds first calls.
    """

    side: str
    app: str
    key: str | None = None
    region: str | None = None
    clock: str | None = None
    first_call: bool = False

    @property
    def label(self) -> str:
        """``app`` for a whole app, else ``app: Region (clock)``."""
        if self.key is None:
            return f"{self.app} (whole app)"
        notes = f"{self.clock}, first call" if self.first_call else self.clock
        region = (self.region or self.key).removesuffix(_FIRST_CALL)
        return f"{self.app}: {region} ({notes})"


@dataclass(frozen=True, slots=True)
class CompareReport:
    """Every row compared, what was on one side only, and the settings.

    Attributes:
        rows: matched rows, in the baseline's order.
        unmatched: apps and rows on one side only.
        threshold: relative change below which rows are not flagged.
        confidence: the intervals' confidence level.
        resamples: bootstrap resamples per row.
        seed: seed of each row's resampling.
        include_warmup: warm-up samples were compared too.
    """

    rows: tuple[RowComparison, ...]
    unmatched: tuple[Unmatched, ...]
    threshold: float
    confidence: float
    resamples: int
    seed: int
    include_warmup: bool

    @property
    def regressed(self) -> bool:
        """Whether any row is slower."""
        return any(row.comparison.regressed for row in self.rows)

    def counts(self) -> dict[Verdict, int]:
        """Rows per verdict, every verdict present."""
        out = dict.fromkeys(Verdict, 0)
        for row in self.rows:
            out[row.comparison.verdict] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every row and setting, JSON-ready (non-finite ratios become None)."""

        def unmatched(side: str) -> list[dict[str, Any]]:
            return [
                {
                    "app": u.app,
                    "key": u.key,
                    "region": u.region,
                    "clock": u.clock,
                    "first_call": u.first_call,
                }
                for u in self.unmatched
                if u.side == side
            ]

        return {
            "schema": SCHEMA,
            "threshold": self.threshold,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "seed": self.seed,
            "include_warmup": self.include_warmup,
            "regressed": self.regressed,
            "counts": {str(k): v for k, v in self.counts().items()},
            "rows": [
                {
                    "app": row.app,
                    "key": row.key,
                    "region": row.region,
                    "clock": row.clock,
                    "first_call": row.first_call,
                    "verdict": str(row.comparison.verdict),
                    "ratio": _finite(row.comparison.ratio),
                    "ci_low": _finite(row.comparison.low),
                    "ci_high": _finite(row.comparison.high),
                    "baseline_median_ns": row.comparison.baseline_median_ns,
                    "candidate_median_ns": row.comparison.candidate_median_ns,
                    "baseline_count": row.comparison.baseline_count,
                    "candidate_count": row.comparison.candidate_count,
                }
                for row in self.rows
            ],
            "only_in_baseline": unmatched("baseline"),
            "only_in_candidate": unmatched("candidate"),
        }

    def to_text(self) -> str:
        """The aligned table, what was on one side only, and `verdict_line` last."""
        head = ["", "app", "region", "clock", "baseline", "candidate", "ratio"]
        head += [f"{_percent(self.confidence)} CI", "verdict"]
        cells = [head]
        for row in self.rows:
            c = row.comparison
            cells.append(
                [
                    "!!" if c.regressed else "",
                    row.app,
                    row.region,
                    row.clock,
                    _duration(c.baseline_median_ns),
                    _duration(c.candidate_median_ns),
                    _ratio(c.ratio),
                    "-" if c.low is None or c.high is None else f"{c.low:.3f}-{c.high:.3f}",
                    "SLOWER" if c.regressed else str(c.verdict),
                ]
            )
        right = {4, 5, 6, 7}
        widths = [max(len(line[i]) for line in cells) for i in range(len(head))]
        lines = [
            "  ".join(
                cell.rjust(w) if i in right else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
            for line in cells
        ]
        lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
        out = ["\n".join(lines), ""]
        band = f"{_percent(self.threshold)}"
        if any(r.comparison.verdict is Verdict.UNCLEAR for r in self.rows):
            out.append(
                f"unclear: the interval reaches past the {band} threshold without settling the "
                "question; more samples would tell."
            )
        for side in ("baseline", "candidate"):
            labels = [u.label for u in self.unmatched if u.side == side]
            if labels:
                out.append(f"only in the {side}, not compared: {', '.join(labels)}")
        if len(out) > 2:
            out.append("")
        out.append(self.verdict_line())
        return "\n".join(out) + "\n"

    def verdict_line(self) -> str:
        """One line: regression or not, and the rows per verdict."""
        counts = self.counts()
        slower = counts[Verdict.SLOWER]
        rest = ", ".join(f"{n} {v}" for v, n in counts.items() if n and v is not Verdict.SLOWER)
        head = "REGRESSION" if slower else "no regression"
        line = (
            f"{head}: {slower} of {len(self.rows)} rows slower by more than "
            f"{_percent(self.threshold)} ({_percent(self.confidence)} confidence)"
        )
        return f"{line}; {rest}" if rest else line


# -- statistics ---------------------------------------------------------------------------------


def compare_samples(
    baseline_ns: Sequence[float],
    candidate_ns: Sequence[float],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Comparison:
    """Compares two sets of durations by the ratio of their medians.

    The interval is the percentile bootstrap of the ratio of medians, each side resampled
    independently with replacement. The median of a resample of sorted data is the data at
    the median of the resampled indices, and the order statistics of uniform indices follow
    Beta laws, so each resample's median is drawn exactly from one or two Beta variates: the
    same distribution as resampling all ``n`` values, in time independent of ``n``.

    Args:
        baseline_ns: the baseline durations.
        candidate_ns: the candidate durations.
        threshold: relative change below which nothing is flagged (0.05: 5 %).
        confidence: the interval's confidence level, in (0, 1).
        resamples: bootstrap resamples.
        seed: seed of the resampling; equal inputs and settings give equal results.

    Raises:
        CompareError: a setting is out of range.
        ImportError: numpy is not installed; the message names ``maeltrace[report]``.
    """
    _check_settings(threshold, confidence, resamples, seed)
    return _compare(
        require("numpy", "report"),
        baseline_ns,
        candidate_ns,
        threshold=threshold,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


def _compare(
    np: ModuleType,
    baseline_ns: Sequence[float],
    candidate_ns: Sequence[float],
    *,
    threshold: float,
    confidence: float,
    resamples: int,
    seed: int,
) -> Comparison:
    """`compare_samples` with checked settings and numpy loaded (once for all rows)."""
    base = np.sort(np.asarray(baseline_ns, dtype=np.float64))
    cand = np.sort(np.asarray(candidate_ns, dtype=np.float64))
    base_median = _sorted_median(base)
    cand_median = _sorted_median(cand)
    ratio = (
        None if base_median is None or cand_median is None else _divide(cand_median, base_median)
    )
    low = high = None
    if min(base.size, cand.size) < MIN_SAMPLES:
        verdict = Verdict.TOO_FEW
    else:
        assert ratio is not None
        rng = np.random.default_rng(seed)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = _bootstrap_medians(cand, resamples, rng) / _bootstrap_medians(
                base, resamples, rng
            )
        alpha = (1.0 - confidence) / 2.0
        low, high = (float(q) for q in np.quantile(ratios, [alpha, 1.0 - alpha]))
        verdict = _classify(ratio, low, high, threshold)
    return Comparison(
        baseline_count=int(base.size),
        candidate_count=int(cand.size),
        baseline_median_ns=base_median,
        candidate_median_ns=cand_median,
        ratio=ratio,
        low=low,
        high=high,
        verdict=verdict,
        threshold=threshold,
        confidence=confidence,
    )


def _sorted_median(ordered: NDArray[np.float64]) -> float | None:
    """`numpy.median` of the sorted ``ordered``, without its partitioning copy; None if empty."""
    n = ordered.size
    if not n:
        return None
    if math.isnan(ordered[-1]):  # NaN sorts last; numpy.median gives NaN for any NaN
        return math.nan
    middle = n // 2
    return float(ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2.0)


def _bootstrap_medians(
    ordered: NDArray[np.float64], resamples: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Medians of ``resamples`` bootstrap resamples of the sorted ``ordered``."""
    n = ordered.size

    def at(u: NDArray[np.float64]) -> NDArray[np.float64]:
        # floor(n * U) of a uniform U is a uniform index, and monotone in U; U can be 1.
        index: NDArray[np.intp] = (u * n).astype("intp").clip(None, n - 1)
        return ordered[index]

    if n % 2:
        k = (n + 1) // 2  # the k-th smallest of n uniforms is Beta(k, n + 1 - k)
        return at(rng.beta(k, n + 1 - k, size=resamples))
    m = n // 2
    lower = rng.beta(m, n + 1 - m, size=resamples)
    # Given the m-th smallest at u, the other n - m lie uniformly above it; the next is their
    # smallest, u + (1 - u) * Beta(1, n - m).
    upper = lower + (1.0 - lower) * rng.beta(1, n - m, size=resamples)
    result: NDArray[np.float64] = (at(lower) + at(upper)) / 2.0
    return result


def _classify(ratio: float, low: float, high: float, threshold: float) -> Verdict:
    upper = 1.0 + threshold
    lower = 1.0 / upper
    if ratio > upper and low > 1.0:
        return Verdict.SLOWER
    if ratio < lower and high < 1.0:
        return Verdict.FASTER
    if lower <= low and high <= upper:
        return Verdict.SAME
    return Verdict.UNCLEAR  # NaN (zero baseline medians) lands here too


def _divide(numerator: float, denominator: float) -> float:
    if denominator:
        return numerator / denominator
    return math.inf if numerator else math.nan


def _check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, int | float) and 0 <= threshold < math.inf):
        raise CompareError(f"the threshold must be a finite number >= 0, not {threshold!r}")


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, int | float) and 0 < confidence < 1):
        raise CompareError(f"the confidence must lie strictly between 0 and 1, not {confidence!r}")


def _check_settings(threshold: float, confidence: float, resamples: int, seed: int) -> None:
    _check_threshold(threshold)
    _check_confidence(confidence)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise CompareError(f"resamples must be an int >= 1, not {resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CompareError(f"the seed must be an int >= 0, not {seed!r}")


def compare_summaries(
    baseline: Mapping[str, Summary],
    candidate: Mapping[str, Summary],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    include_warmup: bool = False,
) -> CompareReport:
    """Compares every row present on both sides (see `compare_samples`).

    Rows match by app name, region key, clock (``cpu`` or ``gpu``, whatever the device clock)
    and first-call or not. Where each side holds one summary under different names (two
    ``stats.json`` files of different folders), the two are compared as one app, named
    ``baseline -> candidate``. Each side skips the first ``warmup`` samples of each row, as its
    summary says, unless ``include_warmup``.

    Args:
        baseline: summaries by app name (`load_summaries`).
        candidate: the same, for the candidate.
        threshold: see `compare_samples`.
        confidence: see `compare_samples`.
        resamples: see `compare_samples`.
        seed: see `compare_samples`; every row uses it.
        include_warmup: compare the warm-up samples too.

    Raises:
        CompareError: a setting is out of range, a summary holds one row twice or a row whose
            key is not a region key, or no row is on both sides.
        ImportError: numpy is not installed.
    """
    _check_settings(threshold, confidence, resamples, seed)
    np = require("numpy", "report")
    if len(baseline) == 1 and len(candidate) == 1 and baseline.keys() != candidate.keys():
        ((base_name, only_base),) = baseline.items()
        ((cand_name, only_cand),) = candidate.items()
        name = f"{base_name} -> {cand_name}"
        baseline, candidate = {name: only_base}, {name: only_cand}
    rows: list[RowComparison] = []
    unmatched: list[Unmatched] = []
    for app, base_summary in baseline.items():
        if app not in candidate:
            unmatched.append(Unmatched("baseline", app))
            continue
        cand_summary = candidate[app]
        base_rows = _rows(app, base_summary)
        cand_rows = _rows(app, cand_summary)
        for ident, base_row in base_rows.items():
            cand_row = cand_rows.get(ident)
            if cand_row is None:
                unmatched.append(_unmatched("baseline", app, ident, base_row))
                continue
            comparison = _compare(
                np,
                _samples(base_row, base_summary, include_warmup),
                _samples(cand_row, cand_summary, include_warmup),
                threshold=threshold,
                confidence=confidence,
                resamples=resamples,
                seed=seed,
            )
            key, clock, first_call = ident
            rows.append(RowComparison(app, key, _region(base_row), clock, first_call, comparison))
        unmatched.extend(
            _unmatched("candidate", app, ident, row)
            for ident, row in cand_rows.items()
            if ident not in base_rows
        )
    unmatched.extend(Unmatched("candidate", app) for app in candidate if app not in baseline)
    if not rows:
        common = set(baseline) & set(candidate)
        detail = (
            f"no region of {', '.join(sorted(common))} is on both sides"
            if common
            else f"baseline apps {sorted(baseline)}, candidate apps {sorted(candidate)}"
        )
        raise CompareError(f"nothing in common to compare: {detail}")
    return CompareReport(
        rows=tuple(rows),
        unmatched=tuple(unmatched),
        threshold=threshold,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
        include_warmup=include_warmup,
    )


_Ident = tuple[str, str, bool]


def _rows(app: str, summary: Summary) -> dict[_Ident, Row]:
    out: dict[_Ident, Row] = {}
    for row in summary.rows:
        try:  # a summary built in code, not loaded, may hold any key
            key = canonical_key(row.key)
        except (TypeError, ValueError) as exc:
            raise CompareError(f"{app}: the summary holds a row of key {row.key!r}: {exc}") from exc
        ident = (str(key), GPU if row.device else CPU, row.compiled)
        if ident in out:
            raise CompareError(f"{app}: the summary holds the row {_region(row)!r} twice")
        out[ident] = row
    return out


def _samples(row: Row, summary: Summary, include_warmup: bool) -> tuple[int, ...]:
    return row.samples_ns if include_warmup else row.samples_ns[summary.warmup :]


def _region(row: Row) -> str:
    # `_rows` has checked the key; Summary.load gives canonical keys, code may give strings.
    return key_label(canonical_key(row.key)) + (_FIRST_CALL if row.compiled else "")


def _unmatched(side: str, app: str, ident: _Ident, row: Row) -> Unmatched:
    key, clock, first_call = ident
    return Unmatched(side, app, key, _region(row), clock, first_call)


# -- loading ------------------------------------------------------------------------------------


def load_summaries(
    source: str | os.PathLike[str], tracking_uri: str | None = None
) -> dict[str, Summary]:
    """The run summaries a source names, by app name.

    A source is a bench folder (``bench.json``: every app with status ``ok``), an app's run
    folder (``stats.json``, named by its ``app.json``, else by the folder), a ``stats.json``
    file (named likewise by its folder), or an MLflow run id: 32 hex digits, or any string that
    is not an existing path. A run with a `maeltrace.tools.benchstore.STATS_ARTIFACT` artifact gives
    its summary, named by its `maeltrace.tools.benchstore.BENCH_APP_TAG` tag, else its run name; a
    run without one (a bench's parent run) gives those of its child runs that have one.

    Args:
        source: the path or run id.
        tracking_uri: the MLflow store of run ids; default ``MLFLOW_TRACKING_URI``, else
            ``maeltrace bench``'s store in the output folder
            (`maeltrace.tools.benchstore.bench_store`).

    Raises:
        CompareError: the source is missing, unreadable or malformed, or no such run exists.
        ImportError: a run id was given and MLflow is not installed.
    """
    if not isinstance(source, str):
        return _load_path(Path(source))
    if not source:
        raise CompareError("an empty string names no file, folder or run")
    path = Path(source)
    looks_like_path = _HEX_RUN_ID.fullmatch(source) is None
    if looks_like_path and path.exists():
        return _load_path(path)
    if _MLFLOW_RUN_ID.fullmatch(source) is None:
        raise CompareError(f"{source}: no such file or folder")
    return _load_run(source, tracking_uri, looks_like_path=looks_like_path)


def _load_path(path: Path) -> dict[str, Summary]:
    if path.is_dir():
        if (path / "bench.json").is_file():
            return _load_bench(path)
        if (path / "stats.json").is_file():
            return {_app_name(path): _load_summary(path / "stats.json")}
        raise CompareError(
            f"{path}: neither a bench folder (bench.json) nor a run folder (stats.json)"
        )
    if not path.exists():
        raise CompareError(f"{path}: no such file or folder")
    if path.name == "bench.json":
        return _load_bench(path.parent)
    return {_app_name(path.parent): _load_summary(path)}


def _load_bench(folder: Path) -> dict[str, Summary]:
    try:
        bench = read_bench(folder)
    except ValueError as exc:  # the message names the file and the entry
        raise CompareError(str(exc)) from exc
    out = {
        app.name: _load_summary(folder / app.folder / "stats.json")
        for app in bench.apps
        if app.status == "ok"
    }
    if not out:
        raise CompareError(f"{folder / 'bench.json'}: no app of the bench finished (status 'ok')")
    return out


def _app_name(folder: Path) -> str:
    app_json = folder / "app.json"
    if app_json.is_file():
        try:
            name = read_app_info(app_json).get("name")
        except ValueError as exc:  # the message names the file
            raise CompareError(str(exc)) from exc
        if not (isinstance(name, str) and name):
            raise CompareError(f"{app_json}: no 'name'")
        return name
    return folder.resolve().name or str(folder.resolve())


def _load_summary(path: Path) -> Summary:
    try:
        return Summary.load(path)
    except OSError as exc:
        raise CompareError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:  # the message names the file
        raise CompareError(str(exc)) from exc


def _load_run(
    run_id: str, tracking_uri: str | None, *, looks_like_path: bool
) -> dict[str, Summary]:
    uri = bench_tracking_uri(tracking_uri, output_root())[0]
    unknown = (
        f"{run_id}: no such file or folder, nor an MLflow run in {uri}"
        if looks_like_path
        else f"no MLflow run {run_id} in {uri}"
    )
    # MLflow would create a missing SQLite store; a typo must not leave one behind.
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise CompareError(f"{unknown} (there is no store at {database})")
    require("mlflow", "mlflow")
    with bounded_http(BENCH_TIMEOUT_S):
        return _load_run_from(uri, run_id, unknown)


def _load_run_from(uri: str, run_id: str, unknown: str) -> dict[str, Summary]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise CompareError(f"{unknown}: {_one_line(exc)}") from exc
    try:
        if _has_stats(client, run_id):
            return {_run_name(run): _download(client, run_id)}
        out: dict[str, Summary] = {}
        for child in _children(client, run):
            if not _has_stats(client, child.info.run_id):
                continue  # an app that failed
            name = _run_name(child)
            if name in out:
                raise CompareError(f"MLflow run {run_id} has two child runs of app {name!r}")
            out[name] = _download(client, child.info.run_id)
    except (MlflowException, OSError) as exc:
        raise CompareError(f"MLflow run {run_id} in {uri}: {_one_line(exc)}") from exc
    if not out:
        raise CompareError(
            f"MLflow run {run_id} in {uri} has no {STATS_ARTIFACT} artifact, nor a child run "
            "with one"
        )
    return out


def _has_stats(client: MlflowClient, run_id: str) -> bool:
    return any(f.path == STATS_ARTIFACT for f in client.list_artifacts(run_id, ARTIFACT_PATH))


def _run_name(run: Run) -> str:
    name = run.data.tags.get(BENCH_APP_TAG) or run.info.run_name or run.info.run_id
    return str(name)


def _children(client: MlflowClient, run: Run) -> list[Run]:
    found: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.`{PARENT_RUN_TAG}` = '{run.info.run_id}'",
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        found.extend(page)
        token = page.token
        if not token:
            return found


def _download(client: MlflowClient, run_id: str) -> Summary:
    # Called within bounded_http, which keeps MLflow's progress bar off stderr.
    with tempfile.TemporaryDirectory(prefix="maeltrace-compare-") as folder:
        local = Path(client.download_artifacts(run_id, STATS_ARTIFACT, folder))
        source = f"MLflow run {run_id}, {STATS_ARTIFACT}"
        try:
            obj = read_json(local, max_bytes=MAX_STATS_BYTES, source=source)
            return Summary.from_dict(obj, source=source)
        except ValueError as exc:  # a FormatError, naming the run and the place
            raise CompareError(str(exc)) from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# -- rendering ----------------------------------------------------------------------------------


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.4g}%"


def _duration(ns: float | None) -> str:
    if ns is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale * 0.9995:  # what would print as 1000 of the unit below
            return f"{_three_digits(ns / scale)} {unit}"
    return f"{_three_digits(ns)} ns"


def _three_digits(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    if not math.isfinite(ratio):
        return str(ratio)
    return f"{ratio:.3f} ({(ratio - 1) * 100:+.1f}%)"


# -- command line -------------------------------------------------------------------------------


def _fraction(check: Callable[[float], None]) -> Callable[[str], float]:
    """An argparse type: ``0.05`` or ``5%``, in the range that ``check`` accepts."""

    def parse(text: str) -> float:
        stripped = text.strip()
        scale = 100.0 if stripped.endswith("%") else 1.0
        try:
            value = float(stripped.removesuffix("%")) / scale
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number or percentage: {text!r}") from None
        try:
            check(value)  # the library's own range check, for one message either way
        except CompareError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (given {text!r})") from None
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tells whether CANDIDATE is slower than BASELINE, region by region: the "
        "ratio of median durations with a bootstrap confidence interval. A row is slower when "
        "the ratio exceeds 1 + threshold and the whole interval lies above 1. Exit status: 1 "
        "when any row is slower, 0 otherwise, 2 for bad input. The interval covers the noise "
        "within each run, not between runs: compare runs from the same quiet machine, with a "
        "threshold above the spread of two runs of the baseline.",
    )
    source = (
        "a bench folder (bench.json), an app's run folder (stats.json), a stats.json file, or "
        "an MLflow run id (a bench's parent run, or one app's run)"
    )
    parser.add_argument("baseline", metavar="BASELINE", help=source)
    parser.add_argument("candidate", metavar="CANDIDATE", help="the same, for the change")
    parser.add_argument(
        "--threshold",
        type=_fraction(_check_threshold),
        default=DEFAULT_THRESHOLD,
        help="relative slowdown to flag, 0.05 or 5%% (default 5%%)",
    )
    parser.add_argument(
        "--confidence",
        type=_fraction(_check_confidence),
        default=DEFAULT_CONFIDENCE,
        help="confidence level of the intervals, 0.95 or 95%% (default 95%%)",
    )
    parser.add_argument(
        "--resamples",
        type=positive_int,
        default=DEFAULT_RESAMPLES,
        help=f"bootstrap resamples per row (default {DEFAULT_RESAMPLES})",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=DEFAULT_SEED, help="seed of the bootstrap"
    )
    parser.add_argument(
        "--include-warmup",
        action="store_true",
        help="compare the warm-up samples too (by default each row skips the first `warmup` "
        "samples its stats.json names)",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store of run ids (default $MLFLOW_TRACKING_URI, else the bench's store "
        "<output root>/mlflow.db)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="also write every row as JSON to PATH; '-' writes it to stdout instead of the table",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``maeltrace compare``; returns the exit status (1: a regression, 2: bad input)."""
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:  # --help, or a usage error argparse has already reported
        return exc.code if isinstance(exc.code, int) else 2
    try:
        baseline = load_summaries(args.baseline, args.tracking_uri)
        candidate = load_summaries(args.candidate, args.tracking_uri)
        report = compare_summaries(
            baseline,
            candidate,
            threshold=args.threshold,
            confidence=args.confidence,
            resamples=args.resamples,
            seed=args.seed,
            include_warmup=args.include_warmup,
        )
        if args.json is not None:
            document = {"baseline": args.baseline, "candidate": args.candidate}
            text = json.dumps({**document, **report.to_dict()}, indent=2) + "\n"
            if args.json == "-":
                sys.stdout.write(text)
            else:
                atomic_write_text(args.json, text)
        if args.json != "-":
            sys.stdout.write(report.to_text())
    except (CompareError, ImportError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 1 if report.regressed else 0
