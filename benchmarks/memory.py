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

    Three more sections (issue 11, item 9), each with its target and a baseline of the same run:

    * export on: ``--export-regions`` regions (default 200,000) in epochs of
      ``--epoch-regions`` (default 10,000), three keys in each, on a Timer that exports (the
      embedded default, files in a temporary folder), against the same loop with export off.
      Traced bytes per region held at the loop's end as the loop left it (the export thread
      still at work), held once the export caught up (``flush``), and the peak; target 64.
      The allocation sites that hold the most at the loop's end are listed (the innermost
      maeltrace frame of each), to show where the memory goes.
    * reset cycles: in a fresh process, 4 cycles of ``--cycle-regions`` regions (default
      2,000,000) on an exporting Timer, each ended by ``reset()``; RSS after each cycle's
      loop and after its reset, against the RSS before the first cycle (after a small warm-up
      cycle that loads the export machinery). Target: each reset gives back all but 10 % of
      what a cycle's records take.
    * ``get_time_stats`` over ``--stats-regions`` regions of one key (default 10,000,000), in a
      fresh process per recorder: traced peak above the memory before the call and wall time
      (timed without tracemalloc). Targets: peak <= 2x the records' own size (56 B a region),
      at most 2 s. Baseline: Python's ``sorted()`` of the same durations as a list, timed in
      the same process.

How to run::

    uv run --group bench python benchmarks/memory.py                  # 1,000,000 regions
    uv run --group bench python benchmarks/memory.py --quick          # 50,000 regions
    uv run --group bench python benchmarks/memory.py --regions 200000
    uv run --group bench python benchmarks/memory.py --only export,reset,stats
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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

RECORD_BYTES = 56
"""What the recorder's logs hold per region: 7 int64 values."""
DEFAULT_EXPORT_REGIONS = 200_000
QUICK_EXPORT_REGIONS = 20_000
DEFAULT_EPOCH_REGIONS = 10_000
QUICK_EPOCH_REGIONS = 2_000
DEFAULT_CYCLE_REGIONS = 2_000_000
QUICK_CYCLE_REGIONS = 100_000
CYCLES = 4
RESET_KEEP_TARGET = 0.10
"""A reset gives back all but this fraction of what a cycle's records take."""
DEFAULT_STATS_REGIONS = 10_000_000
QUICK_STATS_REGIONS = 200_000
STATS_PEAK_TARGET = 2.0
"""get_time_stats peaks at most at this many times the records' own size."""
STATS_SECONDS_TARGET = 2.0
SECTIONS = ("table", "export", "reset", "stats")


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
def _tracing(frames: int = 1) -> Iterator[None]:
    # A test process may already trace (python -X tracemalloc); leave its tracing running.
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start(frames)
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


# -- export on ----------------------------------------------------------------------------------


def _maeltrace_site(trace: tracemalloc.Traceback) -> str:
    """The innermost frame of maeltrace's own code in an allocation's traceback."""
    for frame in reversed(trace):  # tracemalloc lists the oldest frame first
        if f"{os.sep}maeltrace{os.sep}" in frame.filename:
            return f"{Path(frame.filename).name}:{frame.lineno}"
    return f"{Path(trace[-1].filename).name}:{trace[-1].lineno}" if len(trace) else "?"


def _epoch_loop(tmr: maeltrace.Timer, n: int, per_epoch: int) -> None:
    keys = itertools.cycle(KEYS)
    done = 0
    while done < n:
        size = min(per_epoch, n - done)
        tmr.start("epoch")
        for key in itertools.islice(keys, size - 1):
            tmr.start(key)
            tmr.end(key)
        tmr.end("epoch")
        done += size


def measure_export(n: int, per_epoch: int, folder: str) -> dict[str, Any]:
    """Held and peak traced bytes per region of the epoch loop, export on and export off."""
    out: dict[str, Any] = {"regions": n, "epoch_regions": per_epoch}
    # Warm-up, untraced: the export machinery's imports and first-use caches are a fixed cost
    # of the process, not memory held per region.
    warm = maeltrace.Timer(enabled=True, export=True, output_dir=folder)
    _epoch_loop(warm, 2 * min(per_epoch, n), min(per_epoch, n))
    warm.flush(timeout_s=600.0)
    warm.export = False
    del warm
    for export in (False, True):
        with _tracing(frames=25):  # deep enough to reach maeltrace's frames from protobuf's
            gc.collect()
            base, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            tmr = maeltrace.Timer(enabled=True, export=export, output_dir=folder)
            _epoch_loop(tmr, n, per_epoch)
            at_end, _ = tracemalloc.get_traced_memory()
            sites: list[tuple[str, int]] = []
            if export:
                snapshot = tracemalloc.take_snapshot()
                by_site: dict[str, int] = {}
                for stat in snapshot.statistics("traceback"):
                    site = _maeltrace_site(stat.traceback)
                    by_site[site] = by_site.get(site, 0) + stat.size
                sites = sorted(by_site.items(), key=lambda kv: -kv[1])[:6]
                tmr.flush(timeout_s=600.0)
            gc.collect()
            caught_up, peak = tracemalloc.get_traced_memory()
            tmr.export = False  # flushed above: nothing left for close at exit
            del tmr
        out["on" if export else "off"] = {
            "held_at_loop_end_per_region": (at_end - base) / n,
            "held_after_flush_per_region": (caught_up - base) / n,
            "peak_per_region": (peak - base) / n,
            "sites_at_loop_end": [(site, size / n) for site, size in sites],
        }
    return out


