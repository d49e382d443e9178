"""The bench folder's format: ``bench.json`` and its apps' outcomes, as every tool reads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maeltrace._validate import Checker, at, read_json
from maeltrace.report import EARLIEST_UNIX_NS, LATEST_UNIX_NS, MAX_SECONDS

__all__ = [
    "APP_SCHEMA",
    "BENCH_SCHEMA",
    "PROGRESS_PREFIX",
    "STATUSES",
    "AppOutcome",
    "Bench",
    "read_app_info",
    "read_bench",
]

MAX_BENCH_BYTES = 16 * 2**20
"""The largest ``bench.json`` read."""

MAX_APP_BYTES = 16 * 2**20
"""The largest ``app.json`` read."""

MAX_APPS = 10_000
"""Most apps a ``bench.json`` may list."""

MAX_WALL_S = MAX_SECONDS
"""Longest wall time read (about three years)."""

BENCH_SCHEMA = "maeltrace.bench/1"
"""The ``schema`` of ``bench.json``."""

APP_SCHEMA = "maeltrace.app/1"
"""The ``schema`` of the ``app.json`` each app writes (``apps/_harness.py``)."""

PROGRESS_PREFIX = "@maeltrace-progress"
"""Start of the progress lines the apps print for the progress bar (``apps/_harness.py``)."""


STATUSES = ("ok", "failed", "timeout")
"""How an app's run can end: `AppOutcome.status`."""


@dataclass(slots=True)
class AppOutcome:
    """How one app's run ended (an entry of ``bench.json``'s ``apps``).

    Attributes:
        name: the app's name (``ap1-unet-downscaling``).
        folder: its folder, relative to the bench folder.
        status: one of `STATUSES`.
        returncode: its exit status; None when it was killed.
        wall_s: how long its process ran, import included; None where not recorded.
        log: its log file, relative to the bench folder; None where not recorded.
    """

    name: str
    folder: str
    status: str
    returncode: int | None
    wall_s: float | None
    log: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "folder": self.folder,
            "status": self.status,
            "returncode": self.returncode,
            "wall_s": None if self.wall_s is None else round(self.wall_s, 3),
            "log": self.log,
        }

    @classmethod
    def from_dict(cls, entry: object, where: str, *, source: str = "bench.json") -> AppOutcome:
        """The outcome that `to_dict` gave; ``where`` names the entry (``apps[2]``) and
        ``source`` the file in error messages.

        Raises:
            FormatError: a field is missing, of the wrong type or out of range; the message
                names the file and the field (a ValueError).
        """
        check = Checker(source)
        obj = check.object(entry, where)
        name = check.string(check.field(obj, "name", where), at(where, "name"), max_length=256)
        folder = check.string(
            check.field(obj, "folder", where), at(where, "folder"), max_length=1024
        )
        status = check.field(obj, "status", where)
        if status not in STATUSES:
            check.fail(
                at(where, "status"), f"one of {', '.join(STATUSES)} expected, not {status!r}"
            )
        returncode = obj.get("returncode")
        if returncode is not None:
            returncode = check.integer(
                returncode, at(where, "returncode"), minimum=-(2**31), maximum=2**32
            )
        wall_s = obj.get("wall_s")
        if wall_s is not None:
            wall_s = check.number(wall_s, at(where, "wall_s"), maximum=MAX_WALL_S)
        log = obj.get("log")
        if log is not None:
            log = check.string(log, at(where, "log"), max_length=1024, empty=True)
        return cls(name, folder, status, returncode, wall_s, log or None)


@dataclass(frozen=True, slots=True)
class Bench:
    """A bench folder as `read_bench` reads it.

    Attributes:
        folder: the bench folder.
        manifest: its ``bench.json``.
        apps: its apps' outcomes, in the order they ran.
    """

    folder: Path
    manifest: dict[str, Any]
    apps: tuple[AppOutcome, ...]


def read_bench(folder: Path) -> Bench:
    """Reads and checks a bench folder's ``bench.json``: its schema, each app entry, the apps'
    folders and logs paths inside the bench folder, and the fields the report shows.

    Raises:
        FormatError: it is missing, too large, not JSON, not schema `BENCH_SCHEMA`, or an app
            entry or field is malformed, listed twice or points out of the folder; the message
            names the file and the place (a ValueError).
    """
    path = folder / "bench.json"
    source = str(path)
    check = Checker(source)
    manifest = dict(check.object(read_json(path, max_bytes=MAX_BENCH_BYTES), ""))
    schema = manifest.get("schema")
    if schema != BENCH_SCHEMA:
        check.fail("schema", f"{BENCH_SCHEMA!r} expected, not {schema!r}: not a maeltrace bench")
    entries = check.list(check.field(manifest, "apps", ""), "apps", max_items=MAX_APPS)
    apps = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = at("apps", index)
        app = AppOutcome.from_dict(entry, where, source=source)
        # A path from the file must not lead the report to write or read outside the folder.
        check.relative_path(app.folder, at(where, "folder"), folder)
        if app.log is not None:
            check.relative_path(app.log, at(where, "log"), folder)
        if app.name in seen:
            check.fail(at(where, "name"), f"app {app.name!r} is listed twice")
        seen.add(app.name)
        apps.append(app)
    _check_manifest_fields(check, manifest)
    return Bench(folder, manifest, tuple(apps))


def _check_manifest_fields(check: Checker, manifest: dict[str, Any]) -> None:
    """The fields of ``bench.json`` the report shows, where present: a start time between the
    years 2000 and 2200, a wall time in range, strings and a list of strings."""
    if manifest.get("started_unix_s") is not None:
        check.number(
            manifest["started_unix_s"],
            "started_unix_s",
            minimum=EARLIEST_UNIX_NS / 1e9,
            maximum=LATEST_UNIX_NS / 1e9,
        )
    if manifest.get("wall_s") is not None:
        check.number(manifest["wall_s"], "wall_s", maximum=MAX_WALL_S)
    for name in ("bench_id", "host", "maeltrace_version", "python", "otlp_endpoint"):
        if manifest.get(name) is not None:
            check.string(manifest[name], name, max_length=1024, empty=True)
    argv = manifest.get("argv")
    if argv is not None:
        for index, arg in enumerate(check.list(argv, "argv", max_items=10_000)):
            check.string(arg, at("argv", index), max_length=65_536, empty=True)
    if manifest.get("options") is not None:
        check.object(manifest["options"], "options")


def read_app_info(path: Path) -> dict[str, Any]:
    """Reads and checks an app's ``app.json`` (written by ``apps/_harness.py``): a JSON object
    whose ``name`` is a string, ``wall_s`` a duration in range and ``config`` an object, where
    present.

    Raises:
        FormatError: it is missing, too large, not JSON or one of those fields is malformed;
            the message names the file and the place (a ValueError).
    """
    check = Checker(str(path))
    info = dict(check.object(read_json(path, max_bytes=MAX_APP_BYTES), ""))
    if info.get("name") is not None:
        check.string(info["name"], "name", max_length=256)
    if info.get("wall_s") is not None:
        check.number(info["wall_s"], "wall_s", maximum=MAX_WALL_S)
    if info.get("config") is not None:
        check.object(info["config"], "config")
    return info
