"""The Timer's recording API: start/end, region, timed, iterate, errors, reset, warm-up."""

from __future__ import annotations

import os

import pytest

import maeltrace
from maeltrace import RegionError, Timer, TimeType
from maeltrace.records import NO_PARENT, STATUS_FAILED, STATUS_OK

BOTH_RECORDERS = True


class Boom(Exception):
    pass


class TestRecorderChoice:
    def test_the_parametrized_recorder_is_the_one_in_use(self, recorder: str) -> None:
        if recorder == "compiled" and os.environ.get("MAELTRACE_NO_EXTENSION") == "1":
            pytest.skip("MAELTRACE_NO_EXTENSION=1 built maeltrace without its compiled recorder")
        assert Timer().implementation == recorder

    def test_a_disabled_timer_names_no_recorder(self) -> None:
        assert Timer(enabled=False).implementation == "disabled"


class TestStartEnd:
    def test_each_region_is_recorded_once_with_its_duration(self) -> None:
        tmr = Timer()
        for _ in range(3):
            tmr.start(TimeType.BATCH)
            tmr.end(TimeType.BATCH)
        times = tmr.get_time(TimeType.BATCH)
        assert len(times) == 3
        assert all(t >= 0 for t in times)
        records = tmr.records()
        assert list(records.end_ns) >= list(records.start_ns)
        assert all(e >= s for s, e in zip(records.start_ns, records.end_ns, strict=True))

    def test_a_string_and_its_time_type_are_one_key(self) -> None:
        tmr = Timer()
        tmr.start("epoch")
        tmr.end(TimeType.EPOCH)
        assert tmr.keys() == [TimeType.EPOCH]
        assert len(tmr.get_time("epoch")) == 1

    def test_keys_keep_first_use_order(self) -> None:
        tmr = Timer()
        for key in ("zeta", TimeType.IO, "alpha"):
            tmr.start(key)
        for key in ("alpha", TimeType.IO, "zeta"):
            tmr.end(key)
        assert tmr.keys() == ["zeta", TimeType.IO, "alpha"]

    def test_different_keys_overlap_and_the_innermost_open_region_is_the_parent(self) -> None:
        tmr = Timer()
        tmr.start("a")
        tmr.start("b")
        tmr.end("a")  # overlapping, not nested
        tmr.start("c")
        tmr.end("c")
        tmr.end("b")
        r = tmr.records()
        by_key = {r.keys[k]: i for i, k in enumerate(r.key_id)}
        a, b, c = by_key["a"], by_key["b"], by_key["c"]
        assert r.parent_seq[a] == NO_PARENT
        assert r.parent_seq[b] == r.seq[a]
        assert r.parent_seq[c] == r.seq[b]
        assert list(r.seq) == sorted(r.seq)

    def test_the_same_key_opened_twice_raises_and_keeps_the_records(self) -> None:
        tmr = Timer()
        tmr.start("x")
        tmr.end("x")
        tmr.start("x")
        before = tmr.records()
        with pytest.raises(RegionError, match="already open"):
            tmr.start("x")
        assert tmr.records() == before
        tmr.end("x")
        assert len(tmr.get_time("x")) == 2

    def test_an_end_without_start_raises_a_runtime_error(self) -> None:
        tmr = Timer()
        with pytest.raises(RuntimeError, match="not open"):
            tmr.end("never")
        assert issubclass(RegionError, RuntimeError)
        assert issubclass(RegionError, maeltrace.MaeltraceError)
        assert len(tmr.records()) == 0

    @pytest.mark.parametrize("key", [3, None, 1.5, ("a",), b"epoch"])
    def test_a_key_that_is_not_a_string_is_a_type_error(self, key: object) -> None:
        tmr = Timer()
        with pytest.raises(TypeError, match="region key must be"):
            tmr.start(key)  # type: ignore[arg-type]  # the mistake under test
        with pytest.raises(TypeError, match="region key must be"):
            tmr.region(key)  # type: ignore[arg-type]  # the mistake under test

    def test_an_unhashable_key_is_a_type_error(self) -> None:
        with pytest.raises(TypeError, match="region key must be"):
            Timer().start(["a"])  # type: ignore[arg-type]  # the mistake under test

    @pytest.mark.parametrize("key", ["", TimeType.ALL, "all"])
    def test_empty_and_all_keys_are_refused(self, key: str) -> None:
        tmr = Timer()
        with pytest.raises(ValueError, match="region key"):
            tmr.start(key)
        with pytest.raises(ValueError, match="region key"):
            tmr.end(key)


