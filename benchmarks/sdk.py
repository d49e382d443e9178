"""Spans per second of the two span paths, in one run: maeltrace's fast path and the SDK path.

Both arms record the same regions in a tight loop (``--epochs`` x ``--batches`` batches of io,
batch, forward and backward, 4 regions a batch, each epoch handed to the export thread at its
end while recording goes on), then ``flush()``. ``spans/s`` is the spans delivered over the
time from the first region's start until ``flush()`` returned. Destinations are in memory, so
the figures are the paths' own cost, not a network's:

* ``fast path``: ``Timer(exporter=...)`` with an exporter that only counts requests (the
  protobuf spans, outbox and sender as with an endpoint);
* ``SDK path``: ``Timer(tracer_provider=...)``, an OpenTelemetry SDK ``TracerProvider`` with a
  ``SimpleSpanProcessor`` into an ``InMemorySpanExporter`` (the same outbox and sender, then
  one SDK span per region with explicit times and parents);
* ``SDK path + histogram``: the same with a ``MeterProvider`` (``InMemoryMetricReader``), so
  every region is also a point of ``maeltrace.region.duration``.

``epoch end us`` is the median time an epoch's end took on the training thread (the hand-off
to the export thread), ``record s`` the loop itself. The arms alternate for ``--rounds`` rounds;
the table gives medians, and the SDK arms' spans/s as a share of the fast path's.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from benchmarks import _common as common

DEFAULT_EPOCHS, QUICK_EPOCHS = 20, 4
DEFAULT_BATCHES, QUICK_BATCHES = 1000, 200
DEFAULT_ROUNDS, QUICK_ROUNDS = 3, 1

FAST, SDK, SDK_METRICS = "fast path", "SDK path", "SDK path + histogram"


class _Counting:
    """A maeltrace span exporter that keeps nothing: the fast path's own cost."""

    def __init__(self) -> None:
        self.requests = 0

    def export(self, request: object) -> None:
        self.requests += 1

    def shutdown(self) -> None:
        pass


@dataclass
class Arm:
    name: str
    spans_per_s: list[float] = field(default_factory=list)
    record_s: list[float] = field(default_factory=list)
    epoch_end_us: list[float] = field(default_factory=list)
    spans: list[int] = field(default_factory=list)


def _one(name: str, epochs: int, batches: int, folder: Path) -> tuple[float, float, float, int]:
    import maeltrace
    from maeltrace.otel.spans import TraceBudget

    options: dict[str, Any] = {}
    memory = None
    if name == FAST:
        options["exporter"] = _Counting()
    else:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        memory = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        options["tracer_provider"] = provider
        if name == SDK_METRICS:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader

            options["meter_provider"] = MeterProvider(metric_readers=[InMemoryMetricReader()])
    tmr = maeltrace.Timer(
        export=True,
        output_dir=folder,
        trace_budget=TraceBudget(max_spans=10**9),
        handle_signals=False,
        **options,
    )
    start, end = tmr.start, tmr.end
    tt = maeltrace.TimeType
    epoch, io, batch, forward, backward = tt.EPOCH, tt.IO, tt.BATCH, tt.FORWARD, tt.BACKWARD
    ends = []
    began = perf_counter_ns()
    for _ in range(epochs):
        start(epoch)
        for _ in range(batches):
            start(io)
            end(io)
            start(batch)
            start(forward)
            end(forward)
            start(backward)
            end(backward)
            end(batch)
        t = perf_counter_ns()
        end(epoch)
        ends.append(perf_counter_ns() - t)
    recorded = perf_counter_ns()
    tmr.flush(timeout_s=600)
    done = perf_counter_ns()
    spans = tmr.export_health.spans_exported
    tmr.close()
    if memory is not None:
        memory.clear()
    return (
        spans / ((done - began) / 1e9),
        (recorded - began) / 1e9,
        statistics.median(ends) / 1e3,
        spans,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parser(__doc__, "a small run (seconds)")
    args.add_argument("--epochs", type=int)
    args.add_argument("--batches", type=int, help="batches per epoch")
    args.add_argument("--rounds", type=int)
    common.add_json(args)
    opts = args.parse_args(argv)
    epochs = common.pick(opts.epochs, opts.quick, QUICK_EPOCHS, DEFAULT_EPOCHS)
    batches = common.pick(opts.batches, opts.quick, QUICK_BATCHES, DEFAULT_BATCHES)
    rounds = common.pick(opts.rounds, opts.quick, QUICK_ROUNDS, DEFAULT_ROUNDS)
    arms = [Arm(FAST), Arm(SDK), Arm(SDK_METRICS)]
    with tempfile.TemporaryDirectory(prefix="maeltrace-sdk-bench-") as tmp:
        for round_no in range(rounds):
            for arm in common.rotated(arms, round_no):
                rate, record_s, end_us, spans = _one(
                    arm.name, epochs, batches, Path(tmp) / f"{arm.name}-{round_no}"
                )
                arm.spans_per_s.append(rate)
                arm.record_s.append(record_s)
                arm.epoch_end_us.append(end_us)
                arm.spans.append(spans)
    fast = statistics.median(arms[0].spans_per_s)
    header = common.environment("opentelemetry-sdk")
    print("maeltrace span paths: spans/s of the fast path (baseline) and the SDK path")
    print(common.header_line(header))
    print(f"{epochs} epochs x {batches} batches x 4 regions, {rounds} round(s), medians")
    rows = []
    for arm in arms:
        rate = statistics.median(arm.spans_per_s)
        share = "1 (baseline)" if arm.name == FAST else f"{rate / fast:.3f}"
        rows.append(
            [
                arm.name,
                common.whole(rate),
                share,
                f"{statistics.median(arm.record_s):.3f}",
                f"{statistics.median(arm.epoch_end_us):.0f}",
                str(arm.spans[-1]),
            ]
        )
    headers = ["path", "spans/s", "vs fast", "record s", "epoch end us", "spans"]
    print(common.table(headers, rows))
    common.write_json(
        opts.json,
        {
            "environment": header,
            "arms": {
                a.name: {
                    "spans_per_s": a.spans_per_s,
                    "record_s": a.record_s,
                    "epoch_end_us": a.epoch_end_us,
                    "spans": a.spans,
                }
                for a in arms
            },
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
