"""The benchmarks run and print their tables (their figures are read, never asserted)."""

from __future__ import annotations

import re

import pytest

from benchmarks import (
    callbacks,
    export,
    gather_stats,
    import_time,
    memory,
    overhead,
    report,
    sdk,
)


@pytest.mark.parametrize(
    ("bench", "args", "heading", "baseline"),
    [
        (overhead, ["--quick", "--no-peers"], "maeltrace per-region overhead", "target"),
        (memory, ["--quick"], "maeltrace memory per recorded region", "target"),
        (import_time, ["--quick"], "maeltrace import time", "target"),
        (gather_stats, ["--quick"], "maeltrace gather_stats", "baseline"),
        (report, ["--quick"], "maeltrace report: seconds to draw", "baseline"),
        (
            callbacks,
            ["--quick", "--steps", "4", "--rounds", "1"],
            "maeltrace callbacks: cost per training step",
            "baseline",
        ),
        (sdk, ["--quick", "--epochs", "2", "--batches", "50"], "maeltrace span paths", "baseline"),
    ],
)
def test_each_benchmark_runs_and_prints_its_table(
    bench: object,
    args: list[str],
    heading: str,
    baseline: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench.main(args) == 0  # type: ignore[attr-defined]  # a benchmark module
    out = capsys.readouterr().out
    assert out.startswith(heading)
    assert baseline in out.lower()  # the figures come with what they are measured against


def test_export_benchmark_prints_every_configuration_and_a_verdict_per_target(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert export.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("maeltrace export: what export costs a CPU-bound loop")
    loop_table = out.split("Training loop:", 1)[1].split("A/A band", 1)[0]
    for arm in (
        export.OFF,
        export.AA,
        export.EMBEDDED,
        export.OTLP_HTTP,
        export.OTLP_GRPC,
        export.SDK_HTTP,
    ):
        assert re.search(rf"^{re.escape(arm)}  ", loop_table, re.MULTILINE), arm
    assert "1 (baseline)" in loop_table
    assert re.search(r"^A/A band \(export off against itself\): \+-[0-9.]+ %", out, re.MULTILINE)
    assert "OpenTelemetry SDK -> Jaeger" in out.split("Throughput:", 1)[1]
    targets = out.split("Targets (issue 11):", 1)[1].strip().splitlines()[2:]
    rows = [line for line in targets if line.startswith(("loop, ", "maeltrace -> "))]
    # Four export arms x (target, goal) x (wall ratio, CPU-share bound), two throughput rows.
    assert len(rows) == 4 * 2 * 2 + 2
    for row in rows:
        # "met" is only ever yes when the run could resolve it; otherwise it says why not.
        assert re.search(r"  (yes|NO|n/a|not resolved: .+)$", row), row
