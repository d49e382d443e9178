"""Threads, fork and disabled timers: who recorded a region, what a forked child starts with,
and that a disabled timer records nothing."""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from maeltrace import Records, RegionError, Timer, TimeType
from maeltrace.records import NO_PARENT, STATUS_FAILED, STATUS_OK

# tests/conftest.py runs every test here against the compiled and the pure-Python recorder.
BOTH_RECORDERS = True

DISABLED = "MAELTRACE_DISABLED"


class Boom(Exception):
    """The exception region bodies raise on purpose."""


def rows(records: Records) -> list[dict[str, Any]]:
    """The records as one dict per region, with the key and thread resolved."""
    out = []
    for i in range(len(records)):
        thread = records.threads[records.thread[i]]
        out.append(
            {
                "key": str(records.keys[records.key_id[i]]),
                "seq": records.seq[i],
                "parent_seq": records.parent_seq[i],
                "start_ns": records.start_ns[i],
                "end_ns": records.end_ns[i],
                "status": records.status[i],
                "ident": thread.ident,
                "native_id": thread.native_id,
                "thread": thread.name,
            }
        )
    return out


def run_in_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """Runs ``target`` on a new thread to its end and re-raises what it raised."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, name=name)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return thread


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    """Switches threads far more often than the default 5 ms, to interleave them."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


class TestRegionsOfOtherThreads:
    def test_a_loader_threads_regions_are_recorded_with_that_thread(self) -> None:
        tmr = Timer(enabled=True)
        batches: list[int] = []

        def loader() -> None:
            for batch in tmr.iterate(range(3)):
                with tmr.region("decode"):
                    batches.append(batch)

        tmr.start(TimeType.EPOCH)
        thread = run_in_thread(loader, name="loader")
        tmr.end(TimeType.EPOCH)

        assert batches == [0, 1, 2]
        got = rows(tmr.records())
        loader_rows = [r for r in got if r["thread"] == "loader"]
        assert [r["key"] for r in loader_rows] == ["io", "decode"] * 3
        assert {r["ident"] for r in loader_rows} == {thread.ident}
        assert {r["native_id"] for r in loader_rows} == {thread.native_id}
        main = [r for r in got if r["thread"] != "loader"]
        assert [r["key"] for r in main] == ["epoch"]
        assert main[0]["ident"] == threading.get_ident()
        assert main[0]["thread"] == threading.current_thread().name
        # Parents never cross threads: the main thread's open epoch is no loader region's
        # parent, and the loader's fetches close before its decode regions open.
        assert {r["parent_seq"] for r in loader_rows} == {NO_PARENT}

    def test_nesting_inside_a_thread_gives_parents_from_that_thread_only(self) -> None:
        tmr = Timer(enabled=True)

        def worker() -> None:
            with tmr.region("outer"), tmr.region("inner"):
                pass

        with tmr.region("outer"):
            run_in_thread(worker, name="worker")
        got = {(r["thread"], r["key"]): r for r in rows(tmr.records())}
        worker_outer = got[("worker", "outer")]
        assert worker_outer["parent_seq"] == NO_PARENT
        assert got[("worker", "inner")]["parent_seq"] == worker_outer["seq"]
        main_outer = got[(threading.current_thread().name, "outer")]
        assert main_outer["parent_seq"] == NO_PARENT
        assert main_outer["seq"] < worker_outer["seq"]

    def test_the_same_key_is_open_in_two_threads_at_once(self) -> None:
        tmr = Timer(enabled=True)
        opened = threading.Event()
        may_end = threading.Event()

        def other() -> None:
            tmr.start("step")
            opened.set()
            assert may_end.wait(timeout=30)
            tmr.end("step")

        tmr.start("step")
        thread = threading.Thread(target=other, name="other")
        thread.start()
        try:
            assert opened.wait(timeout=30)
            # Both threads hold "step" open now; ending ours leaves theirs open.
            tmr.end("step")
            assert tmr.is_open("step") is False
        finally:
            may_end.set()
            thread.join()
        got = rows(tmr.records())
        assert sorted(r["thread"] for r in got) == sorted(
            ["other", threading.current_thread().name]
        )
        assert {r["key"] for r in got} == {"step"}
        assert {r["status"] for r in got} == {STATUS_OK}
        # The two regions overlapped: each started before the other ended.
        first, second = got
        assert first["start_ns"] <= second["end_ns"]
        assert second["start_ns"] <= first["end_ns"]

    def test_ending_a_key_open_only_in_another_thread_is_a_region_error(self) -> None:
        tmr = Timer(enabled=True)
        tmr.start("k")
        caught: list[BaseException] = []

        def other() -> None:
            try:
                tmr.end("k")
            except RegionError as exc:
                caught.append(exc)

        run_in_thread(other, name="other")
        assert len(caught) == 1
        assert isinstance(caught[0], RuntimeError)
        assert len(tmr.records()) == 0
        tmr.end("k")  # still open here
        assert [r["thread"] for r in rows(tmr.records())] == [threading.current_thread().name]

    def test_a_failed_region_in_one_thread_does_not_fail_another(self) -> None:
        tmr = Timer(enabled=True)

        def failing() -> None:
            with pytest.raises(Boom), tmr.region("work"):
                raise Boom("loader broke")

        with tmr.region("work"):
            run_in_thread(failing, name="failing")
        status = {r["thread"]: r["status"] for r in rows(tmr.records())}
        assert status == {"failing": STATUS_FAILED, threading.current_thread().name: STATUS_OK}
        assert len(tmr.get_time("work")) == 1

    @pytest.mark.usefixtures("fast_thread_switching")
    def test_a_snapshot_names_the_key_of_every_region_while_threads_add_keys(self) -> None:
        """Every key id in a snapshot indexes its ``keys``, even when another thread registers
        keys while ``records()`` runs (keys must not be read before the regions)."""
        tmr = Timer(enabled=True)

        # Logs of finished threads make a snapshot take longer to read, widening the race.
        def one_region() -> None:
            with tmr.region("old"):
                pass

        for index in range(100):
            run_in_thread(one_region, name=f"short-{index}")
        tmr.reset()
        stop = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for i in range(20_000):
                    if stop.is_set():
                        break
                    key = f"new-{i}"
                    tmr.start(key)
                    tmr.end(key)
                    if i % 16 == 15:
                        tmr.reset()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=writer, name="writer")
        thread.start()
        try:
            snapshots = 0
            while thread.is_alive() and snapshots < 1500:
                snapshots += 1
                records = tmr.records()
                unnamed = sorted({k for k in records.key_id if k >= len(records.keys)})
                assert not unnamed, (
                    f"regions under key ids {unnamed} in a snapshot of {len(records.keys)} keys"
                )
        finally:
            stop.set()
            thread.join()
        assert not errors


