"""Memory per recorded region: what a maeltrace Timer holds after N regions, in bytes per region.

What it measures:
    A Timer records ``--regions`` regions (default 1,000,000) with ``start``/``end``, cycling
    over three keys. Its memory is measured two ways:

    * ``tracemalloc``: tracing starts before the Timer is built; the figure is the traced memory
      after the loop minus before it (everything the Timer and its store allocated through
      Python's allocators, the compiled recorder's ``PyMem_Raw*`` buffers included), and the
      peak above the same base;
    * the store's own accounting (the recorder's ``nbytes()``), where the build has one.

    Each total is divided by N and set against the issue's target of at most 64 bytes per
    region. Where the compiled recorder is the default, the pure-Python recorder is measured
    too (``MAELTRACE_PURE_PYTHON=1`` while its Timer is built).

    Baselines in the same run: a Python list of ``(start, end)`` tuples of
    ``time.perf_counter_ns`` ints, the naive way to keep the same stamps, and a dict of key to
    list of float durations, what torchtnt's Timer and Lightning's SimpleProfiler keep (less
    than a region: no start time, parent or status).

How to run::

    uv run --group bench python benchmarks/memory.py                  # 1,000,000 regions
    uv run --group bench python benchmarks/memory.py --quick          # 50,000 regions
    uv run --group bench python benchmarks/memory.py --regions 200000
"""

from __future__ import annotations

import gc
import itertools
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

import maeltrace

try:
    from benchmarks import _common as common
except ModuleNotFoundError:  # run as a script: benchmarks/ is first on sys.path
    import _common as common  # type: ignore[no-redef]

KEYS = ("forward", "backward", "optimizer")
"""Keys the regions cycle over: a training step's usual rows."""

DEFAULT_REGIONS = 1_000_000
QUICK_REGIONS = 50_000
TARGET_BYTES = 64
"""The issue's target: at most this many bytes per recorded region."""

PURE_PYTHON_ENV = common.PURE_PYTHON_ENV


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one way of recording N regions held.

    Attributes:
        name: the row's label.
        regions: regions recorded.
        traced_bytes: traced memory after recording minus before.
        peak_bytes: traced peak during recording minus the same base.
        store_bytes: the store's own accounting, or ``None`` where it has none.
        kept: regions the store reports holding (a sanity check), or ``None``.
        is_maeltrace: whether the 64-byte target applies to it.
    """

    name: str
    regions: int
    traced_bytes: int
    peak_bytes: int
    store_bytes: int | None
    kept: int | None
    is_maeltrace: bool


@contextmanager
def _tracing() -> Iterator[None]:
    # A test process may already trace (python -X tracemalloc); leave its tracing running.
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    try:
        yield
    finally:
        if started_here:
            tracemalloc.stop()


@dataclass(frozen=True, slots=True)
class Way:
    """One way of recording N regions.

    Attributes:
        name: the row's label.
        build: records ``n`` regions and returns what holds them.
        store_bytes: the store's own count of its bytes, or ``None`` where it has none.
        kept: how many regions the store holds.
        is_maeltrace: whether the 64-byte target applies to it.
        pure_python: value for `PURE_PYTHON_ENV` while it runs; ``None`` leaves it as found.
    """

    name: str
    build: Callable[[int], Any]
    store_bytes: Callable[[Any], int | None]
    kept: Callable[[Any], int]
    is_maeltrace: bool
    pure_python: str | None = None


def _traced(way: Way, n: int) -> Measurement:
    """Runs ``way.build(n)`` under tracemalloc and measures what the result holds."""
    with _tracing():
        gc.collect()
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        held = way.build(n)
        # Only garbage the loop left behind goes; `held` keeps what was recorded alive.
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        # Asked after the reading: counting may build copies that must not count as held.
        store_bytes = way.store_bytes(held)
        kept = way.kept(held)
        del held
    return Measurement(
        way.name, n, current - base, peak - base, store_bytes, kept, way.is_maeltrace
    )


def _store_nbytes(tmr: maeltrace.Timer) -> int | None:
    """The store's own count of its bytes, wherever this build of maeltrace keeps it."""
    recorder = getattr(tmr, "_recorder", None)
    if recorder is not None and hasattr(recorder, "nbytes"):
        return int(recorder.nbytes())
    logs = getattr(tmr, "_logs", None)
    if logs is not None and all(hasattr(log, "nbytes") for log in logs):
        return sum(int(log.nbytes()) for log in logs)
    return None


def _record_maeltrace(n: int) -> maeltrace.Timer:
    # Built inside the traced section on purpose: the Timer's fixed cost is part of its memory.
    tmr = maeltrace.Timer(enabled=True, export=False)
    # islice(cycle()) hands out the same three str objects, so the loop allocates nothing
    # that outlives an iteration except what the Timer keeps.
    for key in itertools.islice(itertools.cycle(KEYS), n):
        tmr.start(key)
        tmr.end(key)
    return tmr


def _record_tuples(n: int) -> list[tuple[int, int]]:
    clock = perf_counter_ns
    out: list[tuple[int, int]] = []
    append = out.append
    for _ in range(n):
        started = clock()
        append((started, clock()))
    return out