class TestRegion:
    def test_a_region_records_its_body(self) -> None:
        tmr = Timer()
        with tmr.region("step") as region:
            assert region.key == "step"
        assert tmr.get_time_stats("step").count == 1

    def test_the_region_object_is_reused_per_key(self) -> None:
        tmr = Timer()
        assert tmr.region("a") is tmr.region("a")
        assert tmr.region(TimeType.IO) is tmr.region("io")

    def test_a_body_that_raises_is_recorded_as_failed_and_the_exception_propagates(self) -> None:
        tmr = Timer()
        with tmr.region("ok"):
            pass
        with pytest.raises(Boom), tmr.region("ok"):
            raise Boom("disk on fire")
        r = tmr.records()
        assert list(r.status) == [STATUS_OK, STATUS_FAILED]
        assert tmr.failures() == {r.seq[1]: "Boom: disk on fire"}
        assert tmr.get_time_stats("ok").count == 1  # failed regions stay out of the stats

    def test_nested_regions_record_parents(self) -> None:
        tmr = Timer()
        with tmr.region(TimeType.EPOCH), tmr.region(TimeType.BATCH):
            with tmr.region(TimeType.FORWARD):
                pass
            with tmr.region(TimeType.BACKWARD):
                pass
        r = tmr.records()
        names = [r.keys[k] for k in r.key_id]
        assert names == ["epoch", "batch", "forward", "backward"]
        assert list(r.parent_seq) == [NO_PARENT, r.seq[0], r.seq[1], r.seq[1]]

    def test_the_same_region_reentered_raises_and_the_outer_one_fails(self) -> None:
        tmr = Timer()
        with pytest.raises(RegionError), tmr.region("a"), tmr.region("a"):
            pass
        assert list(tmr.records().status) == [STATUS_FAILED]
        assert "RegionError" in next(iter(tmr.failures().values()))


class TestTimed:
    def test_every_call_is_timed_and_the_function_is_wrapped(self) -> None:
        tmr = Timer()

        @tmr.timed("work")
        def work(x: int) -> int:
            """Doubles."""
            return 2 * x

        assert [work(i) for i in range(4)] == [0, 2, 4, 6]
        assert work.__name__ == "work"
        assert work.__doc__ == "Doubles."
        assert tmr.get_time_stats("work").count == 4

    def test_a_call_that_raises_is_recorded_as_failed(self) -> None:
        tmr = Timer()

        @tmr.timed("work")
        def work() -> None:
            raise Boom

        with pytest.raises(Boom):
            work()
        assert list(tmr.records().status) == [STATUS_FAILED]

    def test_coroutine_functions_are_refused(self) -> None:
        tmr = Timer()

        async def later() -> None:
            return None

        with pytest.raises(TypeError, match="returns before its work is done"):
            tmr.timed("x")(later)

    def test_keys_follow_the_first_calls_not_the_decorations(self) -> None:
        tmr = Timer()

        @tmr.timed("decorated first")
        def first() -> None:
            pass

        @tmr.timed("decorated second")
        def second() -> None:
            pass

        @tmr.timed("never called")
        def never() -> None:
            pass

        second()
        first()
        second()
        assert tmr.keys() == ["decorated second", "decorated first"]
        # Not even registered: the records, tables and reports never see the key.
        assert list(tmr.records().keys) == ["decorated second", "decorated first"]
        assert [row.key for row in tmr.summary().rows] == ["decorated second", "decorated first"]

    def test_a_bad_key_is_refused_at_decoration(self) -> None:
        tmr = Timer()
        with pytest.raises(ValueError, match=r"TimeType\.ALL"):
            tmr.timed(TimeType.ALL)
        with pytest.raises(TypeError, match="not int"):
            tmr.timed(3)  # type: ignore[arg-type]  # the refusal is the point