def child_report(tmr: Timer, open_in_parent: list[str]) -> dict[str, Any]:
    """What the forked child sees; runs in the child, so it returns facts, not asserts."""
    timed_keys = tmr.keys()
    report: dict[str, Any] = {
        "records_at_start": len(tmr.records()),
        "keys_at_start": [str(k) for k in timed_keys],
        "failures_at_start": len(tmr.failures()),
        "ident": threading.get_ident(),
        "open_at_start": {key: tmr.is_open(key) for key in open_in_parent},
    }
    try:
        tmr.get_time("batch")
        report["get_time_batch"] = "no error"
    except KeyError:
        report["get_time_batch"] = "KeyError"
    ended: dict[str, str] = {}
    for key in open_in_parent:
        try:
            tmr.end(key)
            ended[key] = "ended"
        except RegionError:
            ended[key] = "RegionError"
    report["end_parents_open_key"] = ended
    for key in open_in_parent:
        tmr.start(key)
        tmr.end(key)
    with tmr.region("child-only"):
        pass
    report["rows"] = rows(tmr.records())
    return report


def fork_and_report(tmr: Timer, open_in_parent: list[str]) -> dict[str, Any]:
    """Forks; the child runs `child_report` and sends it back as JSON through a pipe."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork in a process with threads; none run here.
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, which never returns
        code = 1
        try:
            os.close(read_end)
            try:
                payload = {"ok": True, "report": child_report(tmr, open_in_parent)}
            except BaseException:
                payload = {"ok": False, "error": traceback.format_exc()}
            data = json.dumps(payload).encode()
            while data:
                data = data[os.write(write_end, data) :]
            os.close(write_end)
            code = 0 if payload["ok"] else 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    payload = json.loads(b"".join(chunks) or b'{"ok": false, "error": "no report"}')
    assert payload["ok"], payload.get("error")
    assert os.waitstatus_to_exitcode(status) == 0
    report: dict[str, Any] = payload["report"]
    return report


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is not available on this platform")
# JAX, when an earlier test imported it, warns at every fork; the child here runs no JAX code.
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
class TestFork:
    def test_the_child_starts_empty_and_the_parents_records_are_untouched(self) -> None:
        tmr = Timer(enabled=True)

        def loader() -> None:
            for _ in tmr.iterate(range(2)):
                pass

        run_in_thread(loader, name="loader")
        tmr.start(TimeType.EPOCH)
        with tmr.region("batch"):
            pass
        with pytest.raises(Boom), tmr.region("batch"):
            raise Boom("before fork")
        tmr.start("k")
        before = rows(tmr.records())
        failures_before = tmr.failures()
        assert len(before) == 4

        report = fork_and_report(tmr, ["epoch", "k"])

        assert report["records_at_start"] == 0
        assert report["keys_at_start"] == []
        assert report["failures_at_start"] == 0
        assert report["get_time_batch"] == "KeyError"
        # The regions open in the parent are not open in the child...
        assert report["open_at_start"] == {"epoch": False, "k": False}
        assert report["end_parents_open_key"] == {"epoch": "RegionError", "k": "RegionError"}
        # ...so the child can open and close those keys itself.
        child_rows = report["rows"]
        assert [r["key"] for r in child_rows] == ["epoch", "k", "child-only"]
        assert {r["status"] for r in child_rows} == {STATUS_OK}
        assert {r["parent_seq"] for r in child_rows} == {NO_PARENT}
        assert {r["ident"] for r in child_rows} == {report["ident"]}

        # The parent's store and open regions are as they were.
        assert rows(tmr.records()) == before
        assert tmr.failures() == failures_before
        assert tmr.is_open("k")
        assert tmr.is_open(TimeType.EPOCH)
        tmr.end("k")
        tmr.end(TimeType.EPOCH)
        after = rows(tmr.records())
        assert [r for r in after if r["key"] not in ("epoch", "k")] == before
        assert [r["key"] for r in after] == ["io", "io", "epoch", "batch", "batch", "k"]

    def test_a_region_open_on_another_thread_at_fork_time_is_not_in_the_child(self) -> None:
        tmr = Timer(enabled=True)
        opened = threading.Event()
        may_end = threading.Event()

        def loader() -> None:
            tmr.start(TimeType.IO)
            opened.set()
            assert may_end.wait(timeout=30)
            tmr.end(TimeType.IO)

        thread = threading.Thread(target=loader, name="loader")
        thread.start()
        try:
            assert opened.wait(timeout=30)
            report = fork_and_report(tmr, ["io"])
        finally:
            may_end.set()
            thread.join()
        assert report["records_at_start"] == 0
        assert report["open_at_start"] == {"io": False}
        assert report["end_parents_open_key"] == {"io": "RegionError"}
        assert {r["thread"] for r in report["rows"]} == {threading.current_thread().name}
        # In the parent the loader's region went on and was recorded on the loader thread.
        got = rows(tmr.records())
        assert [(r["thread"], r["key"]) for r in got] == [("loader", "io")]


def make_disabled_by_argument(monkeypatch: pytest.MonkeyPatch) -> Timer:
    monkeypatch.delenv(DISABLED, raising=False)
    return Timer(enabled=False)


def make_disabled_by_environment(monkeypatch: pytest.MonkeyPatch) -> Timer:
    monkeypatch.setenv(DISABLED, "1")
    return Timer()


class TestDisabled:
    @pytest.mark.parametrize(
        "make", [make_disabled_by_argument, make_disabled_by_environment], ids=["arg", "env"]
    )
    def test_recording_calls_are_no_ops_that_record_nothing(
        self, make: Callable[[pytest.MonkeyPatch], Timer], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        tmr = make(monkeypatch)
        assert tmr.enabled is False
        tmr.start("k")
        tmr.start("k")  # no RegionError: nothing is opened
        tmr.end("k")
        tmr.end("never-started")
        with tmr.region(TimeType.BATCH):
            pass
        with pytest.raises(Boom), tmr.region(TimeType.BATCH):
            raise Boom("still propagates")

        @tmr.timed("work")
        def work(x: int) -> int:
            return x + 1

        assert work(1) == 2
        assert list(tmr.iterate(range(3))) == [0, 1, 2]
        assert list(tmr.iterate(iter("ab"), key="fetch")) == ["a", "b"]

        records = tmr.records()
        assert len(records) == 0
        assert len(records.key_id) == len(records.seq) == len(records.thread) == 0
        assert tmr.keys() == []
        assert tmr.failures() == {}
        for key in ("k", TimeType.BATCH, "work", TimeType.IO, "fetch"):
            with pytest.raises(KeyError):
                tmr.get_time(key)

    @pytest.mark.parametrize("value", ["1", "true", "yes", "on"])
    def test_yes_words_in_the_environment_disable_new_timers(
        self, value: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(DISABLED, value)
        tmr = Timer()
        assert tmr.enabled is False
        with tmr.region("k"):
            pass
        assert len(tmr.records()) == 0

    @pytest.mark.parametrize("value", ["0", "false", "no", "off", ""])
    def test_no_words_in_the_environment_leave_timers_enabled(
        self, value: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(DISABLED, value)
        tmr = Timer()
        assert tmr.enabled is True
        with tmr.region("k"):
            pass
        assert len(tmr.records()) == 1

    @pytest.mark.parametrize("value", ["maybe", "2", "disabled"])
    def test_a_bad_environment_value_is_a_value_error_at_construction(
        self, value: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(DISABLED, value)
        with pytest.raises(ValueError, match=DISABLED):
            Timer()

    def test_the_environment_is_read_when_the_timer_is_built(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv(DISABLED, raising=False)
        enabled = Timer()
        monkeypatch.setenv(DISABLED, "1")
        disabled = Timer()
        for tmr in (enabled, disabled):
            with tmr.region("k"):
                pass
        assert len(enabled.records()) == 1
        assert len(disabled.records()) == 0

    def test_an_explicit_enabled_argument_wins_over_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(DISABLED, "1")
        tmr = Timer(enabled=True)
        with tmr.region("k"):
            pass
        assert len(tmr.records()) == 1
