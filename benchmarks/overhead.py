"""Per-region overhead of maeltrace, against a floor and the timers a user would otherwise pick.

What it measures:
    The median wall-clock nanoseconds that one region (one open and one close around an empty
    body) costs, for

    * floors: two ``time.perf_counter_ns`` reads and a list append (the reference), the same
      storing a ``(start, end)`` tuple, and a call of an empty function (the call cost that the
      ``@timed`` figure carries on top of its region);
    * maeltrace: ``start``/``end``, ``with tmr.region(key)`` (looked up every time, as users
      write it, and hoisted out of the loop), ``with tmr.region(key, items=n)`` (a count, made
      per call), the ``@tmr.timed`` decorator on an empty function
      (reported as is, call included), ``tmr.iterate`` over a range, and a disabled timer;
    * maeltrace root regions with OpenTelemetry imported: ``start``/``end`` of a root region
      on a timer with export on, built after ``opentelemetry.trace`` was imported (as MLflow
      and W&B do), with no user span active. Such a timer looks for the user's active span at
      every root region; its target is at most 1.5x the floor. Its export is switched off
      after the batch (nothing is sent: the regions are outside any epoch, so they would go
      only at close);
    * peers: torchtnt's ``Timer().time(name)`` (with ``cuda_sync=False``: its default on a GPU
      machine adds a device sync per region, which would time the GPU, not the timer),
      Lightning's ``SimpleProfiler().profile(name)``, ``torch.profiler.record_function(name)``
      with no profiler running, and an OpenTelemetry SDK span
      (``tracer.start_as_current_span``) on a ``TracerProvider`` whose ``BatchSpanProcessor``
      (default settings) feeds an exporter that keeps nothing.

How it measures:
    Every candidate times a batch of ``--batch`` regions (default 20,000) in a tight loop, with
    one ``perf_counter_ns`` read on each side of the whole batch. The candidates run
    round-robin for ``--rounds`` rounds (default 30) after one untimed warm-up round, in an
    order rotated each round so that none always follows the same neighbour. A round's figure
    is batch time / batch size; the table reports the median over rounds (and min and max).
    Each ratio is the median over rounds of the two figures' ratio within a round, so load
    that comes and goes between rounds cancels out of it.
    Whatever accumulates records (maeltrace's Timer, torchtnt's Timer, Lightning's
    SimpleProfiler) is built fresh for every round, outside the timed section. Garbage is
    collected before each batch, with everything alive before the rounds frozen (``gc.freeze``)
    so that collection does not walk torch's millions of objects each time. The OTel queue is
    flushed after each of its batches, untimed. The ``for _ in range(n)`` loop costs the same
    in every figure, floor included, and is not subtracted. Each round also checks, untimed,
    that the tool kept one record per region; a mismatch is printed as a warning.

    Peers that cannot be imported are reported as such, not measured. torchtnt 0.2.4 imports
    ``pkg_resources`` at import time, which setuptools 81 and later no longer ship; it uses it
    only in a fallback that a torch with ``__version__`` never reaches, so where
    ``pkg_resources`` is missing an empty stand-in module is put in ``sys.modules`` for the
    import (and removed after it), and the table notes it.

    The figures are only comparable within one run: the machine, its load (printed in the
    header) and the Python build all move them. Nothing here asserts a timing; the targets
    section prints verdicts.

How to run::

    uv run --group bench python benchmarks/overhead.py              # full, about a minute
    uv run --group bench python benchmarks/overhead.py --quick      # small sizes
    uv run --group bench python benchmarks/overhead.py --quick --no-peers  # a second or two
    uv run --group bench python benchmarks/overhead.py --json overhead.json
    uv run --group bench python benchmarks/overhead.py --pure-python  # no compiled recorder

    ``--quick`` still imports torch, Lightning and OpenTelemetry, which takes most of its time
    (10 to 20 seconds on a small machine); ``--no-peers`` skips them.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import statistics
import sys
import tempfile
import types
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

import maeltrace

try:
    from benchmarks import _common as common
except ModuleNotFoundError:  # run as a script: benchmarks/ is first on sys.path
    import _common as common  # type: ignore[no-redef]

KEY = "step"
"""The key (or action/span name) every candidate times under."""

DEFAULT_BATCH = 20_000
DEFAULT_ROUNDS = 30
QUICK_BATCH = 2_000
QUICK_ROUNDS = 3

TARGET_VS_PEER = 0.6
"""Every maeltrace form costs at most this times the fastest peer timer."""
TARGET_VS_OTEL = 1 / 30
"""Every maeltrace form costs at most this fraction of an OpenTelemetry span."""
TARGET_VS_FLOOR = 5.0
GOAL_VS_FLOOR = 3.0

FLOOR = "floor: 2 clock reads + append"
OTEL_ROOT = "root region, OpenTelemetry imported"
START_END = "maeltrace start/end"
TARGET_OTEL_ROOT_VS_FLOOR = 1.5
"""A root region on an exporting timer with OpenTelemetry imported and no user span active
costs at most this times the floor (issue 11, item 8)."""
EMPTY_CALL = "floor: empty function call"
OTEL = "OpenTelemetry SDK span"

PURE_PYTHON_ENV = common.PURE_PYTHON_ENV

GROUP_FLOOR = "floor"
GROUP_MAELTRACE = "maeltrace"
GROUP_DISABLED = "maeltrace (disabled)"
GROUP_PEER = "peer timer"
GROUP_OTHER = "other peer"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One timed batch.

    Attributes:
        elapsed_ns: wall-clock ns of the batch's loop.
        recorded: regions the tool says it kept, or ``None`` where it keeps nothing to count.
    """

    elapsed_ns: int
    recorded: int | None


