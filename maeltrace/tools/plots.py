"""Plots of a run for the bench report: one epoch as a flame chart, and duration histograms.

Only the report code (`maeltrace.tools.benchreport`) imports this module, so ``import maeltrace``
stays free of matplotlib and numpy. Figures are drawn on matplotlib's Agg canvas directly, without
``pyplot``: no global state, no backend switch in the caller's process, and the same input
gives byte-identical PNG files (the ``Software`` tag, the only varying metadata, is left out).
"""

# Over 600 lines: two plots with their layout code (the flame chart's rows, the histograms'
# bins); next split: one module per plot.

from __future__ import annotations

import io
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
except ImportError as exc:  # pragma: no cover - the report extra is installed in development
    raise ImportError(
        f"the report's plots need matplotlib and numpy: pip install 'maeltrace[report]' ({exc})"
    ) from exc

from maeltrace._files import atomic_write_bytes
from maeltrace._validate import Checker, at, check_acyclic
from maeltrace.keys import TimeType
from maeltrace.report import LATEST_UNIX_NS, MAX_DURATION_NS, MAX_NAME, Row

MAX_TRACE_BYTES = 512 * 2**20
"""The largest ``trace.json`` read (the trace budget keeps real ones far smaller)."""

MAX_TRACE_EVENTS = 20_000_000
"""Most events a ``trace.json`` may hold."""

MAX_TS_US = LATEST_UNIX_NS / 1000
"""Latest event start read, in µs: the year 2200 as a Unix time, so no start overflows."""

MAX_DUR_US = MAX_DURATION_NS / 1000
"""Longest event read, in µs (`MAX_DURATION_NS`)."""

__all__ = [
    "MAX_TRACE_BYTES",
    "FlameBar",
    "FlameChart",
    "Png",
    "check_trace",
    "distribution_plot",
    "draw_flame",
    "flame_chart",
    "flame_layout",
    "format_ms",
    "key_colour",
    "pick_epoch",
]

DPI = 100
"""Dots per inch of every PNG: a 10-inch flame chart is 1000 pixels wide."""

_KEY_COLOURS: Mapping[str, str] = {
    TimeType.EPOCH: "#9aa5b1",
    TimeType.BATCH: "#4e79a7",
    TimeType.FORWARD: "#59a14f",
    TimeType.BACKWARD: "#e15759",
    TimeType.IO: "#f28e2b",
    TimeType.COMM: "#b07aa1",
    TimeType.OTHER: "#bab0ac",
}
_PALETTE = (
    "#76b7b2",
    "#edc948",
    "#ff9da7",
    "#9c755f",
    "#8cd17d",
    "#d37295",
    "#a0cbe8",
    "#b6992d",
    "#499894",
    "#d4a6c8",
    "#86bcb6",
    "#fabfd2",
)

_MAX_LABELS = 400
"""Most bar labels in one flame chart; beyond it the legend names the colours."""


def key_colour(key: str) -> str:
    """The colour of a region key in every chart: fixed for the seed's keys, and for any other
    key one of a palette chosen by a checksum of its name (stable across runs and machines)."""
    fixed = _KEY_COLOURS.get(key)
    if fixed is not None:
        return fixed
    return _PALETTE[zlib.crc32(key.encode("utf-8")) % len(_PALETTE)]


@dataclass(frozen=True, slots=True)
class Png:
    """A PNG file drawn.

    Attributes:
        path: the file.
        width_px: its width in pixels, as drawn (the figure's size times `DPI`).
        height_px: its height in pixels.
    """

    path: Path
    width_px: int
    height_px: int


# -- the flame chart ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Event:
    """A complete event of the Chrome trace, in µs."""

    key: str
    gpu: bool
    start_us: float
    dur_us: float
    seq: int | None
    parent: int | None
    trace: int | None

    @property
    def end_us(self) -> float:
        return self.start_us + self.dur_us


@dataclass(frozen=True, slots=True)
class FlameBar:
    """One bar of a flame chart.

    Attributes:
        key: the region key.
        gpu: a device interval (on a GPU lane) rather than a CPU region.
        start_ms: its start, in ms from the start of the part shown.
        end_ms: its end, likewise.
        row: its row, 0 at the top: CPU rows first, then GPU rows.
    """

    key: str
    gpu: bool
    start_ms: float
    end_ms: float
    row: int


