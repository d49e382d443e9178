"""Model-based tests of `Timer`: random start/end/region/iterate/timed/reset sequences.

maeltrace offers no supported way to inject a clock (the hot path reads the monotonic clock
it bound at construction), so these tests check only what does not depend on the clock's
values: which regions were recorded, under which key, with which status and parent, in which
order, and that the readings of the one monotonic clock follow each thread's program order.

A Python model (`ThreadModel`) tracks, per thread, the regions that are open (innermost last)
and those that closed since the last reset. Each model region has an id (``mid``) that grows
with its opening, so on one thread the model's regions in ``mid`` order line up with the
timer's records in start (``seq``) order.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from maeltrace import Records, RegionError, Timer, TimeType
from maeltrace.records import NO_PARENT, STATUS_FAILED, STATUS_OK

# tests/conftest.py runs every test here against the compiled and the pure-Python recorder.
BOTH_RECORDERS = True

# "epoch" is TimeType.EPOCH and "forward" is TimeType.FORWARD: the same keys, other spellings.
KEY_POOL: tuple[TimeType | str, ...] = (
    TimeType.EPOCH,
    "epoch",
    TimeType.BATCH,
    "forward",
    TimeType.FORWARD,
    TimeType.IO,
    "k1",
    "k2",
)
# Every distinct key of KEY_POOL, spelt two ways, for the reading API.
QUERY_KEYS: tuple[tuple[TimeType | str, ...], ...] = (
    ("epoch", TimeType.BATCH, TimeType.FORWARD, "io", "k1", "k2"),
    (TimeType.EPOCH, "batch", "forward", TimeType.IO, "k1", "k2"),
)
TIME_TYPE_VALUES = frozenset(member.value for member in TimeType)

COLUMNS = ("key_id", "seq", "parent_seq", "start_ns", "end_ns", "status", "device_ns", "thread")


class Boom(Exception):
    """The exception region bodies raise on purpose."""


@dataclass
class ModelRegion:
    mid: int
    key: str
    parent: int | None
    opened_at: int
    closed_at: int | None = None
    status: int | None = None


class ThreadModel:
    """What one thread did to a timer: its open regions and those closed since a reset."""

    def __init__(self) -> None:
        self._mids = itertools.count()
        self._events = itertools.count()
        self.open: dict[str, ModelRegion] = {}
        self.stack: list[ModelRegion] = []
        self.closed: list[ModelRegion] = []
        self.moved: list[int] = []  # regions whose parent a cancel changed, until next checked
        self.ident: int | None = None
        self.name: str | None = None

    def bind_current_thread(self) -> None:
        self.ident = threading.get_ident()
        self.name = threading.current_thread().name

    def is_open(self, key: TimeType | str) -> bool:
        return str(key) in self.open

    def open_region(self, key: TimeType | str) -> None:
        name = str(key)
        assert name not in self.open
        region = ModelRegion(
            mid=next(self._mids),
            key=name,
            parent=self.stack[-1].mid if self.stack else None,
            opened_at=next(self._events),
        )
        self.open[name] = region
        self.stack.append(region)

    def close_region(self, key: TimeType | str, status: int) -> None:
        region = self.open.pop(str(key))
        self.stack.remove(region)
        region.closed_at = next(self._events)
        region.status = status
        self.closed.append(region)

    def cancel_region(self, key: TimeType | str) -> None:
        region = self.open.pop(str(key))
        self.stack.remove(region)
        # A cancelled region is nobody's parent: its children, closed or open, move to its own.
        for other in (*self.stack, *self.closed):
            if other.parent == region.mid:
                other.parent = region.parent
                self.moved.append(other.mid)

    def reset(self) -> None:
        self.closed.clear()

    def counts(self) -> Counter[tuple[str, int]]:
        return Counter((r.key, r.status) for r in self.closed if r.status is not None)


def check_records_well_formed(records: Records) -> None:
    """Properties of any snapshot, whatever the threads did."""
    n = len(records)
    for column in COLUMNS:
        assert len(getattr(records, column)) == n, column
    seqs = list(records.seq)
    assert seqs == sorted(set(seqs)), "records must be in start order with unique seq"
    for i in range(n):
        assert 0 <= records.key_id[i] < len(records.keys), (
            f"key id {records.key_id[i]} of seq {records.seq[i]} is not in the snapshot's "
            f"{len(records.keys)} keys"
        )
        assert 0 <= records.thread[i] < len(records.threads)
        assert records.status[i] in (STATUS_OK, STATUS_FAILED)
        assert records.start_ns[i] <= records.end_ns[i]
        parent = records.parent_seq[i]
        assert parent == NO_PARENT or parent < records.seq[i]


def rows_of_thread(records: Records, ident: int | None) -> list[int]:
    return [i for i in range(len(records)) if records.threads[records.thread[i]].ident == ident]


def check_thread_records(
    records: Records,
    rows: list[int],
    model: ThreadModel,
    seq_of: dict[int, int],
    *,
    parents_recorded: bool = False,
) -> None:
    """The rows a thread recorded are exactly what its model says it did.

    ``seq_of`` maps model ids to the seq the timer gave them, learnt from any snapshot (a
    child's parent_seq names its parent even while the parent is open), and must stay the same.
    """
    expected = sorted(model.closed, key=lambda r: r.mid)
    got = [(str(records.keys[records.key_id[i]]), records.status[i]) for i in rows]
    assert got == [(r.key, r.status) for r in expected]
    row_of_mid: dict[int, int] = {}
    for i, region in zip(rows, expected, strict=True):
        assert seq_of.setdefault(region.mid, records.seq[i]) == records.seq[i]
        row_of_mid[region.mid] = i
    for i, region in zip(rows, expected, strict=True):
        parent_seq = records.parent_seq[i]
        if region.parent is None:
            assert parent_seq == NO_PARENT, f"{region} should have no parent"
            continue
        # The parent is the innermost region open on this thread when this one started.
        assert parent_seq != NO_PARENT, f"{region} should have parent {region.parent}"
        assert seq_of.setdefault(region.parent, parent_seq) == parent_seq
        j = row_of_mid.get(region.parent)
        if parents_recorded:
            assert j is not None, "the parent must be a region of the same thread"
        if j is not None:
            assert records.thread[j] == records.thread[i]
            assert records.start_ns[j] <= records.start_ns[i]
    # One monotonic clock: its readings follow the thread's program order.
    stamps = []
    for i, region in zip(rows, expected, strict=True):
        stamps.append((region.opened_at, records.start_ns[i]))
        stamps.append((region.closed_at, records.end_ns[i]))
    readings = [ns for _, ns in sorted(stamps)]
    assert readings == sorted(readings), "clock readings out of program order"


def own_regions(records: Records, ident: int | None) -> list[tuple[int, ...]]:
    """A thread's recorded regions, every column but the thread index."""
    return [
        tuple(getattr(records, c)[i] for c in COLUMNS if c != "thread")
        for i in rows_of_thread(records, ident)
    ]


class Driver:
    """Drives a timer on the calling thread and keeps its model in step.

    Each call decides from the model whether the timer must succeed or raise `RegionError`,
    and checks that a refused call changed none of this thread's recorded regions.
    """

    def __init__(self, tmr: Timer, model: ThreadModel, *, exclusive: bool) -> None:
        self.tmr = tmr
        self.model = model
        # exclusive: no other thread uses the timer, so the whole store can be compared.
        self.exclusive = exclusive
        self.used: list[str] = []

    def use(self, key: TimeType | str) -> None:
        if str(key) not in self.used:
            self.used.append(str(key))

    def expect_region_error(self, action: Callable[[], object]) -> None:
        ident = threading.get_ident()
        before = self.tmr.records()
        failures_before = self.tmr.failures() if self.exclusive else None
        with pytest.raises(RegionError) as info:
            action()
        assert isinstance(info.value, RuntimeError)
        after = self.tmr.records()
        assert own_regions(after, ident) == own_regions(before, ident)
        if self.exclusive:
            for column in COLUMNS:
                assert list(getattr(after, column)) == list(getattr(before, column)), column
            assert after.keys[: len(before.keys)] == before.keys
            assert after.threads[: len(before.threads)] == before.threads
            assert self.tmr.failures() == failures_before

    def start(self, key: TimeType | str) -> None:
        self.use(key)
        if self.model.is_open(key):
            self.expect_region_error(lambda: self.tmr.start(key))
        else:
            self.tmr.start(key)
            self.model.open_region(key)

    def end(self, key: TimeType | str) -> None:
        self.use(key)
        if self.model.is_open(key):
            self.tmr.end(key)
            self.model.close_region(key, STATUS_OK)
        else:
            self.expect_region_error(lambda: self.tmr.end(key))

    def cancel(self, key: TimeType | str) -> None:
        self.use(key)
        if self.model.is_open(key):
            self.tmr.cancel(key)
            self.model.cancel_region(key)
        else:
            self.expect_region_error(lambda: self.tmr.cancel(key))

    def region(self, key: TimeType | str, inner: TimeType | str | None, fails: bool) -> None:
        self.use(key)
        ran: list[bool] = []
        if self.model.is_open(key):

            def enter() -> None:
                with self.tmr.region(key):
                    ran.append(True)

            self.expect_region_error(enter)
            assert not ran, "the body must not run when the region cannot open"
            return
        run_inner = inner is not None and str(inner) != str(key) and not self.model.is_open(inner)
        if run_inner:
            assert inner is not None
            self.use(inner)
        expectation = pytest.raises(Boom) if fails else contextlib.nullcontext()
        with expectation, self.tmr.region(key):
            self.model.open_region(key)
            ran.append(True)
            if run_inner:
                assert inner is not None
                self.tmr.start(inner)
                self.model.open_region(inner)
                self.tmr.end(inner)
                self.model.close_region(inner, STATUS_OK)
            if fails:
                raise Boom(f"body of {key!s}")
        assert ran == [True]
        self.model.close_region(key, STATUS_FAILED if fails else STATUS_OK)

    def iterate(self, key: TimeType | str, n: int, fails: bool) -> None:
        self.use(key)

        def source() -> Iterator[int]:
            yield from range(n)
            if fails:
                raise Boom("loader died")

        if self.model.is_open(key):
            self.expect_region_error(lambda: list(self.tmr.iterate(source(), key)))
            return
        got = []
        expectation = pytest.raises(Boom) if fails else contextlib.nullcontext()
        with expectation:
            for item in self.tmr.iterate(source(), key):
                # Each fetch was one region, closed before the loop body runs.
                self.model.open_region(key)
                self.model.close_region(key, STATUS_OK)
                got.append(item)
        assert got == list(range(n))
        if fails:
            self.model.open_region(key)
            self.model.close_region(key, STATUS_FAILED)

    def timed(self, key: TimeType | str, fails: bool) -> None:
        self.use(key)

        @self.tmr.timed(key)
        def work(x: int) -> int:
            if fails:
                raise Boom("work failed")
            return 2 * x

        if self.model.is_open(key):
            self.expect_region_error(lambda: work(3))
            return
        if fails:
            with pytest.raises(Boom):
                work(3)
        else:
            assert work(3) == 6
        self.model.open_region(key)
        self.model.close_region(key, STATUS_FAILED if fails else STATUS_OK)

    def close_all(self, rng: random.Random) -> None:
        keys = list(self.model.open)
        rng.shuffle(keys)
        for key in keys:
            self.end(key)


keys_st = st.sampled_from(KEY_POOL)
bad_keys_st = st.sampled_from(["", TimeType.ALL, "all", 3, None, b"epoch", 1.5])


class TimerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmr = Timer(enabled=True)
        self.model = ThreadModel()
        self.model.bind_current_thread()
        self.driver = Driver(self.tmr, self.model, exclusive=True)
        self.seq_of: dict[int, int] = {}
        self.seen: dict[int, tuple[int, ...]] = {}
        self.checks = 0

    @rule(key=keys_st)
    def start(self, key: TimeType | str) -> None:
        self.driver.start(key)

    @rule(key=keys_st)
    def end(self, key: TimeType | str) -> None:
        self.driver.end(key)

    @rule(key=keys_st)
    def cancel(self, key: TimeType | str) -> None:
        self.driver.cancel(key)

    @rule(key=keys_st, inner=st.none() | keys_st, fails=st.booleans())
    def region(self, key: TimeType | str, inner: TimeType | str | None, fails: bool) -> None:
        self.driver.region(key, inner, fails)

    @rule(key=keys_st, n=st.integers(min_value=0, max_value=4), fails=st.booleans())
    def iterate(self, key: TimeType | str, n: int, fails: bool) -> None:
        self.driver.iterate(key, n, fails)

    @rule(key=keys_st, fails=st.booleans())
    def timed(self, key: TimeType | str, fails: bool) -> None:
        self.driver.timed(key, fails)

    @rule(
        key=bad_keys_st,
        action=st.sampled_from(["start", "end", "cancel", "region", "iterate", "timed"]),
    )
    def bad_key_is_refused(self, key: object, action: str) -> None:
        calls: dict[str, Callable[[], object]] = {
            "start": lambda: self.tmr.start(key),  # type: ignore[arg-type]
            "end": lambda: self.tmr.end(key),  # type: ignore[arg-type]
            "cancel": lambda: self.tmr.cancel(key),  # type: ignore[arg-type]
            "region": lambda: self.tmr.region(key),  # type: ignore[arg-type]
            "iterate": lambda: self.tmr.iterate([1], key),  # type: ignore[arg-type]
            "timed": lambda: self.tmr.timed(key),  # type: ignore[arg-type]
        }
        before = self.tmr.records()
        expected = TypeError if not isinstance(key, str) else ValueError
        with pytest.raises(expected):
            calls[action]()
        after = self.tmr.records()
        for column in COLUMNS:
            assert list(getattr(after, column)) == list(getattr(before, column)), column
        assert after.keys == before.keys, "a refused key must not be registered"

    @rule()
    def reset(self) -> None:
        self.tmr.reset()
        self.model.reset()
        assert len(self.tmr.records()) == 0
        assert self.tmr.failures() == {}

    @invariant()
    def timer_matches_the_model(self) -> None:
        # One invariant reading one snapshot, to keep the many steps cheap.
        records = self.tmr.records()
        self.checks += 1
        self.check_records(records)
        self.check_keys(records)
        if self.checks % 2 == 0:
            self.check_get_time(records)
        self.check_failures(records)
        # Only keys already used: asking about a key must not be what first uses it.
        for key in self.driver.used:
            assert self.tmr.is_open(key) == self.model.is_open(key), key

    def check_records(self, records: Records) -> None:
        check_records_well_formed(records)
        ident = threading.get_ident()
        assert all(records.threads[t].ident == ident for t in records.thread)
        check_thread_records(records, list(range(len(records))), self.model, self.seq_of)
        # A recorded region never changes while it stays recorded, but for its parent moving
        # when the parent is cancelled.
        for mid in self.model.moved:
            self.seen.pop(mid, None)
        self.model.moved.clear()
        expected = sorted(self.model.closed, key=lambda r: r.mid)
        for i, region in enumerate(expected):
            row = tuple(getattr(records, c)[i] for c in COLUMNS)
            assert self.seen.setdefault(region.mid, row) == row

    def check_keys(self, records: Records) -> None:
        assert [str(k) for k in records.keys] == self.driver.used
        counts = self.model.counts()
        done = [k for k in self.driver.used if counts[(k, STATUS_OK)] > 0]
        keys = self.tmr.keys()
        assert [str(k) for k in keys] == done
        for key in keys:
            if str(key) in TIME_TYPE_VALUES:
                assert isinstance(key, TimeType), f"{key!r} should be stored as a TimeType"

    def check_get_time(self, records: Records) -> None:
        """get_time has the completed regions only; a key with none is a KeyError."""
        counts = self.model.counts()
        # Each key under one of its spellings, alternating between checks.
        for key in QUERY_KEYS[self.checks // 2 % 2]:
            ok = counts[(str(key), STATUS_OK)]
            if ok == 0:
                if self.checks % 6 == 0:
                    with pytest.raises(KeyError):
                        self.tmr.get_time(key)
                continue
            times = self.tmr.get_time(key)
            durations = [
                records.end_ns[i] - records.start_ns[i]
                for i in range(len(records))
                if str(records.keys[records.key_id[i]]) == str(key)
                and records.status[i] == STATUS_OK
            ]
            assert len(times) == len(durations) == ok
            for got, ns in zip(times, durations, strict=True):
                assert math.isclose(got, ns / 1e9, rel_tol=1e-12, abs_tol=0.0)
        if self.checks % 10 == 0:
            for key in QUERY_KEYS[0]:
                ok = counts[(str(key), STATUS_OK)]
                if ok:
                    assert self.tmr.get_time_stats(key).count == ok
                else:
                    with pytest.raises(KeyError):
                        self.tmr.get_time_stats(key)

    def check_failures(self, records: Records) -> None:
        failed = {records.seq[i] for i in range(len(records)) if records.status[i] == STATUS_FAILED}
        failures = self.tmr.failures()
        assert set(failures) == failed
        assert all("Boom" in text for text in failures.values())


class TestTimerStateMachine:
    def test_random_call_sequences_record_what_the_model_predicts(self, recorder: str) -> None:
        # Run from a plain test (not TimerMachine.TestCase) so both recorders are used.
        if recorder == "python":
            assert Timer(enabled=True).implementation == "python"
        run_state_machine_as_test(
            TimerMachine,
            settings=settings(max_examples=100, stateful_step_count=50, deadline=None),
        )


class TestReadingCallsChangeNothing:
    def test_asking_whether_a_never_used_key_is_open_does_not_register_it(self) -> None:
        """is_open only reads: it must not make a key "used", which would move the key ahead
        in first-use order (keys(), records().keys and the reports' row order)."""
        tmr = Timer(enabled=True)
        assert tmr.is_open("b") is False
        assert tmr.records().keys == ()
        for key in ("a", "b"):
            tmr.start(key)
            tmr.end(key)
        assert tmr.keys() == ["a", "b"]

    def test_reading_the_times_of_a_never_used_key_does_not_register_it(self) -> None:
        tmr = Timer(enabled=True)
        with pytest.raises(KeyError):
            tmr.get_time("b")
        with pytest.raises(KeyError):
            tmr.get_time_stats("b")
        for key in ("a", "b"):
            tmr.start(key)
            tmr.end(key)
        assert tmr.keys() == ["a", "b"]
        assert [str(k) for k in tmr.records().keys] == ["a", "b"]


# -- several threads on one timer -------------------------------------------------------------

N_THREADS = 4
OPS_PER_THREAD = 250


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    """Switches threads far more often than the default 5 ms, to interleave the threads."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def random_thread_work(
    tmr: Timer, model: ThreadModel, rng: random.Random, barrier: threading.Barrier
) -> None:
    model.bind_current_thread()
    driver = Driver(tmr, model, exclusive=False)
    barrier.wait()
    for _ in range(OPS_PER_THREAD):
        key = rng.choice(KEY_POOL)
        op = rng.random()
        if op < 0.3:
            driver.start(key)
        elif op < 0.6:
            driver.end(key)
        elif op < 0.75:
            inner = rng.choice((None, *KEY_POOL))
            driver.region(key, inner, fails=rng.random() < 0.3)
        elif op < 0.8:
            driver.iterate(key, rng.randrange(3), fails=rng.random() < 0.3)
        elif op < 0.9:
            # On purpose: open a key that is open here, or end one that is not.
            open_keys = list(model.open)
            if open_keys and rng.random() < 0.5:
                driver.start(rng.choice(open_keys))
            else:
                closed = [k for k in KEY_POOL if not model.is_open(k)]
                if closed:
                    driver.end(rng.choice(closed))
        else:
            driver.timed(key, fails=rng.random() < 0.3)
    driver.close_all(rng)


@pytest.mark.usefixtures("fast_thread_switching")
class TestTimerSharedByThreads:
    @pytest.mark.parametrize("seed", range(4))
    def test_each_thread_records_exactly_what_it_did(self, seed: int) -> None:
        tmr = Timer(enabled=True)
        barrier = threading.Barrier(N_THREADS + 1)
        models = [ThreadModel() for _ in range(N_THREADS)]
        errors: list[BaseException] = []

        def target(index: int) -> None:
            try:
                rng = random.Random(seed * 1000 + index)
                random_thread_work(tmr, models[index], rng, barrier)
            except BaseException as exc:
                errors.append(exc)
                barrier.abort()

        threads = [
            threading.Thread(target=target, args=(i,), name=f"worker-{i}") for i in range(N_THREADS)
        ]
        for thread in threads:
            thread.start()
        barrier.wait()
        # Read while the workers write: every snapshot must be consistent on its own.
        snapshots = 0
        while any(thread.is_alive() for thread in threads):
            check_records_well_formed(tmr.records())
            snapshots += 1
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        assert snapshots > 0

        records = tmr.records()
        check_records_well_formed(records)
        idents = {model.ident for model in models}
        assert len(idents) == N_THREADS
        assert {records.threads[t].ident for t in records.thread} <= idents
        assert all(not model.open for model in models)
        total = 0
        for model in models:
            rows = rows_of_thread(records, model.ident)
            for i in rows:
                assert records.threads[records.thread[i]].name == model.name
            check_thread_records(records, rows, model, {}, parents_recorded=True)
            total += len(rows)
        assert total == len(records)

        # Per-key totals, over all threads, are what the threads did together.
        expected: Counter[tuple[str, int]] = Counter()
        for model in models:
            expected += model.counts()
        got = Counter(
            (str(records.keys[records.key_id[i]]), records.status[i]) for i in range(len(records))
        )
        assert got == expected
        for key in {str(k) for k in KEY_POOL}:
            ok = expected[(key, STATUS_OK)]
            if ok:
                assert len(tmr.get_time(key)) == ok
            else:
                with pytest.raises(KeyError):
                    tmr.get_time(key)

    def test_region_error_in_one_thread_leaves_the_others_alone(self) -> None:
        tmr = Timer(enabled=True)
        tmr.start("shared")
        tmr.start(TimeType.EPOCH)
        outcome: dict[str, object] = {}

        def other() -> None:
            try:
                tmr.end("shared")  # open on the main thread only
            except RegionError as exc:
                outcome["end"] = exc
            try:
                tmr.start("mine")
                tmr.start("mine")
            except RegionError as exc:
                outcome["start"] = exc
            tmr.end("mine")
            outcome["records"] = len(tmr.records())

        thread = threading.Thread(target=other, name="other")
        thread.start()
        thread.join()
        assert isinstance(outcome["end"], RegionError)
        assert isinstance(outcome["start"], RegionError)
        assert outcome["records"] == 1
        # The main thread's regions are still open and close normally.
        tmr.end("shared")
        tmr.end(TimeType.EPOCH)
        records = tmr.records()
        by_thread = Counter(
            (records.threads[records.thread[i]].name, str(records.keys[records.key_id[i]]))
            for i in range(len(records))
        )
        main = threading.current_thread().name
        assert by_thread == Counter({("other", "mine"): 1, (main, "shared"): 1, (main, "epoch"): 1})
        assert set(records.status) == {STATUS_OK}
