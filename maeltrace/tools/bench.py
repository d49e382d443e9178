"""``maeltrace bench``: runs the example applications, each in its own process, into one folder.

Every app of ``apps/`` (``apN_<name>.py``, see ``apps/_harness.py``) runs as
``python apps/apN_<name>.py --output-dir <bench>/<app> --run-id <bench id>-<app> --progress``
with the chosen size, one after the other so that none times another's load. Its output goes to
``<app>/log.txt``, apart from the progress lines that drive the progress bar. A run that fails
or outlives ``--timeout`` is recorded as such and the next app runs.

The folder, ``<output root>/bench-<UTC time>-<hex>/``, gets ``bench.json`` (what ran, how it
ended, how long it took), the apps' folders, and at the end ``report.md`` and ``report.html``
(`maeltrace.tools.benchreport`). The results go to MLflow as well
(`maeltrace.tools.benchstore.log_bench`): the tracking server of ``MLFLOW_TRACKING_URI`` when
set, else a SQLite store in the output root (``mlflow.db``), so that runs of different days sit
side by side in ``mlflow ui``. Spans go where the apps' timers send them: the OTLP endpoint of
``OTEL_EXPORTER_OTLP_ENDPOINT`` when set, else the embedded default's files in each app's folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from maeltrace._files import atomic_write_text
from maeltrace._output import output_root
from maeltrace._redact import redact_text, redact_url
from maeltrace._version import __version__
from maeltrace.environment import MAELTRACE_APPS_DIR, MAELTRACE_EXPORT, env_flag, env_str
from maeltrace.tools.benchfiles import BENCH_SCHEMA, PROGRESS_PREFIX, AppOutcome

__all__ = [
    "BenchOptions",
    "BenchResult",
    "discover_apps",
    "run_bench",
    "select_apps",
]

_SCRIPT = re.compile(r"^(ap\d+)_(\w+)\.py$")


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What one ``maeltrace bench`` does.

    Attributes:
        apps: names or prefixes of the apps to run (``ap4`` runs both AP4 variants); empty:
            all of them.
        size: the apps' ``--size``.
        epochs: the apps' ``--epochs``; None keeps each app's default for the size.
        batches: the apps' ``--batches``; None keeps the defaults.
        device: the apps' ``--device``.
        output_root: where the bench folder goes; default ``MAELTRACE_OUTPUT_DIR``, else
            ``maeltrace-out``.
        apps_dir: the folder of the app scripts; default `default_apps_dir`.
        timeout_s: the longest one app may run.
        mlflow: log the results to MLflow.
        tracking_uri: the MLflow tracking URI; default ``MLFLOW_TRACKING_URI``, else the
            SQLite store ``<output root>/mlflow.db``.
        report: write report.md and report.html at the end.
    """

    apps: Sequence[str] = ()
    size: str = "small"
    epochs: int | None = None
    batches: int | None = None
    device: str = "cpu"
    output_root: Path | None = None
    apps_dir: Path | None = None
    timeout_s: float = 600.0
    mlflow: bool = True
    tracking_uri: str | None = None
    report: bool = True


@dataclass(slots=True)
class BenchResult:
    """What ``maeltrace bench`` did.

    Attributes:
        folder: the bench folder.
        outcomes: one per app, in the order they ran.
        mlflow: ``bench.json``'s ``mlflow`` entry, None when nothing was logged.
        report: the report files written (Markdown, HTML), if any.
        otlp_endpoint: where the apps sent their spans; None: the embedded default's files.
    """

    folder: Path
    outcomes: list[AppOutcome] = field(default_factory=list)
    mlflow: dict[str, Any] | None = None
    report: tuple[Path, Path] | None = None
    otlp_endpoint: str | None = None

    @property
    def ok(self) -> bool:
        """Whether every app finished."""
        return all(outcome.status == "ok" for outcome in self.outcomes)


