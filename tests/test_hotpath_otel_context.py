"""Root regions under OpenTelemetry: the recorder asks Python only while a user span is active.

With ``opentelemetry`` imported (MLflow and W&B import it), every root region used to call into
Python to look for the user's active span. The recorders now read OpenTelemetry's context
variable themselves and call the hook only when its Context holds a span; a runtime context
they do not know (``OTEL_PYTHON_CONTEXT``) brings back the call at every root region.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

import pytest

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk (bench group)")

from opentelemetry import context as otel_context  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.context.context import Context, _RuntimeContext  # noqa: E402

from maeltrace import Timer, TimeType  # noqa: E402
from maeltrace._recorder import otel_span_probe  # noqa: E402
from maeltrace.otel._otlp_json import read_json_lines  # noqa: E402

BOTH_RECORDERS = True


class ThreadLocalRuntimeContext(_RuntimeContext):
    """A working runtime context of our own, kept per thread in a `threading.local`: what a user
    gets by naming another implementation in ``OTEL_PYTHON_CONTEXT`` (none other ships with the
    API package, so the test brings one)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _stack(self) -> list[Context]:
        if not hasattr(self._local, "stack"):
            self._local.stack = [Context()]
        stack: list[Context] = self._local.stack
        return stack

    def attach(self, context: Context) -> object:
        stack = self._stack()
        stack.append(context)
        return len(stack) - 1

    def get_current(self) -> Context:
        return self._stack()[-1]

    def detach(self, token: object) -> None:
        assert isinstance(token, int)
        del self._stack()[token:]


class RootCalls:
    """The root hook under test: records the sequence numbers it was called with."""

    def __init__(self) -> None:
        self.seqs: list[int] = []

    def __call__(self, seq: int) -> None:
        self.seqs.append(seq)


@pytest.fixture
def tracer() -> trace.Tracer:
    return otel_sdk.TracerProvider().get_tracer("user-code")


def _timer_with_hook(tmp_path: Path) -> tuple[Timer, RootCalls]:
    """A timer whose root hook is ``RootCalls``, guarded by the real OpenTelemetry probe."""
    tmr = Timer(export=False, output_dir=tmp_path)
    calls = RootCalls()
    probe = otel_span_probe()
    assert probe is not None
    tmr._recorder.set_root_hook(calls, *probe)
    return tmr, calls


def _spans(path: Path) -> dict[str, object]:
    return {
        span.name: span
        for data in read_json_lines(path)
        for rs in data.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    }


