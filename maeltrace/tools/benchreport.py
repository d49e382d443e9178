"""The illustrated report of ``maeltrace bench`` (and of one run): report.md and report.html.

`write_report` reads a bench folder (``bench.json`` and one folder per app) or the folder of
one run (``stats.json``, ``trace.json``, and ``app.json`` when an app of ``apps/`` wrote it),
draws each app's flame chart and duration histograms into the app's folder (`maeltrace.tools.plots`)
and writes ``report.md`` and ``report.html`` beside ``bench.json``. The HTML page is one file:
inline CSS, no script, no network resource, images by relative path, so the folder can be
copied, zipped or served as it is.

This module imports matplotlib only inside `write_report`, so importing it stays cheap.
"""

# Over 600 lines: reading, drawing and two renderings (Markdown, HTML) of one report; next
# split: the two renderings into a module of their own.

from __future__ import annotations

import datetime as dt
import html
import os
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maeltrace._files import atomic_write_text
from maeltrace._redact import redact_text, redact_url
from maeltrace._validate import read_json
from maeltrace.errors import FormatError
from maeltrace.keys import TimeType, key_label
from maeltrace.report import (
    COLUMNS,
    Row,
    Summary,
    finite_number,
    format_seconds,
    markdown_cell,
    table_cells,
)
from maeltrace.stats import TimeStats
from maeltrace.tools.benchfiles import APP_SCHEMA, AppOutcome, read_app_info, read_bench

if TYPE_CHECKING:
    from maeltrace.tools.plots import FlameChart, Png

__all__ = ["ReportFiles", "write_report"]

LOG_TAIL_LINES = 30
"""Lines of a failed app's log that its section shows."""

PERFETTO = "https://ui.perfetto.dev"


@dataclass(frozen=True, slots=True)
class ReportFiles:
    """The files `write_report` wrote.

    Attributes:
        markdown: ``report.md``.
        html: ``report.html``.
        images: every PNG, in the apps' folders: ``flame.png`` and ``dist-<key>.png``.
    """

    markdown: Path
    html: Path
    images: tuple[Path, ...]


# -- what the report shows -------------------------------------------------------------------


@dataclass(slots=True)
class _Image:
    path: Path
    caption: str
    alt: str
    width_px: int
    height_px: int


@dataclass(slots=True)
class _App:
    """One app's section."""

    name: str
    folder: Path
    status: str
    returncode: int | None = None
    wall_s: float | None = None
    log: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    summary: Summary | None = None
    trace_path: Path | None = None
    layout: FlameChart | None = None
    """The flame chart of the trace, laid out when the trace was read; None: nothing to draw."""
    flame: _Image | None = None
    dists: list[_Image] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def anchor(self) -> str:
        return "app-" + _safe_name(self.name)


@dataclass(slots=True)
class _Report:
    title: str
    subtitle: str
    facts: list[tuple[str, str]]
    apps: list[_App]
    where: list[tuple[str, str, str | None]]
    """(label, text, link) lines of "where to look"."""
    root: Path