def default_apps_dir() -> Path:
    """``MAELTRACE_APPS_DIR`` when set; else ``apps/`` of the source tree maeltrace runs from
    (``uv run`` in a clone), else ``apps/`` of the working folder."""
    named = env_str(MAELTRACE_APPS_DIR)
    if named:
        return Path(named)
    beside = Path(__file__).resolve().parents[2] / "apps"  # maeltrace/tools/bench.py
    return beside if beside.is_dir() else Path.cwd() / "apps"


def discover_apps(apps_dir: Path) -> dict[str, Path]:
    """The app scripts of a folder by app name (``ap1_unet_downscaling.py`` is
    ``ap1-unet-downscaling``), in order.

    Raises:
        ValueError: the folder holds no app.
    """
    numbered = []
    for path in apps_dir.glob("ap*.py"):
        match = _SCRIPT.match(path.name)
        if match:
            numbered.append((int(match[1][2:]), path.name, path))
    found = [path for _, _, path in sorted(numbered)]
    if not found:
        raise ValueError(
            f"no example apps (apN_<name>.py) in {apps_dir}: run from a clone of maeltrace, "
            f"or set {MAELTRACE_APPS_DIR} or --apps-dir"
        )
    return {path.stem.replace("_", "-"): path for path in found}


def select_apps(wanted: Sequence[str], available: dict[str, Path]) -> dict[str, Path]:
    """The apps that ``wanted`` names, each by its full name or a prefix (``ap4``), in the
    order of ``available``; all of them when ``wanted`` is empty.

    Raises:
        ValueError: a name matches no app; the message lists them.
    """
    if not wanted:
        return dict(available)
    chosen: set[str] = set()
    for name in wanted:
        normal = name.replace("_", "-").lower()
        matches = [app for app in available if app == normal or app.startswith(normal + "-")]
        if not matches:
            raise ValueError(f"no app {name!r}; the apps are: {', '.join(available)}")
        chosen.update(matches)
    return {name: path for name, path in available.items() if name in chosen}