BatchFn = Callable[[int], Outcome]


@dataclass(slots=True)
class Candidate:
    """One way of timing a region, and what it measured.

    Attributes:
        name: the row's label.
        group: which part of the table it belongs to (one of the ``GROUP_*`` names).
        run: times a batch of ``n`` regions; ``None`` when the tool could not be imported.
        expected: regions per batch it should report keeping: ``"n"`` for one per region,
            ``0`` for none, ``None`` for no check.
        note: why ``run`` is ``None``, or a remark printed under the table.
        quiet: silences warnings around the batch (peers may warn; maeltrace must not).
        samples: ns per region, one per timed round.
        mismatches: rounds where the tool reported a record count other than expected.
    """

    name: str
    group: str
    run: BatchFn | None
    expected: str | int | None = "n"
    note: str = ""
    quiet: bool = False
    samples: list[float] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        """Median ns per region over the timed rounds, or ``None`` if it never ran."""
        return statistics.median(self.samples) if self.samples else None


# -- floors ---------------------------------------------------------------------------------


def _floor(n: int) -> Outcome:
    # Locals, not module look-ups: the floor is the cheapest way to take and keep a duration.
    clock = perf_counter_ns
    out: list[int] = []
    append = out.append
    t0 = perf_counter_ns()
    for _ in range(n):
        started = clock()
        append(clock() - started)
    elapsed = perf_counter_ns() - t0
    return Outcome(elapsed, len(out))


def _floor_tuple(n: int) -> Outcome:
    # Keeps both stamps, as a timer that reports start times must; the tuples are real objects.
    clock = perf_counter_ns
    out: list[tuple[int, int]] = []
    append = out.append
    t0 = perf_counter_ns()
    for _ in range(n):
        started = clock()
        append((started, clock()))
    elapsed = perf_counter_ns() - t0
    return Outcome(elapsed, len(out))


def _empty() -> None:
    return None


def _empty_call(n: int) -> Outcome:
    fn = _empty
    t0 = perf_counter_ns()
    for _ in range(n):
        fn()
    return Outcome(perf_counter_ns() - t0, None)


# -- maeltrace ------------------------------------------------------------------------------


def _recorded(tmr: maeltrace.Timer) -> int:
    return len(tmr.records())