def report_export(fig: dict[str, Any]) -> None:
    on, off = fig["on"], fig["off"]
    print(
        f"\nexport on: {fig['regions']:,} regions in epochs of {fig['epoch_regions']:,}, "
        f"traced bytes per region (target <= {TARGET_BYTES} B held; baseline: export off)"
    )
    rows = []
    for name, f in (("export off (baseline)", off), ("export on", on)):
        worst = max(f["held_at_loop_end_per_region"], f["held_after_flush_per_region"])
        rows.append(
            [
                name,
                f"{f['held_at_loop_end_per_region']:,.1f}",
                f"{f['held_after_flush_per_region']:,.1f}",
                f"{f['peak_per_region']:,.1f}",
                "yes" if worst <= TARGET_BYTES else "NO",
            ]
        )
    headers = ["loop", "held at loop end", "held after flush", "peak", f"<= {TARGET_BYTES} B"]
    print(common.table(headers, rows))
    print("  held at the loop's end with export on, by allocation site (B/region):")
    for site, per in on["sites_at_loop_end"]:
        print(f"    {per:8.1f}  {site}")


# -- reset cycles --------------------------------------------------------------------------------


def _rss_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def reset_cycles_child(n: int, folder: str) -> dict[str, Any]:
    """Runs in a fresh process: RSS around each of `CYCLES` cycles of ``n`` regions + reset."""
    tmr = maeltrace.Timer(enabled=True, export=True, output_dir=folder)
    keys = itertools.cycle(KEYS)
    for key in itertools.islice(keys, 3000):  # warm-up: loads the export machinery
        tmr.start(key)
        tmr.end(key)
    tmr.reset()
    gc.collect()
    out: dict[str, Any] = {"regions": n, "baseline": _rss_bytes(), "loop": [], "reset": []}
    for _ in range(CYCLES):
        for key in itertools.islice(keys, n):
            tmr.start(key)
            tmr.end(key)
        out["loop"].append(_rss_bytes())
        tmr.reset()
        gc.collect()
        out["reset"].append(_rss_bytes())
    tmr.export = False
    return out


def report_reset(fig: dict[str, Any]) -> None:
    mib = 1024 * 1024
    records = RECORD_BYTES * fig["regions"]
    limit = fig["baseline"] + RESET_KEEP_TARGET * records
    print(
        f"\nreset cycles: {CYCLES} x {fig['regions']:,} regions on an exporting Timer, RSS in MiB "
        f"(baseline before the first cycle: {fig['baseline'] / mib:,.0f}; records of a cycle: "
        f"{records / mib:,.0f}; target after reset <= {limit / mib:,.0f})"
    )
    rows = [
        [
            str(i + 1),
            f"{loop / mib:,.0f}",
            f"{reset / mib:,.0f}",
            f"{(reset - fig['baseline']) / mib:+,.0f}",
            "yes" if reset <= limit else "NO",
        ]
        for i, (loop, reset) in enumerate(zip(fig["loop"], fig["reset"], strict=True))
    ]
    print(common.table(["cycle", "after loop", "after reset", "vs baseline", "target"], rows))


# -- get_time_stats over many regions --------------------------------------------------------------


def stats_child(n: int) -> dict[str, Any]:
    """Runs in a fresh process: ``get_time_stats`` (and ``get_time``) over ``n`` regions of one
    key, peak traced bytes and seconds; and ``sorted()`` of the durations, the baseline."""
    tmr = maeltrace.Timer(enabled=True, export=False)
    for _ in range(n):
        tmr.start("step")
        tmr.end("step")
    gc.collect()
    started = perf_counter_ns()
    stats = tmr.get_time_stats("step")
    seconds = common.seconds_since(started)
    started = perf_counter_ns()
    times = tmr.get_time("step")
    get_time_seconds = common.seconds_since(started)
    durations = [round(t * 1e9) for t in times]
    del times
    started = perf_counter_ns()
    sorted(durations)
    sorted_seconds = common.seconds_since(started)
    del durations
    gc.collect()
    peaks = {}
    for name, call in (
        ("get_time_stats", lambda: tmr.get_time_stats("step")),
        ("get_time", lambda: tmr.get_time("step")),
    ):
        with _tracing():
            gc.collect()
            base, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            call()
            peaks[name] = tracemalloc.get_traced_memory()[1] - base
    return {
        "regions": n,
        "count": stats.count,
        "seconds": seconds,
        "get_time_seconds": get_time_seconds,
        "sorted_list_seconds": sorted_seconds,
        "peak_bytes": peaks["get_time_stats"],
        "get_time_peak_bytes": peaks["get_time"],
        "records_bytes": RECORD_BYTES * n,
    }