@dataclass(frozen=True, slots=True)
class FlameChart:
    """One epoch of a trace laid out as a flame chart (`flame_layout`), as `flame_chart` draws
    it.

    Attributes:
        caption: which part of the run it shows, as the chart's title says: ``epoch 3 of 5
            (median)``, ``epoch 1 of 1``, or ``whole run`` when the trace has no epochs.
        epoch: the 1-based ordinal of the epoch shown (by start time); 0 for the whole run.
        epochs: epochs in the trace.
        epoch_ms: the duration of the part shown, in ms.
        bars: the regions and device intervals, CPU ones first.
        cpu_rows: rows of CPU regions (nesting depths, plus a lane per overlap).
        gpu_rows: rows of device intervals below them.
    """

    caption: str
    epoch: int
    epochs: int
    epoch_ms: float
    bars: tuple[FlameBar, ...] = field(repr=False)
    cpu_rows: int
    gpu_rows: int

    @property
    def cpu_regions(self) -> int:
        """CPU regions drawn."""
        return sum(not bar.gpu for bar in self.bars)

    @property
    def gpu_regions(self) -> int:
        """Device intervals drawn."""
        return sum(bar.gpu for bar in self.bars)


def check_trace(trace: Any, source: str) -> list[Any]:
    """The ``traceEvents`` of a Chrome trace: ``trace`` must be an object holding a list of
    at most `MAX_TRACE_EVENTS` events.

    Raises:
        FormatError: it is not; the message names ``source``.
    """
    check = Checker(source)
    if not isinstance(trace, Mapping) or not isinstance(trace.get("traceEvents"), list):
        check.fail("", "not a Chrome trace: no traceEvents list")
    return check.list(trace["traceEvents"], "traceEvents", max_items=MAX_TRACE_EVENTS)


def _events(trace: Any, source: str = "trace") -> list[_Event]:
    """The complete events of ``cat`` cpu and gpu, validated, in start order (the longer first
    where two start together, so a parent precedes the child that starts with it): the order
    every caller needs, so it is sorted here once.

    Checked: each event an object; those drawn with a key string, ``ts`` and ``dur`` finite,
    not negative and in range (so no time overflows a plot), ``seq``, ``parent_seq`` and
    ``trace`` whole numbers. `flame_layout` checks the ``parent_seq`` links it follows for
    cycles.

    Raises:
        FormatError: the trace has no ``traceEvents`` list, or an event is malformed; the
            message names ``source`` and the event.
    """
    check = Checker(source)
    out = []
    for index, event in enumerate(check_trace(trace, source)):
        where = at("traceEvents", index)
        event = check.object(event, where)
        if event.get("ph") != "X" or event.get("cat") not in ("cpu", "gpu"):
            continue
        args = event.get("args")
        args = args if isinstance(args, Mapping) else {}
        ts = check.number(check.field(event, "ts", where), at(where, "ts"), maximum=MAX_TS_US)
        dur = check.number(check.field(event, "dur", where), at(where, "dur"), maximum=MAX_DUR_US)
        key = args.get("key", event.get("name"))
        key = check.string(key, at(where, "args.key"), max_length=MAX_NAME)
        out.append(
            _Event(
                key=key,
                gpu=event["cat"] == "gpu",
                start_us=ts,
                dur_us=dur,
                seq=_optional_int(check, args.get("seq"), at(where, "args.seq")),
                parent=_optional_int(check, args.get("parent_seq"), at(where, "args.parent_seq")),
                trace=_optional_int(check, args.get("trace"), at(where, "args.trace")),
            )
        )
    out.sort(key=lambda e: (e.start_us, -e.dur_us))
    return out


def _optional_int(check: Checker, value: object, where: str) -> int | None:
    if value is None:
        return None
    return check.integer(value, where, minimum=None, maximum=2**63)


def _epochs(cpu: Sequence[_Event]) -> tuple[str, list[_Event]]:
    """The regions that split the run into epochs, in start order, and what they are called.

    Regions of the ``epoch`` key; where there are none, the first region of each trace ordinal
    (the timer's ``trace_key`` region that started it); else none. ``cpu`` is in start order
    (`_events`).
    """
    epochs = [e for e in cpu if e.key == TimeType.EPOCH]
    if epochs:
        return "epoch", epochs
    first: dict[int, _Event] = {}
    for event in cpu:
        if event.trace is not None and event.trace not in first:
            first[event.trace] = event
    if first:
        starts = list(first.values())
        return starts[0].key, starts
    return "", []