def write_report(folder: str | os.PathLike[str]) -> ReportFiles:
    """Writes ``report.md`` and ``report.html`` into a bench folder or a run folder.

    A bench folder holds ``bench.json`` (schema ``maeltrace.bench/1``) and the apps' folders it
    names; a run folder holds ``stats.json`` (and usually ``trace.json``, ``app.json``,
    ``log.txt``) and gets a one-app report. Each finished app gets a section with its seed-style
    table (and the steady-state one when warm-up is set), the flame chart of its median epoch
    (``flame.png``), a histogram per region key (``dist-<key>.png``), both written into the
    app's folder, and links to its files; a failed app gets the end of its log.

    Returns:
        The paths written.

    Raises:
        ValueError: the folder is neither a bench folder nor a run folder, or a file the
            report needs is missing or malformed; the message names it.
        ImportError: matplotlib or numpy is missing (``pip install 'maeltrace[report]'``).
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (a bench folder or a run folder expected)")
    if (root / "bench.json").is_file():
        report = _bench_report(root)
    elif (root / "stats.json").is_file():
        report = _run_report(root)
    else:
        raise ValueError(
            f"{root}: neither a bench folder (with bench.json) nor a run folder (with "
            "stats.json); expected the folder `maeltrace bench` or a Timer wrote"
        )

    images: list[Path] = []
    for app in report.apps:
        if app.ok:
            images += _draw(app)
    markdown = atomic_write_text(root / "report.md", _markdown(report))
    page = atomic_write_text(root / "report.html", _html(report))
    return ReportFiles(markdown=markdown, html=page, images=tuple(images))


# -- reading ---------------------------------------------------------------------------------


def _bench_report(root: Path) -> _Report:
    listed = read_bench(root)
    bench = listed.manifest
    apps = [_bench_app(root, outcome) for outcome in listed.apps]
    for app in apps:
        _load_app(app, bench=True)

    ok = sum(app.ok for app in apps)
    facts: list[tuple[str, str]] = []
    started = finite_number(bench.get("started_unix_s"))
    if started is not None:
        facts.append(("When", _when(started)))
    facts.append(("Where", str(bench.get("host") or "unknown host")))
    wall = finite_number(bench.get("wall_s"))
    facts.append(("Wall time", _duration(wall) if wall is not None else "not finished"))
    apps_text = f"{ok} of {len(apps)} ok"
    if ok < len(apps):
        apps_text += (
            f"; not ok: {', '.join(a.name + ' (' + a.status + ')' for a in apps if not a.ok)}"
        )
    facts.append(("Apps", apps_text))
    options = bench.get("options")
    if isinstance(options, dict) and options:
        facts.append(
            ("Options", ", ".join(f"{k} {v}" for k, v in options.items() if v is not None))
        )
    facts.append(
        (
            "Software",
            f"maeltrace {bench.get('maeltrace_version', '?')}, Python {bench.get('python', '?')}",
        )
    )
    argv = bench.get("argv")
    if isinstance(argv, list):
        facts.append(("Command", " ".join(["maeltrace", *(str(a) for a in argv)])))

    where: list[tuple[str, str, str | None]] = [
        ("This report", "report.html (report.md holds the same in Markdown)", "report.html")
    ]
    where += [
        (
            f"{app.name} trace",
            f"{_relative(app.trace_path, root)}: open it in {PERFETTO}",
            _relative(app.trace_path, root),
        )
        for app in apps
        if app.trace_path is not None
    ]
    endpoint = bench.get("otlp_endpoint")
    if isinstance(endpoint, str) and endpoint:
        endpoint = redact_url(endpoint)  # a bench.json of an older version may hold a password
        where.append(
            (
                "Jaeger",
                f"the spans went to the OTLP endpoint {endpoint}; in Jaeger's UI (port 16686 of "
                "its host by default) pick the app's name as the service",
                None,
            )
        )
    mlflow = bench.get("mlflow")
    if isinstance(mlflow, dict):
        uri = redact_url(str(mlflow.get("tracking_uri", "?")))
        text = (
            f"experiment {mlflow.get('experiment', '?')!s}, parent run "
            f"{mlflow.get('parent_run_id', '?')!s} at {uri}"
        )
        ui = mlflow.get("ui")
        if isinstance(ui, str) and ui:
            text += f"; open the UI with: {redact_text(ui)}"
        where.append(("MLflow", text, None))
    return _Report(
        title="maeltrace bench report",
        subtitle=str(bench.get("bench_id") or root.name),
        facts=facts,
        apps=apps,
        where=where,
        root=root,
    )


def _bench_app(root: Path, outcome: AppOutcome) -> _App:
    folder = root / outcome.folder
    return _App(
        name=outcome.name,
        folder=folder,
        status=outcome.status,
        returncode=outcome.returncode,
        wall_s=outcome.wall_s,
        log=root / outcome.log if outcome.log else folder / "log.txt",
    )


def _load_app(app: _App, *, bench: bool) -> None:
    """Reads an app's files: all of them for a finished app, the log's end for the others.

    An app of a bench folder (``bench``) must have written ``stats.json`` and ``trace.json``,
    and an ``app.json`` it wrote must be an app's; in a run folder only ``stats.json`` must
    exist: a Timer of the user's own script writes no ``app.json`` and, with export off, no
    ``trace.json``.
    """
    if app.log is not None and not app.log.is_file():
        app.log = None
    if not app.ok:
        if app.log is not None:
            lines = app.log.read_text(encoding="utf-8", errors="replace").splitlines()
            app.log_tail = lines[-LOG_TAIL_LINES:]
        return
    info_path = app.folder / "app.json"
    if info_path.is_file():
        app.info = read_app_info(info_path)
        if bench and app.info.get("schema") != APP_SCHEMA:
            raise ValueError(f"{info_path}: schema {APP_SCHEMA!r} expected")
        if bench and not isinstance(app.info.get("config", {}), dict):
            raise ValueError(f"{info_path}: 'config' must be an object")
    stats_path = app.folder / "stats.json"
    if not stats_path.is_file():
        raise ValueError(f"{stats_path}: missing (the app finished but wrote no statistics)")
    app.summary = Summary.load(stats_path)
    trace_path = app.folder / "trace.json"
    if trace_path.is_file():
        app.trace_path = trace_path
        app.layout = _layout(trace_path, app.summary)
    elif bench:
        raise ValueError(f"{trace_path}: missing (the app finished but wrote no trace)")


def _layout(path: Path, summary: Summary) -> FlameChart | None:
    """The flame chart of a ``trace.json``, laid out; None when the run recorded no region.

    Read and laid out before anything is drawn, so that a malformed trace stops the report
    with no file written; only the layout is kept, not the trace.
    """
    from maeltrace.tools import plots  # matplotlib: only once there is a trace to lay out

    source = str(path)
    trace = read_json(path, max_bytes=plots.MAX_TRACE_BYTES, source=source)
    if not summary.rows:  # no region, nothing to chart; the file must still be a trace
        plots.check_trace(trace, source)
        return None
    try:
        return plots.flame_layout(trace, source=source)
    except FormatError:  # names the file and the place already
        raise
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _run_report(root: Path) -> _Report:
    app = _App(name=root.name, folder=root, status="ok", log=root / "log.txt")
    _load_app(app, bench=False)
    assert app.summary is not None
    meta = app.summary.metadata
    if app.info.get("name"):
        app.name = str(app.info["name"])
    elif meta.get("run_id"):
        app.name = str(meta["run_id"])
    facts: list[tuple[str, str]] = []
    start = finite_number(meta.get("start_time_unix_nano"))
    if start is not None:
        facts.append(("When", _when(start / 1e9)))
    facts.append(("Where", str(meta.get("host") or "unknown host")))
    wall = finite_number(app.info.get("wall_s"))
    if wall is not None:
        facts.append(("Wall time", _duration(wall)))
        app.wall_s = wall
    if meta.get("run_id"):
        facts.append(("Run id", str(meta["run_id"])))
    versions = meta.get("versions")
    if isinstance(versions, dict) and versions:
        facts.append(("Software", ", ".join(f"{k} {v}" for k, v in versions.items())))
    where: list[tuple[str, str, str | None]] = [
        ("This report", "report.html (report.md holds the same in Markdown)", "report.html")
    ]
    if app.trace_path is not None:
        where.append(("Trace", f"trace.json: open it in {PERFETTO}", "trace.json"))
    if (root / "traces.otlp.jsonl").is_file():
        where.append(
            (
                "Spans",
                "traces.otlp.jsonl: send them to Jaeger or any OTLP endpoint with "
                "`maeltrace replay traces.otlp.jsonl --endpoint URL`",
                "traces.otlp.jsonl",
            )
        )
    return _Report(
        title="maeltrace run report",
        subtitle=app.name,
        facts=facts,
        apps=[app],
        where=where,
        root=root,
    )


# -- drawing ---------------------------------------------------------------------------------


def _draw(app: _App) -> list[Path]:
    """Draws an app's flame chart and histograms into its folder."""
    from maeltrace.tools import plots  # matplotlib: only once there is something to draw

    assert app.summary is not None
    written: list[Path] = []
    layout = app.layout
    if layout is not None:
        png = plots.draw_flame(layout, app.folder / "flame.png", title=app.name)
        caption = (
            f"Flame chart, {layout.caption}: {plots.format_ms(layout.epoch_ms)}, "
            f"{layout.cpu_regions} CPU"
        )
        caption += (
            f" regions, {layout.gpu_regions} GPU intervals." if layout.gpu_regions else " regions."
        )
        if layout.epochs > 1:
            caption += " The epoch shown is the one of median duration after the first."
        app.flame = _image(png, caption, f"flame chart of {app.name}, {layout.caption}")
        written.append(png.path)

    warmup = app.summary.warmup
    by_key: dict[str, list[Row]] = {}
    for row in app.summary.rows:
        if not row.compiled and row.samples_ns:
            by_key.setdefault(str(row.key), []).append(row)
    names = _file_names(list(by_key))
    for key, rows in by_key.items():
        path = app.folder / f"dist-{names[key]}.png"
        label = key_label(rows[0].key)
        png = plots.distribution_plot(rows, path, title=f"{label}: {app.name}", warmup=warmup)
        n = sum(len(r.samples_ns) for r in rows)
        caption = f"{label}: " + ", ".join(f"{_clock_name(r)} n={len(r.samples_ns)}" for r in rows)
        if warmup:
            caption += f"; warm-up (the first {warmup} of each) as ticks, not in the histogram"
        app.dists.append(_image(png, caption, f"histogram of {label} durations, {n} samples"))
        written.append(png.path)
    return written