def _mt_start_end(n: int) -> Outcome:
    # enabled=True: MAELTRACE_DISABLED in the environment must not turn the benchmark into
    # a measurement of the disabled path. export=False: the recorder alone (benchmarks/export.py
    # measures the hot path with export on).
    tmr = maeltrace.Timer(enabled=True, export=False)
    key = KEY
    t0 = perf_counter_ns()
    for _ in range(n):
        tmr.start(key)
        tmr.end(key)
    elapsed = perf_counter_ns() - t0
    return Outcome(elapsed, _recorded(tmr))


def _mt_region(n: int) -> Outcome:
    tmr = maeltrace.Timer(enabled=True, export=False)
    key = KEY
    t0 = perf_counter_ns()
    for _ in range(n):
        with tmr.region(key):
            pass
    elapsed = perf_counter_ns() - t0
    return Outcome(elapsed, _recorded(tmr))


def _mt_region_items(n: int) -> Outcome:
    tmr = maeltrace.Timer(enabled=True, export=False)
    key = KEY
    t0 = perf_counter_ns()
    for i in range(n):
        with tmr.region(key, items=i):
            pass
    elapsed = perf_counter_ns() - t0
    return Outcome(elapsed, _recorded(tmr))


def _mt_region_hoisted(n: int) -> Outcome:
    tmr = maeltrace.Timer(enabled=True, export=False)
    region = tmr.region(KEY)
    t0 = perf_counter_ns()
    for _ in range(n):
        with region:
            pass
    elapsed = perf_counter_ns() - t0
    return Outcome(elapsed, _recorded(tmr))


def _mt_timed(n: int) -> Outcome:
    tmr = maeltrace.Timer(enabled=True, export=False)

    @tmr.timed(KEY)
    def step() -> None:
        return None

    t0 = perf_counter_ns()
    for _ in range(n):
        step()
    elapsed = perf_counter_ns() - t0
    return Outcome(elapsed, _recorded(tmr))


def _mt_iterate(n: int) -> Outcome:
    tmr = maeltrace.Timer(enabled=True, export=False)
    t0 = perf_counter_ns()
    for _ in tmr.iterate(range(n), KEY):
        pass
    elapsed = perf_counter_ns() - t0
    return Outcome(elapsed, _recorded(tmr))


def _otel_root_candidate(stack: ExitStack) -> Candidate:
    try:
        _import_quietly("opentelemetry.trace")  # what MLflow and W&B import
    except Exception as exc:
        return Candidate(OTEL_ROOT, GROUP_MAELTRACE, None, note=_unavailable(exc))
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="maeltrace-overhead-"))

    def run(n: int) -> Outcome:
        # export=True: only an exporting timer looks for the user's span. Built after the
        # import above, as a user's timer is built after `import mlflow`.
        tmr = maeltrace.Timer(enabled=True, export=True, output_dir=folder)
        key = KEY
        t0 = perf_counter_ns()
        for _ in range(n):
            tmr.start(key)
            tmr.end(key)
        elapsed = perf_counter_ns() - t0
        tmr.export = False  # nothing to send: no close at exit, no files
        return Outcome(elapsed, _recorded(tmr))

    return Candidate(OTEL_ROOT, GROUP_MAELTRACE, run)


def _mt_disabled(n: int) -> Outcome:
    tmr = maeltrace.Timer(enabled=False)
    key = KEY
    t0 = perf_counter_ns()
    for _ in range(n):
        tmr.start(key)
        tmr.end(key)
    elapsed = perf_counter_ns() - t0
    return Outcome(elapsed, _recorded(tmr))


# -- peers ----------------------------------------------------------------------------------


def _import_quietly(module: str) -> types.ModuleType:
    # Peers warn on import (deprecations); under pytest's filterwarnings=error that would turn
    # a smoke test into a failure that says nothing about maeltrace.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def _unavailable(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError):
        return f"not installed ({exc})"
    return f"import failed: {type(exc).__name__}: {exc}"