def pick_epoch(durations: Sequence[float]) -> int:
    """The index of the epoch to show: the one of median duration among those after the first
    (the first carries one-off start-up work), the lower of the two middle ones for an even
    count; the only one when there is one.

    Raises:
        ValueError: ``durations`` is empty.
    """
    if not durations:
        raise ValueError("no epochs to pick from")
    if len(durations) == 1:
        return 0
    later = sorted(range(1, len(durations)), key=lambda i: (durations[i], i))
    return later[(len(later) - 1) // 2]


def _depths(members: Sequence[_Event], parent_of: Mapping[int, int | None]) -> list[int]:
    """Nesting depth of each member: the number of its ancestors (by ``parent_seq``) among the
    members."""
    inside = {e.seq for e in members if e.seq is not None}
    memo: dict[int, int] = {}

    def depth(seq: int | None) -> int:
        # Iterative: a deep chain of nested regions must not hit the recursion limit.
        chain = []
        while seq is not None and seq not in memo:
            chain.append(seq)
            parent = parent_of.get(seq)
            while parent is not None and parent not in inside:
                parent = parent_of.get(parent)
            seq = parent
        base = memo[seq] if seq is not None else -1
        for link in reversed(chain):
            base += 1
            memo[link] = base
        return base

    out = []
    for event in members:
        if event.seq is None:
            out.append(0)
            continue
        parent = parent_of.get(event.seq)
        while parent is not None and parent not in inside:
            parent = parent_of.get(parent)
        out.append(0 if parent is None else depth(parent) + 1)
    return out


def _rows(members: Sequence[_Event], depths: Sequence[int]) -> tuple[list[int], int]:
    """A row for each member: by depth, and within a depth the first lane where it overlaps
    nothing (regions that overlap without nesting get a lane of their own, never drawn over
    another). ``members`` are in start order (`_events`). Returns the rows and their number."""
    by_depth: dict[int, list[int]] = {}
    for index, depth in enumerate(depths):
        by_depth.setdefault(depth, []).append(index)
    rows = [0] * len(members)
    next_row = 0
    for depth in sorted(by_depth):
        lane_ends: list[float] = []
        for index in by_depth[depth]:
            event = members[index]
            for lane, end in enumerate(lane_ends):
                if end <= event.start_us:
                    lane_ends[lane] = event.end_us
                    break
            else:
                lane = len(lane_ends)
                lane_ends.append(event.end_us)
            rows[index] = next_row + lane
        next_row += len(lane_ends)
    return rows, next_row


def flame_layout(trace: Mapping[str, Any], *, source: str = "trace") -> FlameChart:
    """Lays out one epoch of a Chrome trace (``trace.json``) as a flame chart, without drawing.

    The epoch is the one of median duration among those after the first (`pick_epoch`); a
    trace without ``epoch`` regions uses the regions that started its traces (the timer's
    ``trace_key``), and one without either shows the whole run. The epoch's regions (by
    ``parent_seq``) take rows by nesting depth; within a depth, a region that overlaps another
    without nesting (``start("batch"); start("io"); end("batch"); end("io")``) takes a lane of
    its own, so no bar lies on another. The device intervals of those regions follow on GPU
    rows, laid out alike. Regions of other threads, which have no parent in the epoch, are
    left out.

    Args:
        trace: the parsed trace.
        source: how error messages name it (``runs/x/trace.json``).

    Raises:
        FormatError: the trace is malformed (`_events`); the message names ``source``.
        ValueError: it holds no CPU region.
    """
    events = _events(trace, source)
    cpu = [e for e in events if not e.gpu]
    if not cpu:
        raise ValueError("the trace holds no CPU region to draw")
    parent_of = {e.seq: e.parent for e in cpu if e.seq is not None}
    # A region its own ancestor would keep the depth walk going up forever.
    check_acyclic(parent_of, source, "traceEvents: args.parent_seq")
    name, epochs = _epochs(cpu)
    if epochs:
        chosen = pick_epoch([e.dur_us for e in epochs])
        epoch = epochs[chosen]
        caption = f"{name} {chosen + 1} of {len(epochs)}"
        if len(epochs) > 1:
            caption += " (median)"
        members = _descendants(epoch, cpu)
        origin_us, span_us = epoch.start_us, epoch.dur_us
    else:
        chosen = -1
        caption = "whole run"
        members = cpu
        origin_us = members[0].start_us
        span_us = max(e.end_us for e in members) - origin_us
    seqs = {e.seq for e in members if e.seq is not None}
    gpu = [e for e in events if e.gpu and e.seq in seqs]
    cpu_rows, cpu_count = _rows(members, _depths(members, parent_of))
    gpu_rows, gpu_count = _rows(gpu, _depths(gpu, parent_of))
    placed = [*zip(members, cpu_rows, strict=True)]
    placed += [(e, cpu_count + row) for e, row in zip(gpu, gpu_rows, strict=True)]
    bars = tuple(
        FlameBar(
            key=e.key,
            gpu=e.gpu,
            start_ms=(e.start_us - origin_us) / 1000,
            end_ms=(e.end_us - origin_us) / 1000,
            row=row,
        )
        for e, row in placed
    )
    return FlameChart(
        caption=caption,
        epoch=chosen + 1,
        epochs=len(epochs),
        epoch_ms=span_us / 1000,
        bars=bars,
        cpu_rows=cpu_count,
        gpu_rows=gpu_count,
    )


def flame_chart(
    trace: Mapping[str, Any], path: str | os.PathLike[str], *, title: str
) -> FlameChart:
    """Draws one epoch of a Chrome trace (``trace.json``) as a flame chart into a PNG.

    The chart is an icicle, as Perfetto and Jaeger draw one: the epoch on top, its regions
    below it by nesting depth, and the device intervals of those regions on GPU lanes
    underneath (`flame_layout` says which epoch and how rows are assigned). The x axis is ms
    from the epoch's start; each key has its colour (`key_colour`), named in the legend, and
    bars wide enough carry their key. Bars are one polygon collection, so an epoch of
    thousands of batches draws in about a second.

    Args:
        trace: the trace, as `maeltrace._chrome.chrome_trace` returns it or ``trace.json``
            holds it.
        path: the PNG to write.
        title: the chart's title; the caption of the part shown is added to it.

    Returns:
        The layout drawn (its caption says which epoch).

    Raises:
        ValueError: the trace is malformed or holds no CPU region.
    """
    layout = flame_layout(trace)
    draw_flame(layout, path, title=title)
    return layout


def draw_flame(layout: FlameChart, path: str | os.PathLike[str], *, title: str) -> Png:
    """Draws a flame chart that `flame_layout` laid out into a PNG, as `flame_chart` does.

    Args:
        layout: the chart.
        path: the PNG to write.
        title: the chart's title; the caption of the part shown is added to it.

    Returns:
        The PNG written, with its size in pixels.
    """
    bars = layout.bars
    cpu_count, total_rows = layout.cpu_rows, layout.cpu_rows + layout.gpu_rows
    width_in = 10.0
    # Fixed margins in inches (title; axis label and legend; track names): a layout engine
    # would take longer than the drawing.
    top_in, bottom_in, left_in, right_in = 0.35, 0.8, 0.55, 0.2
    height_in = top_in + bottom_in + min(0.3 * max(total_rows, 2), 11.0)
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    fig.subplots_adjust(
        left=left_in / width_in,
        right=1 - right_in / width_in,
        bottom=bottom_in / height_in,
        top=1 - top_in / height_in,
    )
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    starts_ms = [bar.start_ms for bar in bars]
    ends_ms = [bar.end_ms for bar in bars]
    x_lo, x_hi = min(0.0, *starts_ms), max(layout.epoch_ms, *ends_ms)
    if x_hi <= x_lo:
        x_hi = x_lo + 1e-3
    pad = (x_hi - x_lo) * 0.01
    height = 0.86
    axes_px = (width_in - left_in - right_in) * DPI
    px_per_ms = axes_px / (x_hi - x_lo + 2 * pad)
    # At least a pixel wide, as Perfetto draws them: a 1 µs IO wait must still show.
    min_ms = 1.5 / px_per_ms
    verts = [
        (
            (x0, row - height / 2),
            (x0, row + height / 2),
            (max(x1, x0 + min_ms), row + height / 2),
            (max(x1, x0 + min_ms), row - height / 2),
        )
        for row, x0, x1 in ((bar.row, bar.start_ms, bar.end_ms) for bar in bars)
    ]
    colours = [key_colour(bar.key) for bar in bars]
    # A white edge separates neighbours, but would cover a bar only a few pixels wide.
    edges = [
        "white" if (x1 - x0) * px_per_ms >= 4 else "none"
        for x0, x1 in zip(starts_ms, ends_ms, strict=True)
    ]
    ax.add_collection(PolyCollection(verts, facecolors=colours, edgecolors=edges, linewidths=0.6))
    ax.set_xlim(x_lo - pad, x_hi + pad)
    ax.set_ylim(total_rows - 0.5, -0.5)

    # Labels: the key (and its duration where it fits) inside bars wide enough to hold it.
    char_px = 5.6
    labelled = 0
    order = sorted(range(len(bars)), key=lambda i: -(ends_ms[i] - starts_ms[i]))
    for i in order:
        if labelled >= _MAX_LABELS:
            break
        bar = bars[i]
        width_px = (ends_ms[i] - starts_ms[i]) * px_per_ms
        long = f"{bar.key} {format_ms(ends_ms[i] - starts_ms[i])}"
        text = long if len(long) * char_px + 6 <= width_px else bar.key
        if len(text) * char_px + 6 > width_px:
            continue
        ax.text(
            (starts_ms[i] + ends_ms[i]) / 2,
            bar.row,
            text,
            ha="center",
            va="center",
            fontsize=7,
            color=_text_colour(colours[i]),
            clip_on=True,
        )
        labelled += 1

    ticks, tick_labels = [], []
    if cpu_count:
        ticks.append(0)
        tick_labels.append("CPU")
    if layout.gpu_rows:
        ticks.append(cpu_count)
        tick_labels.append("GPU")
        ax.axhline(cpu_count - 0.5, color="#555555", linewidth=0.8)
    ax.set_yticks(ticks, tick_labels)
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel(f"ms from the {'run' if layout.epoch == 0 else 'epoch'}'s start")
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(
        f"{title}: {layout.caption}, {format_ms(layout.epoch_ms)}", fontsize=10, loc="left"
    )

    keys = list(dict.fromkeys(bar.key for bar in bars))
    fig.legend(
        handles=[Patch(facecolor=key_colour(k), label=k) for k in keys],
        loc="lower center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(len(keys), 8),
        fontsize=7,
        frameon=False,
    )
    return _save(fig, path)


def _descendants(root: _Event, cpu: Sequence[_Event]) -> list[_Event]:
    """``root`` and every region nested in it (by ``parent_seq``), in the order of ``cpu``
    (start order, `_events`)."""
    if root.seq is None:
        return [root]
    children: dict[int, list[_Event]] = {}
    for event in cpu:
        if event.parent is not None:
            children.setdefault(event.parent, []).append(event)
    # By identity: two regions with equal fields are still two bars. A region already in is not
    # followed again, so parent_seq links that loop cannot keep this going.
    inside = {id(root)}
    frontier = [root.seq]
    while frontier:
        seq = frontier.pop()
        for child in children.get(seq, ()):
            if id(child) in inside:
                continue
            inside.add(id(child))
            if child.seq is not None:
                frontier.append(child.seq)
    return [e for e in cpu if id(e) in inside]


def format_ms(value_ms: float) -> str:
    """A duration in ms with three significant digits, in s, ms or µs by its size."""
    if value_ms >= 1000:
        return f"{value_ms / 1000:.3g} s"
    if value_ms >= 1:
        return f"{value_ms:.3g} ms"
    return f"{value_ms * 1000:.3g} µs"


def _text_colour(colour: str) -> str:
    r, g, b = to_rgb(colour)
    return "#111111" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "#ffffff"


# -- the distributions -------------------------------------------------------------------------


_UNITS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))