def _record_durations(n: int) -> dict[str, list[float]]:
    # The peers' store: seconds as floats in a list per key (torchtnt uses a defaultdict).
    clock = perf_counter_ns
    out: dict[str, list[float]] = {key: [] for key in KEYS}
    for key in itertools.islice(itertools.cycle(KEYS), n):
        started = clock()
        out[key].append((clock() - started) / 1e9)
    return out


def _no_store_count(held: object) -> None:
    return None


def measure(n: int) -> list[Measurement]:
    """Records ``n`` regions every way, one after the other, and measures each.

    Args:
        n: regions per way of recording.
    """
    # The default build first; then, where that is the compiled recorder, the Python one.
    default_impl = common.implementation()
    ways = [
        Way(
            f"maeltrace Timer ({default_impl})",
            _record_maeltrace,
            _store_nbytes,
            lambda tmr: len(tmr.records()),
            is_maeltrace=True,
        )
    ]
    if default_impl == "compiled":
        ways.append(
            Way(
                "maeltrace Timer (python)",
                _record_maeltrace,
                _store_nbytes,
                lambda tmr: len(tmr.records()),
                is_maeltrace=True,
                pure_python="1",
            )
        )
    ways += [
        Way("naive: list of (start, end) ns tuples", _record_tuples, _no_store_count, len, False),
        Way(
            "peer-style: dict of key -> [float s]",
            _record_durations,
            _no_store_count,
            lambda out: sum(len(v) for v in out.values()),
            is_maeltrace=False,
        ),
    ]
    results = []
    for way in ways:
        # The default way runs in the environment as found: what this user gets.
        with common.env_var(PURE_PYTHON_ENV, way.pure_python):
            results.append(_traced(way, n))
    return results


def _per(total: int | None, n: int) -> str:
    return "-" if total is None else f"{total / n:,.1f}"


def report(results: Sequence[Measurement]) -> dict[str, Any]:
    """Prints the table and the target verdicts; returns the figures as a dict."""
    headers = [
        "store",
        "traced MB",
        "B/region",
        "peak B/region",
        "own nbytes B/region",
        "x naive",
        f"<= {TARGET_BYTES} B",
    ]
    naive = next((r for r in results if r.name.startswith("naive")), None)
    naive_per = naive.traced_bytes / naive.regions if naive else None
    rows = []
    figures: dict[str, Any] = {}
    for r in results:
        per = r.traced_bytes / r.regions
        store_per = None if r.store_bytes is None else r.store_bytes / r.regions
        # Both counts must meet the target where both exist: tracemalloc sees allocator
        # slack and the Timer's fixed cost, the store's count sees only its buffers.
        worst = max(per, store_per or 0.0)
        verdict = ("yes" if worst <= TARGET_BYTES else "NO") if r.is_maeltrace else ""
        rows.append(
            [
                r.name,
                f"{r.traced_bytes / 1e6:,.1f}",
                _per(r.traced_bytes, r.regions),
                _per(r.peak_bytes, r.regions),
                _per(r.store_bytes, r.regions),
                "-" if not naive_per else f"{per / naive_per:.2f}x",
                verdict,
            ]
        )
        figures[r.name] = {
            "regions": r.regions,
            "traced_bytes": r.traced_bytes,
            "peak_bytes": r.peak_bytes,
            "store_bytes": r.store_bytes,
            "bytes_per_region": per,
            "peak_bytes_per_region": r.peak_bytes / r.regions,
            "store_bytes_per_region": store_per,
            "kept": r.kept,
            "meets_target": (worst <= TARGET_BYTES) if r.is_maeltrace else None,
        }
    print(common.table(headers, rows))
    print()
    for r in results:
        if r.kept is not None and r.kept != r.regions:
            print(f"WARNING: {r.name} holds {r.kept:,} regions, not {r.regions:,}")
    print(
        f"target: <= {TARGET_BYTES} bytes per region for maeltrace, by tracemalloc and by the "
        "store's own count where it has one"
    )
    for r in results:
        if r.is_maeltrace:
            fig = figures[r.name]
            met = "meets" if fig["meets_target"] else "MISSES"
            print(f"  {r.name}: {met} it ({fig['bytes_per_region']:.1f} B/region traced)")
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints its table.

    Args:
        argv: command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status: 0.
    """
    parser = common.parser(__doc__, f"{QUICK_REGIONS:,} regions")
    parser.add_argument(
        "--regions", type=int, help=f"regions to record (default {DEFAULT_REGIONS:,})"
    )
    args = parser.parse_args(argv)
    n = common.pick(args.regions, args.quick, QUICK_REGIONS, DEFAULT_REGIONS)
    if n < 1:
        parser.error("--regions must be positive")

    print(f"maeltrace memory per recorded region: {n:,} regions over {len(KEYS)} keys")
    header = {
        "python": common.python_version(),
        "maeltrace": maeltrace.__version__,
        "default recorder": common.implementation(),
    }
    print(common.header_line(header))
    print()
    started = perf_counter_ns()
    results = measure(n)
    report(results)
    print(f"\ntook {common.seconds_since(started):.1f} s (under tracemalloc)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
