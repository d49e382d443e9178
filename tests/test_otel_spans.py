"""Regions become spans: trace per epoch, parents, budget sampling, failures, GPU children."""

from __future__ import annotations

from collections import Counter

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from maeltrace import Timer, TimeType
from maeltrace.otel._resource import rank_from_environment, resource
from maeltrace.otel.spans import SpanBuilder, TraceBudget, run_trace_id, trace_id
from tests.fakes.cuda import fake_gpu_clock

BOTH_RECORDERS = True


def _builder(tmr: Timer, budget: TraceBudget | None = None, process: str = "p1") -> SpanBuilder:
    return SpanBuilder(
        run_id="run-1",
        process_id=process,
        anchor=tmr.anchor,
        resource_attributes=resource("run-1"),
        trace_key_id=tmr._key_ids.get(TimeType.EPOCH),
        budget=budget,
    )


def _spans(builder: SpanBuilder, tmr: Timer, incremental: bool = False) -> list[Span]:
    """The spans ``builder`` makes of all of ``tmr``'s regions, or of those closed since the
    last incremental call (the timer's own export reader)."""
    out = builder.new_message()
    records = tmr._read_new()[0] if incremental else tmr.records()
    builder.add(out, records, tmr.failures(), "fake-gpu")
    return list(out.scope_spans[0].spans)


def _attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def _epochs(tmr: Timer, epochs: int = 2, batches: int = 3) -> None:
    for _ in range(epochs):
        with tmr.region(TimeType.EPOCH):
            for _ in tmr.iterate(range(batches)):
                with tmr.region(TimeType.BATCH), tmr.region(TimeType.FORWARD):
                    pass


class TestTraceShape:
    def test_each_epoch_is_a_trace_with_the_run_and_ordinal_derived_id(self) -> None:
        tmr = Timer()
        _epochs(tmr)
        spans = _spans(_builder(tmr), tmr)
        by_trace = Counter(s.trace_id for s in spans)
        assert by_trace == {trace_id("run-1", 0): 10, trace_id("run-1", 1): 10}
        roots = [s for s in spans if s.name == "epoch"]
        assert all(not s.parent_span_id for s in roots)
        ids = {s.span_id: s for s in spans}
        for span in spans:
            if span.name in ("io", "batch"):
                assert ids[span.parent_span_id].name == "epoch"
            if span.name == "forward":
                assert ids[span.parent_span_id].name == "batch"

    def test_every_process_of_a_run_shares_the_epoch_traces_but_not_span_ids(self) -> None:
        first, second = Timer(), Timer()
        _epochs(first, epochs=1)
        _epochs(second, epochs=1)
        a = _spans(_builder(first, process="rank0"), first)
        b = _spans(_builder(second, process="rank1"), second)
        assert {s.trace_id for s in a} == {s.trace_id for s in b} == {trace_id("run-1", 0)}
        assert not {s.span_id for s in a} & {s.span_id for s in b}

    def test_times_are_the_regions_on_the_wall_clock(self) -> None:
        tmr = Timer()
        _epochs(tmr, epochs=1, batches=1)
        records = tmr.records()
        spans = {s.name: s for s in _spans(_builder(tmr), tmr)}
        for i, key_id in enumerate(records.key_id):
            span = spans[str(records.keys[key_id])]
            assert span.start_time_unix_nano == tmr.anchor.to_unix_nano(records.start_ns[i])
            assert span.end_time_unix_nano == tmr.anchor.to_unix_nano(records.end_ns[i])
            assert (
                _attrs(span)["maeltrace.cpu.duration_ns"] == records.end_ns[i] - records.start_ns[i]
            )

    def test_regions_outside_epochs_go_under_the_run_span_which_links_the_epochs(self) -> None:
        tmr = Timer()
        with tmr.region("setup"):
            pass
        _epochs(tmr, epochs=2, batches=1)
        builder = _builder(tmr)
        out = builder.new_message()
        builder.add(out, tmr.records(), {}, None)
        builder.add_run_span(out, tmr.records().end_ns[-1])
        spans = {s.name: s for s in out.scope_spans[0].spans}
        assert spans["setup"].trace_id == run_trace_id("run-1")
        assert spans["setup"].parent_span_id == builder.run_span_id
        run = spans["run"]
        assert run.trace_id == run_trace_id("run-1")
        assert {link.trace_id for link in run.links} == {trace_id("run-1", 0), trace_id("run-1", 1)}

    def test_an_epoch_inside_another_region_links_to_it_instead_of_a_parent(self) -> None:
        tmr = Timer()
        with tmr.region("fit"):
            _epochs(tmr, epochs=1, batches=1)
        spans = {s.name: s for s in _spans(_builder(tmr), tmr)}
        epoch = spans["epoch"]
        assert not epoch.parent_span_id
        assert [(link.trace_id, link.span_id) for link in epoch.links] == [
            (run_trace_id("run-1"), spans["fit"].span_id)
        ]

    def test_regions_of_an_open_epoch_wait_for_its_end(self) -> None:
        tmr = Timer()
        builder = _builder(tmr)
        tmr.start(TimeType.EPOCH)
        with tmr.region(TimeType.BATCH):
            pass
        builder.trace_key_id = tmr._key_ids[TimeType.EPOCH]
        assert _spans(builder, tmr, incremental=True) == []
        tmr.end(TimeType.EPOCH)
        assert sorted(s.name for s in _spans(builder, tmr, incremental=True)) == ["batch", "epoch"]
        assert _spans(builder, tmr, incremental=True) == []  # each region is built once