def report_stats(figs: dict[str, dict[str, Any]]) -> None:
    any_fig = next(iter(figs.values()))
    print(
        f"\nget_time_stats over {any_fig['regions']:,} regions of one key (records: "
        f"{any_fig['records_bytes'] / 1e6:,.0f} MB; targets: peak <= {STATS_PEAK_TARGET:g}x the "
        f"records, <= {STATS_SECONDS_TARGET:g} s; baseline: sorted() of the durations as a list)"
    )
    rows = []
    for name, f in figs.items():
        ratio = f["peak_bytes"] / f["records_bytes"]
        ok = ratio <= STATS_PEAK_TARGET and f["seconds"] <= STATS_SECONDS_TARGET
        rows.append(
            [
                name,
                f"{f['peak_bytes'] / 1e6:,.0f}",
                f"{ratio:.2f}x",
                f"{f['seconds']:.2f}",
                f"{f['sorted_list_seconds']:.2f}",
                f"{f['get_time_peak_bytes'] / 1e6:,.0f}",
                f"{f['get_time_seconds']:.2f}",
                "yes" if ok else "NO",
            ]
        )
    headers = [
        "recorder",
        "peak MB",
        "x records",
        "s",
        "sorted() s",
        "get_time peak MB",
        "get_time s",
        "targets",
    ]
    print(common.table(headers, rows))


def _child(mode: str, n: int, pure_python: str | None, folder: str) -> dict[str, Any]:
    """Runs this script in a fresh process (RSS and peaks unmixed with this one's)."""
    env = dict(os.environ)
    if pure_python is not None:
        env[PURE_PYTHON_ENV] = pure_python
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--child-{mode}", str(n), folder]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


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
    parser.add_argument("--export-regions", type=int, help="regions of the export-on loop")
    parser.add_argument("--epoch-regions", type=int, help="regions per epoch of that loop")
    parser.add_argument("--cycle-regions", type=int, help="regions per reset cycle")
    parser.add_argument("--stats-regions", type=int, help="regions get_time_stats reads")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections to run, of {','.join(SECTIONS)}"
    )
    common.add_json(parser)
    for mode in ("reset", "stats"):
        parser.add_argument(f"--child-{mode}", nargs=2, help="(internal: one fresh process)")
    args = parser.parse_args(argv)
    if args.child_reset or args.child_stats:
        size, folder = args.child_reset or args.child_stats
        run = reset_cycles_child if args.child_reset else lambda n, _: stats_child(n)
        print(json.dumps(run(int(size), folder)))
        return 0
    n = common.pick(args.regions, args.quick, QUICK_REGIONS, DEFAULT_REGIONS)
    if n < 1:
        parser.error("--regions must be positive")
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if not sections <= set(SECTIONS):
        parser.error(f"--only takes {', '.join(SECTIONS)}")

    print(f"maeltrace memory per recorded region: {n:,} regions over {len(KEYS)} keys")
    header = {
        "python": common.python_version(),
        "maeltrace": maeltrace.__version__,
        "default recorder": common.implementation(),
    }
    print(common.header_line(header))
    print()
    started = perf_counter_ns()
    payload: dict[str, Any] = {"environment": header}
    if "table" in sections:
        payload["table"] = report(measure(n))
    with tempfile.TemporaryDirectory(prefix="maeltrace-memory-") as folder:
        if "export" in sections:
            payload["export"] = fig = measure_export(
                common.pick(
                    args.export_regions, args.quick, QUICK_EXPORT_REGIONS, DEFAULT_EXPORT_REGIONS
                ),
                common.pick(
                    args.epoch_regions, args.quick, QUICK_EPOCH_REGIONS, DEFAULT_EPOCH_REGIONS
                ),
                folder,
            )
            report_export(fig)
        if "reset" in sections:
            cycle = common.pick(
                args.cycle_regions, args.quick, QUICK_CYCLE_REGIONS, DEFAULT_CYCLE_REGIONS
            )
            payload["reset"] = fig = _child("reset", cycle, None, folder)
            report_reset(fig)
        if "stats" in sections:
            size = common.pick(
                args.stats_regions, args.quick, QUICK_STATS_REGIONS, DEFAULT_STATS_REGIONS
            )
            impls = {f"{common.implementation()} (default)": None}
            if common.implementation() == "compiled":
                impls["python"] = "1"
            payload["stats"] = figs = {
                name: _child("stats", size, pure, folder) for name, pure in impls.items()
            }
            report_stats(figs)
    print(f"\ntook {common.seconds_since(started):.1f} s")
    common.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
