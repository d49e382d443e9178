"""The benchmarks run and print their tables (their figures are read, never asserted)."""

from __future__ import annotations

import pytest

from benchmarks import export, import_time, memory, overhead


@pytest.mark.parametrize(
    ("bench", "args", "heading"),
    [
        (overhead, ["--quick", "--no-peers"], "maeltrace per-region overhead"),
        (memory, ["--quick"], "maeltrace memory per recorded region"),
        (import_time, ["--quick"], "maeltrace import time"),
        (export, ["--quick"], "maeltrace export: spans/s into a real Jaeger"),
    ],
)
def test_each_benchmark_runs_and_prints_its_table(
    bench: object, args: list[str], heading: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(args) == 0  # type: ignore[attr-defined]  # a benchmark module
    out = capsys.readouterr().out
    assert out.startswith(heading)
    assert "target" in out.lower()