class TestSpanContent:
    def test_a_failed_region_is_an_error_with_the_exception_recorded(self) -> None:
        tmr = Timer()
        with pytest.raises(KeyError), tmr.region("load"):
            raise KeyError("shard-7")
        (span,) = _spans(_builder(tmr), tmr)
        assert span.status.code == Status.STATUS_CODE_ERROR
        assert span.status.message == "KeyError: 'shard-7'"
        (event,) = span.events
        assert event.name == "exception"
        assert _attrs_of(event) == {"exception.type": "KeyError", "exception.message": "'shard-7'"}

    def test_a_gpu_region_gets_a_child_on_the_device_timeline(self) -> None:
        tmr = Timer(device=fake_gpu_clock)
        with tmr.region("step", gpu=True):
            pass
        spans = {s.name: s for s in _spans(_builder(tmr), tmr)}
        step, gpu = spans["step"], spans["step [gpu]"]
        assert gpu.parent_span_id == step.span_id
        records = tmr.records()
        assert gpu.end_time_unix_nano - gpu.start_time_unix_nano == records.device_ns[0]
        assert _attrs(step)["maeltrace.gpu.clock"] == "fake-gpu"
        assert _attrs(gpu)["maeltrace.gpu.duration_ns"] == records.device_ns[0]

    def test_attributes_carry_key_index_and_thread(self) -> None:
        tmr = Timer()
        for _ in range(3):
            with tmr.region("k"):
                pass
        spans = _spans(_builder(tmr), tmr)
        assert [_attrs(s)["maeltrace.index"] for s in spans] == [0, 1, 2]
        assert {_attrs(s)["thread.name"] for s in spans} == {"MainThread"}
        assert {_attrs(s)["maeltrace.key"] for s in spans} == {"k"}


class TestBudget:
    def test_beyond_the_budget_batches_are_sampled_first_slowest_and_every_kth(self) -> None:
        tmr = Timer()
        _epochs(tmr, epochs=1, batches=200)  # 1 + 200 io + 200 batch + 200 forward
        builder = _builder(tmr, TraceBudget(max_spans=100, first=5, slowest=5))
        spans = _spans(builder, tmr)
        assert len(spans) <= 100
        names = Counter(s.name for s in spans)
        assert names["epoch"] == 1
        assert names["batch"] == names["forward"]  # whole units: a batch with its children
        batch_index = sorted(_attrs(s)["maeltrace.index"] for s in spans if s.name == "batch")
        assert batch_index[:3] == [0, 1, 2]  # the first units are kept
        records = tmr.records()
        batches = [
            (records.end_ns[i] - records.start_ns[i], i)
            for i, k in enumerate(records.key_id)
            if records.keys[k] == "batch"
        ]
        slowest = max(batches)
        kept = {_attrs(s)["maeltrace.cpu.duration_ns"] for s in spans if s.name == "batch"}
        assert slowest[0] in kept
        root = next(s for s in spans if s.name == "epoch")
        assert _attrs(root)["maeltrace.sampling.dropped_regions"] == 601 - len(spans)
        assert builder.spans_dropped == 601 - len(spans)

    def test_statistics_stay_exact_whatever_the_budget(self) -> None:
        tmr = Timer()
        _epochs(tmr, epochs=1, batches=50)
        _spans(_builder(tmr, TraceBudget(max_spans=10, first=1, slowest=1)), tmr)
        assert tmr.get_time_stats(TimeType.BATCH).count == 50

    @pytest.mark.parametrize("bad", [{"max_spans": 0}, {"first": -1}, {"slowest": 1.5}])
    def test_a_bad_budget_is_refused(self, bad: dict[str, object]) -> None:
        with pytest.raises(ValueError, match="TraceBudget"):
            TraceBudget(**bad)  # type: ignore[arg-type]  # the mistake under test


class TestResource:
    def test_service_name_and_extra_attributes_come_from_the_standard_variables(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("OTEL_SERVICE_NAME", "trainer")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=weather,service.name=ignored")
        attrs = resource("r1")
        assert attrs["service.name"] == "trainer"
        assert attrs["team"] == "weather"
        assert attrs["maeltrace.run_id"] == "r1"

    def test_a_malformed_resource_variable_is_a_value_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team")
        with pytest.raises(ValueError, match="OTEL_RESOURCE_ATTRIBUTES"):
            resource("r1")

    @pytest.mark.parametrize(
        ("env", "expected"),
        [
            (
                {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8"},
                {"rank": 3, "local_rank": 1, "world_size": 8},
            ),
            ({"SLURM_PROCID": "5", "SLURM_NTASKS": "6"}, {"rank": 5, "world_size": 6}),
            ({"OMPI_COMM_WORLD_RANK": "2"}, {"rank": 2}),
            ({}, {}),
        ],
    )
    def test_rank_comes_from_the_launcher(
        self, env: dict[str, str], expected: dict[str, int]
    ) -> None:
        assert rank_from_environment(env) == expected


def _attrs_of(event: Span.Event) -> dict[str, object]:
    return {kv.key: kv.value.string_value for kv in event.attributes}


def test_messages_serialise() -> None:
    tmr = Timer()
    _epochs(tmr, epochs=1, batches=2)
    builder = _builder(tmr)
    out = builder.new_message()
    builder.add(out, tmr.records(), {}, None)
    again = ResourceSpans.FromString(out.SerializeToString())
    assert len(again.scope_spans[0].spans) == 7
    assert again.scope_spans[0].scope.name == "maeltrace"