def _torchtnt_candidate() -> Candidate:
    name = "torchtnt Timer().time()"
    shimmed = False
    try:
        # torchtnt 0.2.4 imports pkg_resources at import time only for a fallback it never
        # takes when torch has __version__; setuptools>=81 ships no pkg_resources any more.
        # An empty stand-in lets the import through without touching the code measured here.
        if importlib.util.find_spec("pkg_resources") is None:
            sys.modules["pkg_resources"] = types.ModuleType("pkg_resources")
            shimmed = True
        module = _import_quietly("torchtnt.utils.timer")
    except Exception as exc:
        return Candidate(name, GROUP_PEER, None, note=_unavailable(exc))
    finally:
        if shimmed:
            sys.modules.pop("pkg_resources", None)
    tnt_timer_cls = module.Timer

    def run(n: int) -> Outcome:
        # cuda_sync=False: see the module docstring.
        tnt = tnt_timer_cls(cuda_sync=False)
        key = KEY
        t0 = perf_counter_ns()
        for _ in range(n):
            with tnt.time(key):
                pass
        elapsed = perf_counter_ns() - t0
        return Outcome(elapsed, len(tnt.recorded_durations[key]))

    note = "pkg_resources stubbed for its import (see the module docstring)" if shimmed else ""
    return Candidate(name, GROUP_PEER, run, note=note, quiet=True)


def _lightning_candidate() -> Candidate:
    name = "Lightning SimpleProfiler.profile()"
    try:
        module = _import_quietly("lightning.pytorch.profilers")
    except Exception as exc:
        return Candidate(name, GROUP_PEER, None, note=_unavailable(exc))
    profiler_cls = module.SimpleProfiler

    def run(n: int) -> Outcome:
        profiler = profiler_cls()
        key = KEY
        t0 = perf_counter_ns()
        for _ in range(n):
            with profiler.profile(key):
                pass
        elapsed = perf_counter_ns() - t0
        return Outcome(elapsed, len(profiler.recorded_durations[key]))

    return Candidate(name, GROUP_PEER, run, quiet=True)


def _record_function_candidate() -> Candidate:
    name = "torch record_function (no profiler)"
    try:
        module = _import_quietly("torch.profiler")
    except Exception as exc:
        return Candidate(name, GROUP_OTHER, None, note=_unavailable(exc))
    record_function = module.record_function

    def run(n: int) -> Outcome:
        key = KEY
        t0 = perf_counter_ns()
        for _ in range(n):
            with record_function(key):
                pass
        return Outcome(perf_counter_ns() - t0, None)

    return Candidate(name, GROUP_OTHER, run, expected=None, quiet=True)


class _QueueFullFilter(logging.Filter):
    """Silences the batch processor's "Queue full, dropping" warnings (counted instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Queue full")


def _otel_candidate(stack: ExitStack) -> Candidate:
    try:
        trace_sdk = _import_quietly("opentelemetry.sdk.trace")
        export = _import_quietly("opentelemetry.sdk.trace.export")
    except Exception as exc:
        return Candidate(OTEL, GROUP_OTHER, None, note=_unavailable(exc))

    class NullExporter(export.SpanExporter):  # type: ignore[misc,name-defined]
        """Accepts every batch and keeps nothing, so only the SDK's own cost is measured."""

        def __init__(self) -> None:
            self.exported = 0

        def export(self, spans: Sequence[Any]) -> Any:
            self.exported += len(spans)
            return export.SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    exporter = NullExporter()
    provider = trace_sdk.TracerProvider()
    provider.add_span_processor(export.BatchSpanProcessor(exporter))
    stack.callback(provider.shutdown)
    # The SDK logs each drop, but its own DuplicateFilter lets only one through per 20 s, so
    # drops are counted from what reached the exporter; the log lines are just noise here.
    quiet_drops = _QueueFullFilter()
    otel_logger = logging.getLogger("opentelemetry.sdk._shared_internal")
    otel_logger.addFilter(quiet_drops)
    stack.callback(otel_logger.removeFilter, quiet_drops)
    tracer = provider.get_tracer("maeltrace-benchmark")
    dropped: list[int] = []

    def run(n: int) -> Outcome:
        before = exporter.exported
        key = KEY
        t0 = perf_counter_ns()
        for _ in range(n):
            with tracer.start_as_current_span(key):
                pass
        elapsed = perf_counter_ns() - t0
        # Drained outside the timed section so the worker thread does not run into the next
        # candidate's batch (this machine may have only two cores).
        provider.force_flush()
        dropped.append(n - (exporter.exported - before))
        return Outcome(elapsed, None)

    candidate = Candidate(OTEL, GROUP_OTHER, run, expected=None, quiet=True)

    def note_drops() -> None:
        # A dropped span skips the export, so drops make the OTel figure slightly low, which
        # only makes the 1/30 target harder for maeltrace.
        if sum(dropped):
            hit = sum(1 for d in dropped if d)
            candidate.note = (
                f"{sum(dropped):,} spans dropped by the SDK's full queue (default "
                f"max_queue_size) in {hit} of {len(dropped)} batches; dropped spans cost less"
            )

    # Runs after the rounds (ExitStack unwinds in reverse).
    stack.callback(note_drops)
    return candidate