class TestIterate:
    def test_each_fetch_is_one_region_and_the_exhausted_fetch_is_not_recorded(self) -> None:
        tmr = Timer()
        assert list(tmr.iterate(iter("abc"))) == ["a", "b", "c"]
        assert tmr.get_time_stats(TimeType.IO).count == 3

    def test_fetches_nest_in_the_enclosing_region(self) -> None:
        tmr = Timer()
        with tmr.region(TimeType.EPOCH):
            for _ in tmr.iterate(range(2), key="load"):
                pass
        r = tmr.records()
        loads = [i for i, k in enumerate(r.key_id) if r.keys[k] == "load"]
        epoch = next(i for i, k in enumerate(r.key_id) if r.keys[k] == "epoch")
        assert [r.parent_seq[i] for i in loads] == [r.seq[epoch]] * 2

    def test_a_fetch_that_raises_is_recorded_as_failed(self) -> None:
        def broken() -> object:
            yield 1
            raise Boom

        tmr = Timer()
        with pytest.raises(Boom):
            list(tmr.iterate(broken()))
        assert list(tmr.records().status) == [STATUS_OK, STATUS_FAILED]

    def test_breaking_out_of_the_loop_leaves_nothing_open(self) -> None:
        tmr = Timer()
        for _ in tmr.iterate(range(10)):
            break
        tmr.start(TimeType.IO)  # would raise if a fetch were still open
        tmr.end(TimeType.IO)
        assert tmr.get_time_stats(TimeType.IO).count == 2

    def test_a_bad_key_is_refused_before_iterating(self) -> None:
        with pytest.raises(TypeError):
            Timer().iterate([1], key=5)  # type: ignore[arg-type]  # the mistake under test


class TestReading:
    def test_reading_a_key_never_timed_names_the_timed_keys_and_changes_nothing(self) -> None:
        tmr = Timer()
        with tmr.region("batch"):
            pass
        before = tmr.summary().to_markdown()
        with pytest.raises(KeyError, match=r"timed keys: \['batch'\]"):
            tmr.get_time("nope")
        with pytest.raises(KeyError):
            tmr.get_time_stats(TimeType.EPOCH)
        assert tmr.summary().to_markdown() == before
        assert tmr.keys() == ["batch"]

    def test_a_key_only_open_so_far_is_not_timed(self) -> None:
        tmr = Timer()
        tmr.start("open")
        with pytest.raises(KeyError):
            tmr.get_time("open")

    def test_get_time_returns_a_new_list_each_call(self) -> None:
        tmr = Timer()
        with tmr.region("a"):
            pass
        first = tmr.get_time("a")
        first.append(99.0)
        assert len(tmr.get_time("a")) == 1

    def test_warmup_skips_the_first_samples_per_call_and_by_default(self) -> None:
        tmr = Timer(warmup=2)
        for _ in range(5):
            with tmr.region("a"):
                pass
        assert len(tmr.get_time("a")) == 3
        assert len(tmr.get_time("a", warmup=0)) == 5
        assert tmr.get_time_stats("a", warmup=4).count == 1
        assert tmr.get_time("a", warmup=0)[2:] == tmr.get_time("a")
        with pytest.raises(ValueError, match="skips every sample"):
            tmr.get_time_stats("a", warmup=5)

    @pytest.mark.parametrize("warmup", [-1, 1.5, True, "2"])
    def test_a_bad_warmup_is_a_value_error(self, warmup: object) -> None:
        with pytest.raises(ValueError, match="warmup"):
            Timer(warmup=warmup)  # type: ignore[arg-type]  # the mistake under test

    def test_reset_clears_records_but_keeps_open_regions_open(self) -> None:
        tmr = Timer()
        with tmr.region("a"):
            pass
        tmr.start("b")
        tmr.reset()
        assert len(tmr.records()) == 0
        tmr.end("b")
        assert tmr.keys() == ["b"]


class TestDisabled:
    def test_every_call_is_a_no_op(self) -> None:
        tmr = Timer(enabled=False)
        tmr.start("a")
        tmr.start("a")  # no double-open error: nothing is tracked
        tmr.end("b")
        with tmr.region("c"):
            pass

        @tmr.timed("d")
        def f() -> int:
            return 1

        assert f() == 1
        assert list(tmr.iterate([1, 2])) == [1, 2]
        assert len(tmr.records()) == 0
        assert tmr.keys() == []
        tmr.reset()

    def test_the_environment_variable_disables_new_timers(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MAELTRACE_DISABLED", "1")
        tmr = Timer()
        assert not tmr.enabled
        with tmr.region("a"):
            pass
        assert len(tmr.records()) == 0
        assert Timer(enabled=True).enabled
