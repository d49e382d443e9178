"""Throughput: counts of work per region (items, tokens), items/s and MFU in the statistics,
tables, stats files, spans and metrics."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from maeltrace import RegionError, Summary, Timer, TimeType
from maeltrace.otel import semconv
from tests.helpers import exported_spans

BATCH = 32
TOKENS = 512


def _train(tmr: Timer, epochs: int = 2, batches: int = 4, *, last: int = BATCH) -> None:
    """Epochs of batches of ``BATCH`` items (the last one ``last``), each with a forward that
    is given no count; tokens counted inside the batch with `add_items`."""
    for _ in range(epochs):
        with tmr.region(TimeType.EPOCH):
            for b in range(batches):
                size = last if b == batches - 1 else BATCH
                with tmr.region(TimeType.BATCH, items=size):
                    with tmr.region("forward"):
                        sum(range(2000))
                    tmr.add_items(TimeType.BATCH, tokens=TOKENS)


def _row(summary: Summary, key: str, clock: str = "cpu") -> object:
    return next(r for r in summary.rows if str(r.key) == key and r.clock == clock)


class TestCounts:
    def test_each_region_keeps_its_own_count_and_counts_add_up(self) -> None:
        tmr = Timer(export=False)
        _train(tmr, epochs=1, batches=3, last=7)
        records = tmr.records()
        batch = records.keys.index("batch")
        counted = [records.counts[records.seq[i]] for i in records.rows(batch)]
        assert counted == [(32, TOKENS), (32, TOKENS), (7, TOKENS)]

    def test_a_region_without_a_count_counts_its_childrens(self) -> None:
        tmr = Timer(export=False)
        _train(tmr, epochs=2, batches=3, last=7)
        records = tmr.records()
        work = records.work()
        epochs = [records.seq[i] for i in records.rows(records.keys.index("epoch"))]
        assert [work[s] for s in epochs] == [(71, 3 * TOKENS)] * 2
        forwards = [records.seq[i] for i in records.rows(records.keys.index("forward"))]
        assert not any(s in work for s in forwards)  # children never take a parent's count

    def test_a_failed_child_is_not_counted_in_its_parent(self) -> None:
        tmr = Timer(export=False)
        with tmr.region("epoch"):
            with tmr.region("batch", items=4):
                pass
            with pytest.raises(ZeroDivisionError), tmr.region("batch", items=5):
                1 / 0  # noqa: B018
        records = tmr.records()
        epoch = records.seq[records.key_id.index(records.keys.index("epoch"))]
        assert records.work()[epoch] == (4, 0)

    def test_bad_counts_raise_where_given_and_keep_what_was_recorded(self) -> None:
        tmr = Timer(export=False)
        _train(tmr, epochs=1, batches=2)
        before = tmr.records().counts
        with pytest.raises(ValueError, match="items must not be negative"):
            tmr.region("batch", items=-1)
        with pytest.raises(TypeError, match="tokens must be a whole number"):
            tmr.region("batch", tokens=1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="items must be a whole number"):
            tmr.region("batch", items=True)
        with pytest.raises(RegionError, match="no region of 'batch' is open"):
            tmr.add_items("batch", items=3)
        assert tmr.records().counts == before
        assert tmr.get_time_stats("batch").count == 2

    def test_numpy_and_torch_integers_count(self) -> None:
        np = pytest.importorskip("numpy", reason="numpy (frameworks group)")
        torch = pytest.importorskip("torch", reason="torch (frameworks group)")
        tmr = Timer(export=False)
        with tmr.region("batch", items=np.int64(3), tokens=torch.tensor(9)):
            pass
        assert list(tmr.records().counts.values()) == [(3, 9)]

    def test_a_disabled_timer_still_checks_counts(self) -> None:
        tmr = Timer(enabled=False)
        with tmr.region("batch", items=3):
            tmr.add_items("batch", tokens=4)
        with pytest.raises(ValueError, match="items must not be negative"):
            tmr.region("batch", items=-3)

    def test_reset_forgets_counts(self) -> None:
        tmr = Timer(export=False)
        _train(tmr, epochs=1, batches=2)
        tmr.reset()
        with tmr.region("batch"):
            pass
        assert tmr.records().counts == {}


class TestSummary:
    def test_rates_are_counts_over_summed_durations(self) -> None:
        tmr = Timer(export=False, warmup=1)
        _train(tmr, epochs=2, batches=4, last=8)
        summary = tmr.summary()
        batch = _row(summary, "batch")
        assert (batch.items, batch.tokens) == (2 * (3 * BATCH + 8), 8 * TOKENS)
        assert (batch.steady_items, batch.steady_tokens) == (batch.items - BATCH, 7 * TOKENS)
        assert batch.rate("items") == pytest.approx(batch.items / batch.stats.total)
        assert batch.rate("tokens", steady=True) == pytest.approx(
            batch.steady_tokens / batch.steady.total
        )
        assert _row(summary, "forward").rate("items") is None
        with pytest.raises(ValueError, match="unit must be one of"):
            batch.rate("samples")

    def test_mfu_needs_a_peak_and_prefers_tokens(self) -> None:
        tmr = Timer(export=False, flops_per_item=2e6, flops_per_token=1e5, peak_flops=1e12)
        _train(tmr)
        summary = tmr.summary()
        batch = _row(summary, "batch")
        assert batch.mfu(summary.throughput) == pytest.approx(1e5 * batch.rate("tokens") / 1e12)
        assert batch.mfu({"flops_per_item": 2e6}) is None
        assert batch.mfu({"flops_per_item": 2e6, "peak_flops": 1e12}) == pytest.approx(
            2e6 * batch.rate("items") / 1e12
        )

    def test_peak_flops_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MAELTRACE_PEAK_FLOPS", "312e12")
        assert Timer(export=False).throughput == {"peak_flops": 312e12}
        monkeypatch.setenv("MAELTRACE_PEAK_FLOPS", "fast")
        with pytest.raises(ValueError, match="MAELTRACE_PEAK_FLOPS"):
            Timer(export=False)
        with pytest.raises(ValueError, match="flops_per_item"):
            Timer(export=False, flops_per_item=-1.0, peak_flops=1.0)

    def test_tables_csv_and_json(self, tmp_path: Path) -> None:
        tmr = Timer(export=False, flops_per_item=1e6, peak_flops=1e12)
        _train(tmr)
        summary = tmr.summary()
        text = summary.to_markdown()
        assert "Throughput (every sample):" in text
        table = text[text.index("Throughput") :]
        batch_line = next(x for x in table.splitlines() if x.startswith("| Batch "))
        cells = [c.strip() for c in batch_line.strip("|").split("|")]
        batch = _row(summary, "batch")
        assert cells == [
            "Batch",
            str(batch.items),
            f"{batch.rate('items'):.1f}",
            str(batch.tokens),
            f"{batch.rate('tokens'):.1f}",
            f"{batch.mfu(summary.throughput):.1%}",
        ]
        assert "| Forward " not in table  # no counted work, no throughput row
        rows = list(csv.DictReader(io.StringIO(summary.to_csv())))
        by_key = {r["key"]: r for r in rows}
        assert float(by_key["batch"]["items_per_s"]) == pytest.approx(batch.rate("items"))
        assert by_key["forward"]["items_per_s"] == ""
        path = summary.save(tmp_path / "stats.json")
        loaded = Summary.load(path)
        again = _row(loaded, "batch")
        assert (again.items, again.tokens) == (batch.items, batch.tokens)
        assert loaded.throughput == {"flops_per_item": 1e6, "peak_flops": 1e12}
        assert loaded.to_markdown() == text

    def test_files_without_counts_are_unchanged(self) -> None:
        tmr = Timer(export=False)
        with tmr.region("batch"):
            pass
        region = tmr.summary().to_dict()["regions"][0]
        assert set(region) == {
            "key", "label", "clock", "device", "compiled", "failed", "stats", "steady",
            "samples_ns",
        }  # fmt: skip
        assert "Throughput" not in tmr.summary().to_markdown()

    def test_a_bad_count_in_stats_json_is_refused(self, tmp_path: Path) -> None:
        from maeltrace.errors import FormatError

        tmr = Timer(export=False)
        _train(tmr)
        data = tmr.summary().to_dict()
        data["regions"][1]["items"] = -4
        (tmp_path / "stats.json").write_text(json.dumps(data))
        with pytest.raises(FormatError, match=r"regions\[1\]\.items"):
            Summary.load(tmp_path / "stats.json")


class TestSpansAndMetrics:
    def test_spans_carry_the_counts(self, tmp_path: Path) -> None:
        tmr = Timer(export=True, output_dir=tmp_path)
        _train(tmr, epochs=2, batches=3, last=5)
        tmr.close()
        spans = exported_spans(tmp_path / "traces.otlp.jsonl")

        def attrs(span: object) -> dict[str, int]:
            return {a.key: a.value.int_value for a in span.attributes}  # type: ignore[attr-defined]

        by_name: dict[str, list[dict[str, int]]] = {}
        for span in spans:
            by_name.setdefault(span.name, []).append(attrs(span))
        assert [a[semconv.MAELTRACE_ITEMS] for a in by_name["batch"]] == [32, 32, 5] * 2
        assert {a[semconv.MAELTRACE_TOKENS] for a in by_name["batch"]} == {TOKENS}
        assert [a[semconv.MAELTRACE_ITEMS] for a in by_name["epoch"]] == [69, 69]
        assert all(semconv.MAELTRACE_ITEMS not in a for a in by_name["forward"])
        run = next(s for s in spans if s.name == "run")
        run_attrs = {a.key: a.value for a in run.attributes}
        rate = run_attrs[semconv.stats_attribute("batch", "cpu", "items_per_s")].double_value
        assert rate == pytest.approx(_row(tmr.summary(), "batch").rate("items"))

    def test_the_sdk_path_carries_them_too(self, tmp_path: Path) -> None:
        sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk (otel)")
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        provider = sdk.TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tmr = Timer(export=True, output_dir=tmp_path, tracer_provider=provider)
        _train(tmr, epochs=1, batches=2)
        tmr.close()
        batches = [s for s in exporter.get_finished_spans() if s.name == "batch"]
        assert [s.attributes[semconv.MAELTRACE_ITEMS] for s in batches] == [BATCH, BATCH]

    def test_the_counters_add_every_count(self, tmp_path: Path) -> None:
        metrics = pytest.importorskip("opentelemetry.sdk.metrics", reason="opentelemetry-sdk")
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        reader = InMemoryMetricReader()
        tmr = Timer(
            export=True,
            output_dir=tmp_path,
            meter_provider=metrics.MeterProvider(metric_readers=[reader]),
        )
        _train(tmr, epochs=3, batches=4, last=3)
        tmr.close()
        data = reader.get_metrics_data()
        assert data is not None
        sums: dict[tuple[str, str], int] = {}
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name in (semconv.REGION_ITEMS, semconv.REGION_TOKENS):
                        assert metric.data.is_monotonic
                        for point in metric.data.data_points:
                            key = str(point.attributes[semconv.MAELTRACE_KEY])
                            sums[(metric.name, key)] = point.value
        assert sums == {
            (semconv.REGION_ITEMS, "batch"): 3 * (3 * BATCH + 3),
            (semconv.REGION_TOKENS, "batch"): 12 * TOKENS,
            (semconv.REGION_ITEMS, "epoch"): 3 * (3 * BATCH + 3),
            (semconv.REGION_TOKENS, "epoch"): 12 * TOKENS,
        }


def test_the_sinks_log_the_rates_with_the_statistics() -> None:
    from maeltrace.sinks.base import metric_values

    tmr = Timer(export=False, warmup=1, flops_per_item=1e6, peak_flops=1e12)
    _train(tmr)
    batch = _row(tmr.summary(), "batch")
    values = metric_values(tmr.summary())
    assert values["maeltrace/batch/steady/items_per_s"] == pytest.approx(
        batch.rate("items", steady=True)
    )
    assert values["maeltrace/batch/steady/mfu"] == pytest.approx(
        1e6 * batch.rate("items", steady=True) / 1e12
    )
    assert "maeltrace/batch/steady/items" not in values  # counts only with stats="all"
    assert metric_values(tmr.summary(), stats="all")["maeltrace/batch/steady/items"] == float(
        batch.steady_items
    )
    assert "maeltrace/forward/steady/items_per_s" not in values
    assert not any("items" in name for name in metric_values(tmr.summary(), names="deep500"))