class TestProbe:
    def test_probe_finds_the_variable_and_key_that_hold_the_current_span(
        self, tracer: trace.Tracer
    ) -> None:
        probe = otel_span_probe()
        assert probe is not None
        var, key = probe
        assert isinstance(var, ContextVar)
        assert var.get() is otel_context.get_current()
        with tracer.start_as_current_span("user") as span:
            assert var.get()[key] is span is trace.get_current_span()
        assert key not in var.get()

    def test_another_runtime_context_gives_no_probe(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", ThreadLocalRuntimeContext())
        assert otel_span_probe() is None


class TestRootHookCalls:
    def test_no_call_while_no_user_span_is_active(self, tmp_path: Path) -> None:
        tmr, calls = _timer_with_hook(tmp_path)
        for _ in range(3):
            with tmr.region("step"):
                pass
            tmr.start("io")
            tmr.end("io")
        assert calls.seqs == []
        assert tmr.get_time_stats("step").count == 3

    def test_one_call_per_root_region_under_a_user_span(
        self, tmp_path: Path, tracer: trace.Tracer
    ) -> None:
        tmr, calls = _timer_with_hook(tmp_path)
        with tracer.start_as_current_span("user"):
            with tmr.region(TimeType.EPOCH), tmr.region("batch"):
                pass
            tmr.start("eval")
            tmr.end("eval")
        with tmr.region("after"):
            pass
        records = tmr.records()
        seq_of = {records.keys[k]: s for k, s in zip(records.key_id, records.seq, strict=True)}
        assert calls.seqs == [seq_of["epoch"], seq_of["eval"]]

    def test_a_context_attached_by_hand_counts_until_detached(
        self, tmp_path: Path, tracer: trace.Tracer
    ) -> None:
        tmr, calls = _timer_with_hook(tmp_path)
        span = tracer.start_span("user")
        token = otel_context.attach(trace.set_span_in_context(span))
        with tmr.region("inside"):
            pass
        otel_context.detach(token)
        with tmr.region("outside"):
            pass
        span.end()
        assert len(calls.seqs) == 1

    def test_a_span_in_another_thread_is_not_this_threads(
        self, tmp_path: Path, tracer: trace.Tracer
    ) -> None:
        tmr, calls = _timer_with_hook(tmp_path)
        inside = threading.Event()
        leave = threading.Event()

        def user_thread() -> None:
            with tracer.start_as_current_span("elsewhere"):
                inside.set()
                leave.wait(10)

        thread = threading.Thread(target=user_thread)
        thread.start()
        try:
            assert inside.wait(10)
            with tmr.region("here"):
                pass
        finally:
            leave.set()
            thread.join()
        assert calls.seqs == []

    def test_a_span_active_in_an_asyncio_task_counts(
        self, tmp_path: Path, tracer: trace.Tracer
    ) -> None:
        tmr, calls = _timer_with_hook(tmp_path)

        async def task() -> None:
            with tracer.start_as_current_span("in-task"), tmr.region("awaited"):
                await asyncio.sleep(0)

        asyncio.run(task())
        assert len(calls.seqs) == 1

    def test_an_empty_span_entry_is_no_span(self, tmp_path: Path) -> None:
        tmr, calls = _timer_with_hook(tmp_path)
        probe = otel_span_probe()
        assert probe is not None
        token = otel_context.attach(otel_context.set_value(probe[1], None))
        try:
            with tmr.region("step"):
                pass
        finally:
            otel_context.detach(token)
        assert calls.seqs == []

    def test_without_a_probe_every_root_region_calls(self, tmp_path: Path) -> None:
        tmr = Timer(export=False, output_dir=tmp_path)
        calls = RootCalls()
        tmr._recorder.set_root_hook(calls)
        with tmr.region("a"), tmr.region("nested"):
            pass
        with tmr.region("b"):
            pass
        assert len(calls.seqs) == 2

    def test_a_probe_of_the_wrong_types_is_refused(self, tmp_path: Path) -> None:
        tmr = Timer(export=False, output_dir=tmp_path)
        with pytest.raises(TypeError):
            tmr._recorder.set_root_hook(RootCalls(), "not a ContextVar", "key")  # type: ignore[arg-type]  # the misuse under test
        with pytest.raises(TypeError):
            tmr._recorder.set_root_hook(RootCalls(), ContextVar("v"), 7)  # type: ignore[arg-type]  # the misuse under test


class TestParentingWithAnotherRuntimeContext:
    def test_regions_still_join_the_user_span_through_the_python_hook(
        self, tmp_path: Path, tracer: trace.Tracer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", ThreadLocalRuntimeContext())
        tmr = Timer(export=True, output_dir=tmp_path)
        with tracer.start_as_current_span("user") as user, tmr.region("evaluate"):
            pass
        with tmr.region("after"):
            pass
        tmr.close()
        spans = _spans(tmr.traces_path)
        context = user.get_span_context()
        evaluate = spans["evaluate"]
        assert evaluate.trace_id == context.trace_id.to_bytes(16, "big")
        assert evaluate.parent_span_id == context.span_id.to_bytes(8, "big")
        assert spans["after"].parent_span_id == spans["run"].span_id


@pytest.fixture(autouse=True)
def _no_span_leaks() -> Iterator[None]:
    # Every test starts and ends with no active span, so one cannot pass by another's leftovers.
    assert not trace.get_current_span().get_span_context().is_valid
    yield
    assert not trace.get_current_span().get_span_context().is_valid