def new_bench_id() -> str:
    """``bench-<UTC time>-<4 hex digits>``: sortable, and a folder name."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"bench-{stamp}-{secrets.token_hex(2)}"


def run_bench(options: BenchOptions, *, stream: IO[str] | None = None) -> BenchResult:
    """Runs the apps, writes ``bench.json``, logs to MLflow and writes the report.

    Args:
        options: what to run and where.
        stream: where the progress bar and messages go; default standard error.

    Raises:
        ValueError: no apps, or a name that matches none.
        OSError: the bench folder cannot be written.
    """
    out = stream or sys.stderr
    apps = select_apps(options.apps, discover_apps(options.apps_dir or default_apps_dir()))
    root = options.output_root or output_root()
    bench_id = new_bench_id()
    folder = root / bench_id
    folder.mkdir(parents=True)
    started = time.time()
    endpoint = _otlp_endpoint()
    manifest: dict[str, Any] = {
        "schema": BENCH_SCHEMA,
        "bench_id": bench_id,
        "started_unix_s": started,
        "wall_s": None,
        "host": socket.gethostname(),
        "maeltrace_version": __version__,
        "python": platform.python_version(),
        "argv": sys.argv[1:],
        "options": {
            "size": options.size,
            "epochs": options.epochs,
            "batches": options.batches,
            "device": options.device,
            "timeout_s": options.timeout_s,
        },
        "apps": [],
        "mlflow": None,
        "otlp_endpoint": endpoint,
    }
    result = BenchResult(folder, otlp_endpoint=endpoint)
    bar = _ProgressBar(out, len(apps))
    print(f"maeltrace bench: {len(apps)} apps into {folder}", file=out)
    for index, (name, script) in enumerate(apps.items(), 1):
        outcome = _run_app(name, script, folder, bench_id, options, bar.for_app(index, name))
        result.outcomes.append(outcome)
        manifest["apps"].append(outcome.to_dict())
        _write_manifest(folder, manifest)
    manifest["wall_s"] = round(time.time() - started, 3)
    _write_manifest(folder, manifest)

    if options.mlflow:
        result.mlflow = _log_mlflow(folder, result, options, root, out)
        if result.mlflow is not None:
            # bench.json is read by people and tools: the tracking URI's credentials stay out.
            manifest["mlflow"] = {
                name: redact_text(value) if isinstance(value, str) else value
                for name, value in result.mlflow.items()
            }
            _write_manifest(folder, manifest)
    if options.report:
        result.report = _write_report(folder, out)
        if result.report is not None and result.mlflow is not None:
            _log_report(result, out)
    return result


def _otlp_endpoint() -> str | None:
    """Where the apps' timers will send their spans, as `maeltrace.Timer` decides it: None for
    the embedded default's files (no endpoint, ``OTEL_SDK_DISABLED``, ``MAELTRACE_EXPORT=0``).

    Raises:
        ExportConfigError: an ``OTEL_EXPORTER_OTLP_*`` variable is unusable; checked here, before
            every app fails on it.
    """
    if not env_flag(MAELTRACE_EXPORT, default=True):
        return None
    from maeltrace.otel.export import ExportConfig

    config = ExportConfig.from_env()
    return config.endpoint if config is not None and not config.disabled else None


def _run_app(
    name: str,
    script: Path,
    bench: Path,
    bench_id: str,
    options: BenchOptions,
    bar: _AppBar,
) -> AppOutcome:
    folder = bench / name
    folder.mkdir()
    log_path = folder / "log.txt"
    command = [
        sys.executable,
        str(script),
        "--size",
        options.size,
        "--device",
        options.device,
        "--output-dir",
        str(folder),
        "--run-id",
        f"{bench_id}-{name}",
        "--progress",
    ]
    if options.epochs is not None:
        command += ["--epochs", str(options.epochs)]
    if options.batches is not None:
        command += ["--batches", str(options.batches)]
    env = dict(os.environ)  # the apps' environment: a copy, not a read
    env.setdefault("OTEL_SERVICE_NAME", name)
    env["PYTHONUNBUFFERED"] = "1"
    started = time.monotonic()
    with log_path.open("w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(  # its stdout is closed after the pump
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
            cwd=script.parent.parent,
        )
        assert process.stdout is not None
        pump = threading.Thread(
            target=_pump, args=(process.stdout, log, bar), name=f"bench-{name}", daemon=True
        )
        pump.start()
        status = "ok"
        while True:
            try:
                process.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                bar.draw(time.monotonic() - started)
                if time.monotonic() - started > options.timeout_s:
                    process.kill()
                    process.wait()
                    status = "timeout"
                    break
        pump.join(timeout=10)
        process.stdout.close()
        wall_s = time.monotonic() - started
        if status == "timeout":
            log.write(f"\nmaeltrace bench: killed after {options.timeout_s:g} s\n")
            returncode = None
        else:
            returncode = process.returncode
            status = "ok" if returncode == 0 else "failed"
    bar.finish(status, wall_s, _why(log_path) if status == "failed" else None)
    return AppOutcome(name, name, status, returncode, wall_s, f"{name}/log.txt")


_MISSING = re.compile(r"^ModuleNotFoundError: No module named '([^'.]+)")


def _why(log_path: Path) -> str:
    """One line on why an app failed: the install hint for a missing framework, else the last
    line of its log."""
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in reversed(lines):
        missing = _MISSING.match(line)
        if missing:
            return (
                f"{missing[1]} is not installed: install maeltrace[apps] "
                "(`uv run --extra apps ...`, `pip install 'maeltrace[apps]'`)"
            )
    last = next((line for line in reversed(lines) if line.strip()), "")
    return f"{last.strip()[:200]} (see {log_path})"


def _pump(source: IO[str], log: IO[str], bar: _AppBar) -> None:
    for line in source:
        if line.startswith(PROGRESS_PREFIX):
            parts = line.split()
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                bar.update(int(parts[1]), int(parts[2]))
                continue
        log.write(line)


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / "bench.json", json.dumps(manifest, indent=2) + "\n")


def _log_mlflow(
    folder: Path, result: BenchResult, options: BenchOptions, root: Path, out: IO[str]
) -> dict[str, Any] | None:
    try:
        from maeltrace.tools.benchstore import log_bench
    except ImportError as exc:  # pragma: no cover - the mlflow module itself imports nothing
        print(f"maeltrace bench: not logged to MLflow: {exc}", file=out)
        return None
    try:
        logged = log_bench(
            folder,
            [o.name for o in result.outcomes if o.status == "ok"],
            tracking_uri=options.tracking_uri,
            default_root=root,
        )
    except ImportError as exc:
        print(f"maeltrace bench: not logged to MLflow ({exc})", file=out)
        return None
    except Exception as exc:  # the results are in files; a tracker that is down changes nothing
        print(f"maeltrace bench: MLflow logging failed: {type(exc).__name__}: {exc}", file=out)
        return None
    print(f"logged to MLflow at {redact_url(str(logged['tracking_uri']))}", file=out)
    return logged


def _write_report(folder: Path, out: IO[str]) -> tuple[Path, Path] | None:
    try:
        from maeltrace.tools.benchreport import write_report

        files = write_report(folder)
    except ImportError as exc:
        print(f"maeltrace bench: no report: {exc}", file=out)
        return None
    return files.markdown, files.html


def _log_report(result: BenchResult, out: IO[str]) -> None:
    assert result.mlflow is not None and result.report is not None
    try:
        from maeltrace.tools.benchstore import log_bench_report

        log_bench_report(result.folder, result.mlflow)
    except Exception as exc:  # the report is on disk either way
        print(f"maeltrace bench: the report was not logged to MLflow: {exc}", file=out)


class _ProgressBar:
    """The bench's progress: one line per app, redrawn in place on a terminal."""

    def __init__(self, out: IO[str], apps: int) -> None:
        self.out = out
        self.apps = apps
        self.tty = bool(getattr(out, "isatty", lambda: False)())

    def for_app(self, index: int, name: str) -> _AppBar:
        return _AppBar(self, index, name)