def distribution_plot(
    rows: Sequence[Row], path: str | os.PathLike[str], *, title: str, warmup: int = 0
) -> Png:
    """Draws the durations of one region key (its CPU row, and its GPU row if any, overlaid) as
    a histogram into a PNG, with each row's median (solid line) and p95 (dashed) marked and its
    sample count in the legend.

    The first ``warmup`` samples of each row are left out of the histogram (and of the median
    and p95, which are then the steady-state ones of the table); they are drawn apart, as ticks
    along the x axis, and the legend says how many. A row whose samples are all warm-up shows
    them all. The x axis is logarithmic when the largest sample is over 30 times the smallest.

    Args:
        rows: the rows of one key, from `maeltrace.report.Summary` (``samples_ns`` filled).
        path: the PNG to write.
        title: the plot's title.
        warmup: samples at the start of each row to set apart.

    Returns:
        The PNG written, with its size in pixels.

    Raises:
        ValueError: no row, or a row without samples.
    """
    if not rows:
        raise ValueError("no rows to plot")
    sets = []
    for row in rows:
        if not row.samples_ns:
            raise ValueError(f"row {row.label!r} has no samples (stats.json without samples_ns)")
        skip = warmup if len(row.samples_ns) > warmup else 0
        stats = row.steady if skip and row.steady is not None else row.stats
        row_steady_s = np.asarray(row.samples_ns[skip:], dtype=np.float64) / 1e9
        sets.append((row, row.samples_ns[:skip], row_steady_s, stats))

    steady_s = np.concatenate([row_steady_s for _, _, row_steady_s, _ in sets])
    scale, unit = next(((f, u) for f, u in _UNITS if float(np.median(steady_s)) >= f), _UNITS[-1])
    values = steady_s / scale
    lo, hi = float(values.min()), float(values.max())
    log = lo > 0 and hi / lo > 30
    # Enough bins to resolve a row's spread when a slower row shares the axis.
    bins_n = int(min(80, max(24, 2 * math.sqrt(len(values)))))
    if log:
        edges = np.geomspace(lo, hi, bins_n + 1)
    else:
        if hi - lo <= 0:
            spread = abs(lo) * 0.02 or 1.0
            lo, hi = lo - spread, hi + spread
        edges = np.linspace(lo, hi, bins_n + 1)

    bin_edges = [float(x) for x in edges]
    fig = Figure(figsize=(5.0, 3.2), dpi=DPI)
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.15, top=0.9)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    warm_xs: list[float] = []
    for row, warm, row_steady_s, stats in sets:
        colour = to_rgb(key_colour(str(row.key)))
        data = row_steady_s / scale
        label = f"{row.label}, n={len(row_steady_s)}"
        if row.device:
            colour = _darker(colour)
            ax.hist(data, bins=bin_edges, histtype="step", linewidth=1.6, color=colour, label=label)
        else:
            ax.hist(data, bins=bin_edges, color=colour, alpha=0.6, label=label)
        ax.axvline(
            stats.median / scale,
            color=colour,
            linewidth=1.4,
            label=f"median {_format_s(stats.median)}",
        )
        ax.axvline(
            stats.p95 / scale,
            color=colour,
            linewidth=1.2,
            linestyle="--",
            label=f"p95 {_format_s(stats.p95)}",
        )
        warm_xs.extend(ns / 1e9 / scale for ns in warm)
    if warm_xs:
        shown = [x for x in warm_xs if edges[0] <= x <= edges[-1]]
        label = f"warm-up, n={len(warm_xs)}, not in the histogram"
        if len(shown) < len(warm_xs):
            label += f" ({len(warm_xs) - len(shown)} off the axis)"
        ax.plot(
            shown,
            [0.0] * len(shown),
            linestyle="none",
            marker="|",
            markersize=12,
            color="#222222",
            label=label,
            clip_on=False,
        )
    if log:
        ax.set_xscale("log")
    ax.set_xlim(float(edges[0]), float(edges[-1]))
    ax.set_xlabel(f"duration [{unit}]")
    ax.set_ylabel("regions")
    ax.set_title(title, fontsize=10, loc="left")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=7, frameon=False, loc="best")
    return _save(fig, path)


def _format_s(value_s: float) -> str:
    return format_ms(value_s * 1000) if value_s >= 1e-6 else f"{value_s * 1e9:.3g} ns"


def _darker(colour: tuple[float, float, float]) -> tuple[float, float, float]:
    r, g, b = colour
    return (r * 0.6, g * 0.6, b * 0.6)


def _save(fig: Figure, path: str | os.PathLike[str]) -> Png:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    # Saved at the figure's own dpi, so the canvas's size is the PNG's: both truncate the
    # figure's size times DPI to whole pixels.
    width_px, height_px = fig.canvas.get_width_height()
    # Atomic, so a report being rewritten never shows half an image.
    return Png(atomic_write_bytes(path, buffer.getvalue()), width_px, height_px)
