"""The benchmarks run and print their tables (their figures are read, never asserted)."""

from __future__ import annotations

import pytest

from benchmarks import export, gather_stats, import_time, memory, overhead, report


@pytest.mark.parametrize(
    ("bench", "args", "heading", "baseline"),
    [
        (overhead, ["--quick", "--no-peers"], "maeltrace per-region overhead", "target"),
        (memory, ["--quick"], "maeltrace memory per recorded region", "target"),
        (import_time, ["--quick"], "maeltrace import time", "target"),
        (export, ["--quick"], "maeltrace export: spans/s into a real Jaeger", "target"),
        (gather_stats, ["--quick"], "maeltrace gather_stats", "baseline"),
        (report, ["--quick"], "maeltrace report: seconds to draw", "baseline"),
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