# -- the run --------------------------------------------------------------------------------


def build_candidates(stack: ExitStack, *, peers: bool) -> list[Candidate]:
    """Every candidate, in table order; peers that cannot be imported come back with no run.

    Args:
        stack: receives the clean-ups of peers that hold resources (the OTel provider).
        peers: ``False`` leaves the peers out without importing them.
    """
    candidates = [
        Candidate(FLOOR, GROUP_FLOOR, _floor),
        Candidate("floor: 2 reads + append (start, end)", GROUP_FLOOR, _floor_tuple),
        Candidate(EMPTY_CALL, GROUP_FLOOR, _empty_call, expected=None),
        Candidate(START_END, GROUP_MAELTRACE, _mt_start_end),
        Candidate("maeltrace with tmr.region(k)", GROUP_MAELTRACE, _mt_region),
        Candidate("maeltrace with region (hoisted)", GROUP_MAELTRACE, _mt_region_hoisted),
        Candidate("maeltrace with tmr.region(k, items=n)", GROUP_MAELTRACE, _mt_region_items),
        Candidate("maeltrace @timed empty function", GROUP_MAELTRACE, _mt_timed),
        Candidate("maeltrace iterate(range)", GROUP_MAELTRACE, _mt_iterate),
        Candidate("maeltrace disabled start/end", GROUP_DISABLED, _mt_disabled, expected=0),
        # Imports opentelemetry's API (light), even with --no-peers: it is the row's subject.
        _otel_root_candidate(stack),
    ]
    if peers:
        candidates += [
            _torchtnt_candidate(),
            _lightning_candidate(),
            _record_function_candidate(),
            _otel_candidate(stack),
        ]
    return candidates


def measure(candidates: list[Candidate], *, batch: int, rounds: int) -> None:
    """Runs the round-robin: one warm-up round, then ``rounds`` timed ones.

    Args:
        candidates: filled in place (``samples``, ``mismatches``).
        batch: regions per timed batch.
        rounds: timed rounds.
    """
    runnable = [c for c in candidates if c.run is not None]
    for round_no in range(rounds + 1):
        for cand in common.rotated(runnable, round_no):
            assert cand.run is not None
            gc.collect()
            with warnings.catch_warnings():
                if cand.quiet:
                    warnings.simplefilter("ignore")
                outcome = cand.run(batch)
            expected = batch if cand.expected == "n" else cand.expected
            if expected is not None and outcome.recorded != expected:
                cand.mismatches.append(f"round {round_no}: {outcome.recorded} != {expected}")
            if round_no > 0:
                cand.samples.append(outcome.elapsed_ns / batch)


def _ratio(cand: Candidate, ref: Candidate | None) -> float | None:
    """Median over rounds of the candidate's figure over the reference's in the same round
    (see `common.same_round_ratios`)."""
    if ref is None or not cand.samples or len(ref.samples) != len(cand.samples):
        return None
    ratios = common.same_round_ratios(cand.samples, ref.samples)
    return statistics.median(ratios) if ratios else None


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "n/a"
    if ratio < 0.1:
        return f"{ratio:.3f}x (1/{1 / ratio:.0f})"
    return f"{ratio:.2f}x"


_fmt_ns = common.whole
_table = common.table


