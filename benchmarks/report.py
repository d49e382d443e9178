"""The report's flame chart: seconds to draw one epoch of many regions, against one patch per bar.

What it measures:
    A Timer records ``--epochs`` epochs (default 3) of ``--batches`` batches (default 2,500),
    each with its IO wait and a forward region inside the batch: 7,501 regions an epoch. Its
    Chrome trace is written, and `maeltrace.tools.plots.flame_chart` draws the median epoch into a
    PNG; the figure is the median over ``--rounds`` rounds (default 3), in seconds.

    Baseline in the same run: the same bars (`maeltrace.tools.plots.flame_layout`) drawn the naive
    way, one matplotlib ``Rectangle`` patch per bar, on a figure of the same size and dpi, saved
    as PNG. The ratio is flame_chart's time over the baseline's in the same round.

How to run::

    uv run --extra report python benchmarks/report.py
    uv run --extra report python benchmarks/report.py --quick     # 500 batches, 2 rounds
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from benchmarks import _common
from maeltrace import Timer, TimeType


def _trace(folder: Path, epochs: int, batches: int) -> dict[str, Any]:
    tmr = Timer(export=False, output_dir=folder)
    for _ in range(epochs):
        with tmr.region(TimeType.EPOCH):
            for _ in tmr.iterate(range(batches), TimeType.IO):
                with tmr.region(TimeType.BATCH), tmr.region(TimeType.FORWARD):
                    pass
    tmr.write_outputs()
    trace: dict[str, Any] = json.loads((folder / "trace.json").read_text(encoding="utf-8"))
    return trace


def _patches(trace: dict[str, Any]) -> None:
    """The baseline: every bar of the same layout as its own Rectangle patch."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from maeltrace.tools.plots import DPI, flame_layout, key_colour

    layout = flame_layout(trace)
    fig = Figure(figsize=(10, 2.2), dpi=DPI)
    ax = fig.add_subplot()
    for bar in layout.bars:
        ax.add_patch(
            Rectangle(
                (bar.start_ms, -bar.row - 1),
                bar.end_ms - bar.start_ms,
                0.9,
                color=key_colour(bar.key),
            )
        )
    ax.set_xlim(0, layout.epoch_ms)
    ax.set_ylim(-(layout.cpu_rows + layout.gpu_rows) - 1, 0)
    fig.savefig(io.BytesIO(), format="png", dpi=DPI)


def main(argv: Sequence[str] | None = None) -> int:
    args = _common.parser(__doc__, "500 batches an epoch, 2 rounds")
    args.add_argument("--epochs", type=int, default=3)
    args.add_argument("--batches", type=int)
    args.add_argument("--rounds", type=int)
    _common.add_json(args)
    opts = args.parse_args(argv)
    batches = _common.pick(opts.batches, opts.quick, 500, 2500)
    rounds = _common.pick(opts.rounds, opts.quick, 2, 3)

    from maeltrace.tools.plots import flame_chart, flame_layout

    with tempfile.TemporaryDirectory(prefix="maeltrace-bench-report-") as tmp:
        folder = Path(tmp)
        trace = _trace(folder / "run", opts.epochs, batches)
        regions = flame_layout(trace).bars
        ours: list[float] = []
        naive: list[float] = []
        for round_no in range(rounds):
            for name in _common.rotated(["ours", "naive"], round_no):
                started = perf_counter_ns()
                if name == "ours":
                    flame_chart(trace, folder / "flame.png", title="benchmark")
                    ours.append(_common.seconds_since(started))
                else:
                    _patches(trace)
                    naive.append(_common.seconds_since(started))
    ratios = _common.same_round_ratios(ours, naive)
    print("maeltrace report: seconds to draw one epoch's flame chart")
    print(
        _common.header_line(
            {
                "bars": len(regions),
                "rounds": rounds,
                "load": _common.load(),
                **_common.environment("matplotlib"),
            }
        )
    )
    print()
    print(
        _common.table(
            ["drawing", "median s", "x baseline"],
            [
                [
                    "flame_chart (one PolyCollection)",
                    f"{statistics.median(ours):.3f}",
                    f"{statistics.median(ratios):.2f}",
                ],
                [
                    "baseline: one Rectangle patch per bar",
                    f"{statistics.median(naive):.3f}",
                    "1.00",
                ],
            ],
        )
    )
    _common.write_json(
        opts.json,
        {"bars": len(regions), "flame_chart_s": ours, "patches_s": naive, "ratios": ratios},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