class _AppBar:
    WIDTH = 24

    def __init__(self, parent: _ProgressBar, index: int, name: str) -> None:
        self.parent = parent
        self.head = f"[{index}/{parent.apps}] {name:<28}"
        self.done = 0
        self.total = 0
        self._lock = threading.Lock()
        if not parent.tty:
            print(f"{self.head} running", file=parent.out, flush=True)

    def update(self, done: int, total: int) -> None:
        with self._lock:
            self.done, self.total = done, total

    def _line(self, elapsed_s: float) -> str:
        with self._lock:
            done, total = self.done, self.total
        if total:
            filled = round(self.WIDTH * min(done, total) / total)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            return f"{self.head} [{bar}] {done}/{total} batches {elapsed_s:6.1f} s"
        return f"{self.head} [{'.' * self.WIDTH}] starting {elapsed_s:6.1f} s"

    def draw(self, elapsed_s: float) -> None:
        if self.parent.tty:
            print(f"\r{self._line(elapsed_s)}\x1b[K", end="", file=self.parent.out, flush=True)

    def finish(self, status: str, wall_s: float, why: str | None = None) -> None:
        mark = {"ok": "done"}.get(status, status.upper())
        text = f"{self.head} {mark} in {wall_s:.1f} s" + (f": {why}" if why else "")
        if self.parent.tty:
            print(f"\r{text}\x1b[K", file=self.parent.out, flush=True)
        else:
            print(text, file=self.parent.out, flush=True)