def _references(
    candidates: list[Candidate],
) -> tuple[Candidate | None, Candidate | None, Candidate | None]:
    """The floor, the fastest peer timer (by median) and the OTel span, where measured."""
    by_name = {c.name: c for c in candidates if c.samples}
    peers = [c for c in by_name.values() if c.group == GROUP_PEER]
    fastest = min(peers, key=lambda c: c.median or 0.0) if peers else None
    return by_name.get(FLOOR), fastest, by_name.get(OTEL)


def _verdict(ratio: float | None, limit: float) -> str:
    return common.verdict(None if ratio is None else ratio <= limit)


def report(candidates: list[Candidate]) -> dict[str, Any]:
    """Prints the tables and returns the same figures as a JSON-ready dict."""
    floor, fastest, otel = _references(candidates)
    rows = []
    results: dict[str, Any] = {}
    for cand in candidates:
        med = cand.median
        if cand.run is None:
            status = "not installed" if cand.note.startswith("not installed") else "unavailable"
            rows.append([cand.name, status, "-", "-", "-", "-", "-"])
        else:
            rows.append(
                [
                    cand.name,
                    _fmt_ns(med),
                    _fmt_ns(min(cand.samples) if cand.samples else None),
                    _fmt_ns(max(cand.samples) if cand.samples else None),
                    _fmt_ratio(_ratio(cand, floor)),
                    _fmt_ratio(_ratio(cand, fastest)),
                    _fmt_ratio(_ratio(cand, otel)),
                ]
            )
        results[cand.name] = {
            "group": cand.group,
            "available": cand.run is not None,
            "note": cand.note,
            "median_ns_per_region": med,
            "samples_ns_per_region": cand.samples,
            "ratio_to_floor": _ratio(cand, floor),
            "ratio_to_fastest_peer_timer": _ratio(cand, fastest),
            "ratio_to_otel_span": _ratio(cand, otel),
            "record_count_mismatches": cand.mismatches,
        }
    headers = ["candidate", "median ns", "min ns", "max ns", "x floor", "x fastest peer", "x OTel"]
    print(_table(headers, rows))
    print()
    print(f"floor = {FLOOR!r}; fastest peer timer = {fastest.name if fastest else 'n/a'}")
    print("ratios: median over rounds of the same-round ratio (not a ratio of the medians)")
    for cand in candidates:
        if cand.note:
            print(f"note: {cand.name}: {cand.note}")
        if cand.mismatches:
            shown = "; ".join(cand.mismatches[:3])
            print(f"WARNING: {cand.name} kept an unexpected number of records: {shown}")

    print()
    print(
        "Targets (issue): every maeltrace form <= "
        f"{TARGET_VS_PEER}x the fastest peer timer, <= 1/{1 / TARGET_VS_OTEL:.0f} of an OTel "
        f"span, <= {TARGET_VS_FLOOR:g}x the floor (goal {GOAL_VS_FLOOR:g}x)"
    )
    target_rows = []
    targets: dict[str, Any] = {}
    for cand in candidates:
        if cand.group not in (GROUP_MAELTRACE, GROUP_DISABLED) or cand.median is None:
            continue
        vs_peer = _ratio(cand, fastest)
        vs_otel = _ratio(cand, otel)
        vs_floor = _ratio(cand, floor)
        verdicts = {
            "vs_peer": _verdict(vs_peer, TARGET_VS_PEER),
            "vs_otel": _verdict(vs_otel, TARGET_VS_OTEL),
            "vs_floor": _verdict(vs_floor, TARGET_VS_FLOOR),
            "vs_floor_goal": _verdict(vs_floor, GOAL_VS_FLOOR),
        }
        target_rows.append(
            [
                cand.name,
                _fmt_ratio(vs_peer),
                verdicts["vs_peer"],
                _fmt_ratio(vs_otel),
                verdicts["vs_otel"],
                _fmt_ratio(vs_floor),
                verdicts["vs_floor"],
                verdicts["vs_floor_goal"],
            ]
        )
        targets[cand.name] = verdicts
    target_headers = [
        "maeltrace form",
        "x peer",
        f"<={TARGET_VS_PEER}",
        "x OTel",
        f"<=1/{1 / TARGET_VS_OTEL:.0f}",
        "x floor",
        f"<={TARGET_VS_FLOOR:g}",
        f"<={GOAL_VS_FLOOR:g} goal",
    ]
    print(_table(target_headers, target_rows))
    empty_call = next((c.median for c in candidates if c.name == EMPTY_CALL), None)
    print(
        f"(@timed includes a Python call of the wrapped function, {_fmt_ns(empty_call)} ns "
        "on its own here; nothing is subtracted.)"
    )
    targets[OTEL_ROOT] = _report_otel_root(candidates, floor)
    return {"results": results, "targets": targets}


