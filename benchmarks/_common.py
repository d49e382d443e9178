"""What the benchmark scripts share: the machine header, tables, JSON output, the command line
boilerplate, round-robin order and same-round ratios, and formatting of verdicts and figures.

Imported as ``benchmarks._common`` when a benchmark is imported (the smoke tests), and as
``_common`` when one runs as a script (``python benchmarks/NAME.py`` puts ``benchmarks/`` first
on ``sys.path``): see the ``try`` around the import at the top of each script.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import random
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter_ns
from typing import Any, TypeVar

T = TypeVar("T")

PURE_PYTHON_ENV = "MAELTRACE_PURE_PYTHON"
"""Environment variable that makes Timer() skip the compiled recorder."""


# -- the machine and versions -----------------------------------------------------------------


def python_version() -> str:
    """The interpreter's version, e.g. ``3.12.3``."""
    return sys.version.split()[0]


def version(dist: str) -> str:
    """An installed distribution's version, or ``"not installed"``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load(*, all_three: bool = False) -> str:
    """The 1-minute load average (or the 1, 5 and 15-minute ones), or ``"unknown"``.

    Other work on the machine moves every figure; the load says how much there was.
    """
    try:
        loads = os.getloadavg()
    except OSError:
        return "unknown"
    return ", ".join(f"{x:.2f}" for x in loads) if all_three else f"{loads[0]:.2f}"


def implementation() -> str:
    """Which recorder an enabled Timer picks (``"compiled"`` or ``"python"``).

    Older builds have no ``implementation`` attribute; then the bound method's type tells.
    """
    import maeltrace

    tmr = maeltrace.Timer(enabled=True, export=False)
    found = getattr(tmr, "implementation", None)
    if isinstance(found, str):
        return found
    return "compiled" if isinstance(tmr.start, types.BuiltinMethodType) else "python"


def environment(*dists: str, all_loads: bool = False) -> dict[str, Any]:
    """The header every timing benchmark prints (and writes to its JSON): the machine, its
    load, Python, maeltrace and its recorder, and the versions of ``dists``."""
    import maeltrace

    load_key = "load avg 1/5/15m" if all_loads else "load avg 1m"
    env: dict[str, Any] = {
        "cpus": os.cpu_count(),
        load_key: load(all_three=all_loads),
        "python": python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "maeltrace": maeltrace.__version__,
        "maeltrace recorder": implementation(),
    }
    env.update({dist: version(dist) for dist in dists})
    return env


def header_line(fields: Mapping[str, Any]) -> str:
    """``key value, key value, ...``: how the header's fields are printed."""
    return ", ".join(f"{k} {v}" for k, v in fields.items())


@contextmanager
def env_var(name: str, value: str | None) -> Iterator[None]:
    """Sets an environment variable for the block and puts back what was there (main() may run
    inside a test process); ``None`` leaves the environment alone."""
    if value is None:
        yield
        return
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


# -- the command line and the output ----------------------------------------------------------


def parser(doc: str | None, quick_help: str) -> argparse.ArgumentParser:
    """The benchmark's parser, described by its docstring's first paragraph, with ``--quick``."""
    out = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    out.add_argument("--quick", action="store_true", help=quick_help)
    return out


def add_json(args: argparse.ArgumentParser) -> None:
    """Adds ``--json PATH``; see `write_json`."""
    args.add_argument("--json", type=Path, metavar="PATH", help="also write figures as JSON")


def pick(value: T | None, quick: bool, quick_default: T, default: T) -> T:
    """A size from the command line, else its ``--quick`` or full default."""
    if value:
        return value
    return quick_default if quick else default


def write_json(path: Path | None, payload: Mapping[str, Any]) -> None:
    """Writes the figures as indented JSON and says so; ``None`` writes nothing."""
    if path is None:
        return
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def seconds_since(started_ns: int) -> float:
    """Seconds since a ``perf_counter_ns`` reading."""
    return (perf_counter_ns() - started_ns) / 1e9


# -- tables and figures -----------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column (names) left-aligned, the figures right-aligned,
    a dashed line under the headers."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def whole(value: float | None) -> str:
    """A figure with thousands separators and no decimals, or ``-``."""
    return "-" if value is None else f"{value:,.0f}"


def verdict(ok: bool | None) -> str:
    """A target's verdict: ``yes``, ``NO`` or ``n/a`` (not measured)."""
    return "n/a" if ok is None else ("yes" if ok else "NO")


# -- rounds -----------------------------------------------------------------------------------


def rotated(items: Sequence[T], round_no: int) -> list[T]:
    """``items`` in the order of round ``round_no``: rotated by one each round, so that none
    always follows the same neighbour (whose garbage, caches or threads it would inherit)."""
    shift = round_no % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def same_round_ratios(values: Sequence[float], reference: Sequence[float]) -> list[float]:
    """Each round's figure over the reference's in the same round (rounds where the reference
    is 0 left out). Pairing by round cancels load that comes and goes across rounds, which a
    ratio of two medians would keep."""
    return [v / r for v, r in zip(values, reference, strict=True) if r > 0]


def bootstrap_interval(
    samples: Sequence[float],
    statistic: Callable[[Sequence[float]], float],
    *,
    confidence: float = 0.95,
    resamples: int = 4_000,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap interval of ``statistic`` over ``samples``.

    Resamples ``samples`` with replacement ``resamples`` times (a fixed seed, so a run's
    figures can be recomputed from its JSON) and returns the middle ``confidence`` of the
    statistic's values. With few samples (a benchmark's rounds) the interval is coarse: the
    median of 8 rounds can only land on the rounds' own values.
    """
    if not samples:
        raise ValueError("bootstrap_interval needs at least one sample")
    rng = random.Random(seed)
    n = len(samples)
    values = sorted(statistic(rng.choices(samples, k=n)) for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = values[int(tail * (resamples - 1))]
    high = values[round((1 - tail) * (resamples - 1))]
    return low, high


def ratio_verdict(
    measured: float | None,
    low: float | None,
    high: float | None,
    target: float,
    aa_half_width: float | None,
) -> str:
    """The verdict on a ratio target (``measured <= target``) that the run can resolve.

    Args:
        measured: the ratio to the baseline, or ``None`` if not measured.
        low, high: its interval (the band).
        target: the largest ratio allowed, e.g. 1.01.
        aa_half_width: how far the baseline's band against itself (A/A) reaches from 1, as a
            fraction (0.004 for +-0.4 %); ``None`` if not measured.

    Returns:
        ``yes`` when the A/A band is narrower than the target's margin and the whole band is at
        or below the target; ``NO`` when the A/A band is narrow enough and the whole band is
        above it; otherwise ``not resolved: ...`` saying why (a target is never declared met
        by a band too wide to see it missed); ``n/a`` when not measured.
    """
    if measured is None or low is None or high is None or aa_half_width is None:
        return "n/a"
    margin = target - 1
    if aa_half_width >= margin:
        return (
            f"not resolved: A/A band +-{aa_half_width * 100:.2f} % is wider than the target "
            f"(+-{margin * 100:.1f} %)"
        )
    if high <= target:
        return "yes"
    if low > target:
        return "NO"
    return f"not resolved: band {low:.4f}..{high:.4f}x straddles {target:g}x"