def _clock_name(row: Row) -> str:
    return "GPU" if row.device else "CPU"


def _image(png: Png, caption: str, alt: str) -> _Image:
    return _Image(png.path, caption, alt, width_px=png.width_px, height_px=png.height_px)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _safe_name(key: str) -> str:
    """A file-name-safe form of a key: other characters become ``_``."""
    return _UNSAFE.sub("_", key).strip("._") or "key"


def _file_names(keys: Sequence[str]) -> dict[str, str]:
    """A distinct safe name for each key; keys that would share one get a checksum suffix."""
    plain: dict[str, list[str]] = {}
    for key in keys:
        plain.setdefault(_safe_name(key), []).append(key)
    out = {}
    for safe, group in plain.items():
        for key in group:
            out[key] = safe if len(group) == 1 else f"{safe}-{zlib.crc32(key.encode()):08x}"
    return out


# -- text helpers ----------------------------------------------------------------------------


def _when(unix_s: float) -> str:
    moment = dt.datetime.fromtimestamp(unix_s, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    if seconds >= 120:
        minutes, rest = divmod(seconds, 60)
        return f"{int(minutes)} min {rest:.0f} s"
    return f"{seconds:.1f} s"


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _config_line(app: _App) -> str:
    """The app's configuration in one line."""
    config = app.info.get("config")
    parts = []
    if isinstance(config, dict):
        if "size" in config:
            parts.append(f"size {config['size']}")
        if {"epochs", "batches", "batch_size"} <= config.keys():
            parts.append(
                f"{config['epochs']} epochs of {config['batches']} batches of "
                f"{config['batch_size']}"
            )
        parts += [
            f"{name} {config[name]}"
            for name in ("scale", "device", "seed", "workers")
            if name in config
        ]
    if app.summary is not None:
        parts.append(f"warm-up {app.summary.warmup}")
    return " · ".join(parts)


def _status_line(app: _App) -> str:
    parts = [app.status]
    if app.returncode not in (None, 0):
        parts.append(f"exit status {app.returncode}")
    if app.wall_s is not None:
        parts.append(f"wall time {_duration(app.wall_s)}")
    train = finite_number(app.info.get("wall_s"))
    if train is not None and app.wall_s is not None and app.wall_s != train:
        parts.append(f"training {_duration(train)}")
    parts += _count_checks(app)
    return " · ".join(parts)


def _count_checks(app: _App) -> list[str]:
    """How many epochs and batches were recorded against what the app expected."""
    expected = app.info.get("expected")
    if not isinstance(expected, dict) or app.summary is None:
        return []
    out = []
    for key in (TimeType.EPOCH, TimeType.BATCH):
        want = expected.get(str(key))
        if not isinstance(want, int):
            continue
        got = sum(
            row.stats.count
            for row in app.summary.rows
            if row.key == key and not row.device and not row.compiled
        )
        plural = "epochs" if key == TimeType.EPOCH else "batches"
        if got == want:
            out.append(f"{got} {plural} recorded")
        else:
            out.append(f"{got} {plural} recorded, {want} expected")
    return out


def _heading(app: _App) -> str:
    title = app.info.get("title")
    framework = app.info.get("framework")
    version = app.info.get("framework_version")
    text = app.name
    if isinstance(title, str) and title:
        text += f": {title}"
    if isinstance(framework, str) and framework:
        text += f" ({framework}{' ' + str(version) if version else ''})"
    return text


def _median_of(summary: Summary | None, key: TimeType) -> str:
    if summary is None:
        return "-"
    for row in summary.rows:
        if row.key == key and not row.device and not row.compiled:
            stats = row.steady or row.stats
            return format_seconds(stats.median)
    return "-"


def _files(app: _App, root: Path) -> list[tuple[str, str]]:
    """(name, relative link) of an app's files that exist."""
    names = ("stats.json", "stats.md", "stats.csv", "trace.json", "app.json")
    out = [(n, _relative(app.folder / n, root)) for n in names if (app.folder / n).is_file()]
    if app.log is not None:
        out.append(("log.txt", _relative(app.log, root)))
    return out


# -- Markdown --------------------------------------------------------------------------------


def _md(text: str) -> str:
    return markdown_cell(text, all_punctuation=True)


def _fence(lines: Iterable[str]) -> str:
    body = "\n".join(lines)
    ticks = "```"
    while ticks in body:
        ticks += "`"
    return f"{ticks}text\n{body}\n{ticks}\n"


def _markdown(report: _Report) -> str:
    root = report.root
    out = [f"# {_md(report.title)}: {_md(report.subtitle)}\n\n"]
    out += [f"- **{_md(label)}:** {_md(text)}\n" for label, text in report.facts]
    out.append("\n## Where to look\n\n")
    for label, text, link in report.where:
        shown = f"[{_md(text)}]({link})" if link else _md(text)
        out.append(f"- **{_md(label)}:** {shown}\n")
    out.append("\n## Apps\n\n")
    out.append("| App | Framework | Status | Wall [s] | Epoch median [s] | Batch median [s] |\n")
    out.append("|-----|-----------|--------|---------:|-----------------:|-----------------:|\n")
    for app in report.apps:
        wall = f"{app.wall_s:.1f}" if app.wall_s is not None else "-"
        out.append(
            f"| [{_md(app.name)}](#{app.anchor}) | {_md(str(app.info.get('framework') or '-'))} "
            f"| {app.status} | {wall} | {_median_of(app.summary, TimeType.EPOCH)} "
            f"| {_median_of(app.summary, TimeType.BATCH)} |\n"
        )
    for app in report.apps:
        out.append(f'\n<a id="{app.anchor}"></a>\n\n## {_md(_heading(app))}\n\n')
        config = _config_line(app)
        if config:
            out.append(f"Configuration: {_md(config)}\n\n")
        out.append(f"Status: {_md(_status_line(app))}\n\n")
        if not app.ok or app.summary is None:
            out.append(f"**The app did not finish ({app.status}).** ")
            if app.log is not None:
                out.append(f"The end of its log, [{_relative(app.log, root)}]")
                out.append(f"({_relative(app.log, root)}):\n\n")
                out.append(_fence(app.log_tail or ["(the log is empty)"]))
            else:
                out.append("It left no log.\n")
            continue
        if not app.summary.rows:
            out.append("No region was recorded.\n")
        out.append(app.summary.to_markdown())
        if app.flame is not None:
            out.append(_md_image(app.flame, root))
        if app.dists:
            out.append("\n### Distributions\n")
            for image in app.dists:
                out.append(_md_image(image, root))
        links = []
        for name, link in _files(app, root):
            entry = f"[{name}]({link})"
            if name == "trace.json":
                entry += f" (open in {PERFETTO})"
            links.append(entry)
        out.append("\nFiles: " + " · ".join(links) + "\n")
    return "".join(out)


def _md_image(image: _Image, root: Path) -> str:
    return f"\n![{_md(image.alt)}]({_relative(image.path, root)})\n\n*{_md(image.caption)}*\n"


# -- HTML ------------------------------------------------------------------------------------

_CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da;
  --ok: #1a7f37; --bad: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 2rem 1.25rem 4rem; }
h1 { font-size: 1.7rem; margin: 0 0 .2rem; letter-spacing: -.01em; }
h2 { font-size: 1.3rem; margin: 2.6rem 0 .4rem; padding-top: 1rem;
  border-top: 1px solid var(--line); }
h3 { font-size: 1.02rem; margin: 1.6rem 0 .5rem; color: var(--muted); }
.subtitle { color: var(--muted); margin: 0 0 1.2rem; font-family: ui-monospace, SFMono-Regular,
  Menlo, Consolas, monospace; font-size: .9rem; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1.2rem;
  margin: 0 0 1rem; }
dl.facts dt { color: var(--muted); font-weight: 600; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
ul.where { padding-left: 1.2rem; margin: .3rem 0; }
ul.where li { margin: .15rem 0; }
.config, .status { margin: .2rem 0; color: var(--muted); }
.badge { display: inline-block; font-size: .75rem; font-weight: 600; padding: .08rem .5rem;
  border-radius: 1rem; vertical-align: middle; color: #fff; background: var(--ok);
  text-transform: uppercase; letter-spacing: .04em; }
.badge.failed, .badge.timeout { background: var(--bad); }
.table-wrap { overflow-x: auto; margin: .6rem 0 1rem; }
table { border-collapse: collapse; font-size: .88rem; min-width: 60%; }
caption { text-align: left; color: var(--muted); font-size: .85rem; padding: 0 0 .3rem; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
thead th { background: var(--soft); text-align: left; font-weight: 600;
  border-bottom: 2px solid var(--line); }
th.num, td.num { text-align: right; }
td.num { font-variant-numeric: tabular-nums; font-size: .84rem;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
tbody tr:nth-child(even) { background: #fbfcfd; }
tr.gpu td:first-child { padding-left: 1.5rem; color: var(--muted); }
p.note { font-size: .85rem; color: var(--muted); margin: .2rem 0; }
figure { margin: 1rem 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line);
  border-radius: 6px; background: #fff; }
figcaption { font-size: .82rem; color: var(--muted); margin-top: .35rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr));
  gap: 1rem; }
.grid figure { margin: 0; }
pre.log { background: #0d1117; color: #e6edf3; padding: .8rem 1rem; border-radius: 6px;
  overflow-x: auto; font-size: .8rem; line-height: 1.45; }
.failed-note { color: var(--bad); font-weight: 600; }
p.files { margin-top: 1rem; font-size: .9rem; }
footer { margin-top: 3rem; color: var(--muted); font-size: .8rem; }
@media print { h2 { break-before: page; } }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _html(report: _Report) -> str:
    root = report.root
    out = [
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f"<title>{_e(report.title)}: {_e(report.subtitle)}</title>\n",
        f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n<header>\n",
        f'<h1>{_e(report.title)}</h1>\n<p class="subtitle">{_e(report.subtitle)}</p>\n',
        '<dl class="facts">\n',
    ]
    out += [f"<dt>{_e(label)}</dt><dd>{_e(text)}</dd>\n" for label, text in report.facts]
    out.append('</dl>\n</header>\n<section>\n<h2>Where to look</h2>\n<ul class="where">\n')
    for label, text, link in report.where:
        if link and PERFETTO in text:
            name, _, rest = text.partition(":")
            rest = _e(rest).replace(PERFETTO, f'<a href="{PERFETTO}">{PERFETTO}</a>')
            shown = f'<a href="{_e(link)}">{_e(name)}</a>:{rest}'
        else:
            shown = f'<a href="{_e(link)}">{_e(text)}</a>' if link else _e(text)
        out.append(f"<li><strong>{_e(label)}:</strong> {shown}</li>\n")
    out.append("</ul>\n</section>\n<section>\n<h2>Apps</h2>\n")
    out.append(_apps_table(report.apps))
    out.append("</section>\n")
    for app in report.apps:
        out.append(_html_app(app, root))
    out.append(
        "<footer>Written by maeltrace. Times in seconds; tables as in the seed report "
        "(Min, Mean, Median, Max, Stdev, Count per region key).</footer>\n"
    )
    out.append("</main>\n</body>\n</html>\n")
    return "".join(out)


def _apps_table(apps: Sequence[_App]) -> str:
    head = ("App", "Framework", "Status", "Wall [s]", "Epoch median [s]", "Batch median [s]")
    numeric = (False, False, False, True, True, True)
    out = ['<div class="table-wrap"><table>\n<thead><tr>']
    out += [
        f"<th{' class=num' if n else ''}>{_e(h)}</th>" for h, n in zip(head, numeric, strict=True)
    ]
    out.append("</tr></thead>\n<tbody>\n")
    for app in apps:
        wall = f"{app.wall_s:.1f}" if app.wall_s is not None else "-"
        out.append(
            f'<tr><td><a href="#{_e(app.anchor)}">{_e(app.name)}</a></td>'
            f"<td>{_e(app.info.get('framework') or '-')}</td>"
            f'<td><span class="badge {_e(app.status)}">{_e(app.status)}</span></td>'
            f'<td class="num">{_e(wall)}</td>'
            f'<td class="num">{_e(_median_of(app.summary, TimeType.EPOCH))}</td>'
            f'<td class="num">{_e(_median_of(app.summary, TimeType.BATCH))}</td></tr>\n'
        )
    out.append("</tbody>\n</table></div>\n")
    return "".join(out)


def _stats_table(rows: Sequence[tuple[Row, TimeStats | None]], caption: str) -> str:
    """The seed's table as HTML: the rows `Summary.to_markdown` prints, numbers right-aligned."""
    out = ['<div class="table-wrap"><table>\n']
    out.append(f"<caption>{_e(caption)}</caption>\n<thead><tr>")
    out += [
        f"<th{'' if i == 0 else ' class=num'}>{_e(name)}</th>" for i, name in enumerate(COLUMNS)
    ]
    out.append("</tr></thead>\n<tbody>\n")
    cells = table_cells([(row.label, stats) for row, stats in rows])
    for (row, _), (label, *numbers) in zip(rows, cells, strict=True):
        css = ' class="gpu"' if row.device else ""
        out.append(f"<tr{css}><td>{_e(label)}</td>")
        out += [f'<td class="num">{_e(number)}</td>' for number in numbers]
        out.append("</tr>\n")
    out.append("</tbody>\n</table></div>\n")
    return "".join(out)


def _html_figure(image: _Image, root: Path) -> str:
    return (
        f'<figure><img src="{_e(_relative(image.path, root))}" alt="{_e(image.alt)}"'
        f' width="{image.width_px}" height="{image.height_px}"'
        f' loading="lazy"><figcaption>{_e(image.caption)}</figcaption></figure>\n'
    )


def _html_app(app: _App, root: Path) -> str:
    out = [f'<section class="app" id="{_e(app.anchor)}">\n']
    out.append(
        f'<h2>{_e(_heading(app))} <span class="badge {_e(app.status)}">{_e(app.status)}</span>'
        "</h2>\n"
    )
    config = _config_line(app)
    if config:
        out.append(f'<p class="config">{_e(config)}</p>\n')
    out.append(f'<p class="status">{_e(_status_line(app))}</p>\n')
    if not app.ok or app.summary is None:
        out.append(f'<p class="failed-note">The app did not finish ({_e(app.status)}).</p>\n')
        if app.log is not None:
            link = _relative(app.log, root)
            out.append(
                f'<p>The end of its log, <a href="{_e(link)}">{_e(link)}</a>:</p>\n'
                f'<pre class="log">{_e(chr(10).join(app.log_tail) or "(the log is empty)")}</pre>\n'
            )
        else:
            out.append("<p>It left no log.</p>\n")
        out.append("</section>\n")
        return "".join(out)

    summary = app.summary
    if not summary.rows:
        out.append('<p class="note">No region was recorded.</p>\n')
    out.append(_stats_table([(row, row.stats) for row in summary.rows], "All samples"))
    if summary.warmup:
        out.append(
            _stats_table(
                [(row, row.steady) for row in summary.rows],
                f"Steady state (first {summary.warmup} samples of each key skipped)",
            )
        )
    out += [f'<p class="note">{_e(note)}</p>\n' for note in summary.notes()]
    if app.flame is not None:
        out.append("<h3>Flame chart</h3>\n")
        out.append(_html_figure(app.flame, root))
    if app.dists:
        out.append('<h3>Distributions</h3>\n<div class="grid">\n')
        out += [_html_figure(image, root) for image in app.dists]
        out.append("</div>\n")
    links = []
    for name, link in _files(app, root):
        entry = f'<a href="{_e(link)}">{_e(name)}</a>'
        if name == "trace.json":
            entry += f' (open in <a href="{PERFETTO}">ui.perfetto.dev</a>)'
        links.append(entry)
    out.append(f'<p class="files">Files: {" · ".join(links)}</p>\n')
    out.append("</section>\n")
    return "".join(out)