def _report_otel_root(candidates: list[Candidate], floor: Candidate | None) -> dict[str, Any]:
    """Prints the root-region-with-OpenTelemetry line: its ratio to the floor against the
    1.5x target, and to start/end on a timer without export (the baseline of the same run)."""
    by_name = {c.name: c for c in candidates}
    row, baseline = by_name.get(OTEL_ROOT), by_name.get(START_END)
    vs_floor = _ratio(row, floor) if row is not None else None
    vs_plain = _ratio(row, baseline) if row is not None and baseline is not None else None
    verdict = _verdict(vs_floor, TARGET_OTEL_ROOT_VS_FLOOR)
    print(
        f"{OTEL_ROOT}: {_fmt_ns(row.median if row else None)} ns, {_fmt_ratio(vs_floor)} the "
        f"floor (target <= {TARGET_OTEL_ROOT_VS_FLOOR:g}x: {verdict}), {_fmt_ratio(vs_plain)} "
        f"{START_END!r} without export"
    )
    return {
        "ratio_to_floor": vs_floor,
        "ratio_to_start_end": vs_plain,
        "target_vs_floor": TARGET_OTEL_ROOT_VS_FLOOR,
        "vs_floor": verdict,
    }


def _environment() -> dict[str, Any]:
    return common.environment("torch", "torchtnt", "lightning", "opentelemetry-sdk")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints its tables.

    Args:
        argv: command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status: 0.
    """
    parser = common.parser(__doc__, "small batches and few rounds")
    parser.add_argument("--batch", type=int, help=f"regions per batch (default {DEFAULT_BATCH})")
    parser.add_argument("--rounds", type=int, help=f"timed rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--no-peers", action="store_true", help="skip torch, Lightning, OTel")
    common.add_json(parser)
    parser.add_argument(
        "--pure-python",
        action="store_true",
        help=f"set {PURE_PYTHON_ENV}=1 so timers use the pure-Python recorder",
    )
    args = parser.parse_args(argv)
    # Read by Timer() at construction, so it must be set before any timer is built.
    with common.env_var(PURE_PYTHON_ENV, "1" if args.pure_python else None):
        return _run(args, parser)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    batch = common.pick(args.batch, args.quick, QUICK_BATCH, DEFAULT_BATCH)
    rounds = common.pick(args.rounds, args.quick, QUICK_ROUNDS, DEFAULT_ROUNDS)
    if batch < 1 or rounds < 1:
        parser.error("--batch and --rounds must be positive")

    env = _environment()
    print("maeltrace per-region overhead (ns per open+close, median over rounds)")
    print(common.header_line(env))
    print(f"batch {batch:,} regions x {rounds} rounds (+1 warm-up), round-robin")
    print()
    started = perf_counter_ns()
    with ExitStack() as stack:
        candidates = build_candidates(stack, peers=not args.no_peers)
        # With torch and Lightning imported, one full collection walks millions of objects
        # (a quarter second here), once per batch; frozen, they are skipped and the
        # collection before each batch only clears what the previous batch left.
        gc.collect()
        gc.freeze()
        try:
            measure(candidates, batch=batch, rounds=rounds)
        finally:
            gc.unfreeze()
    figures = report(candidates)
    print(f"\ntook {common.seconds_since(started):.1f} s (peer imports included)")
    payload = {"environment": env, "batch": batch, "rounds": rounds, **figures}
    common.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
