"""The bench folder's format: ``bench.json`` and its apps' outcomes, as every tool reads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maeltrace.files import read_json_object

__all__ = [
    "APP_SCHEMA",
    "BENCH_SCHEMA",
    "PROGRESS_PREFIX",
    "STATUSES",
    "AppOutcome",
    "Bench",
    "read_bench",
]

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
    def from_dict(cls, entry: object, where: str) -> AppOutcome:
        """The outcome that `to_dict` gave; ``where`` names the entry in error messages.

        Raises:
            ValueError: a field is missing or of the wrong type; the message names it.
        """
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object")
        for field_name in ("name", "folder"):
            value = entry.get(field_name)
            if not isinstance(value, str) or not value:
                lacks = " (the entry lacks it)" if field_name not in entry else ""
                raise ValueError(f"{where}.{field_name} must be a non-empty string{lacks}")
        status = entry.get("status")
        if status not in STATUSES:
            lacks = " (it has no 'status')" if "status" not in entry else ""
            raise ValueError(
                f"{where}.status must be one of {', '.join(STATUSES)}, not {status!r}{lacks}"
            )
        returncode = entry.get("returncode")
        if returncode is not None and (
            isinstance(returncode, bool) or not isinstance(returncode, int)
        ):
            raise ValueError(f"{where}.returncode must be an int or null")
        wall_s = entry.get("wall_s")
        if isinstance(wall_s, bool) or not isinstance(wall_s, int | float | None):
            raise ValueError(f"{where}.wall_s must be a number or null")
        log = entry.get("log")
        if log is not None and not isinstance(log, str):
            raise ValueError(f"{where}.log must be a string or null")
        return cls(
            entry["name"],
            entry["folder"],
            status,
            returncode,
            None if wall_s is None else float(wall_s),
            log or None,
        )


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
    """Reads and checks a bench folder's ``bench.json``.

    Raises:
        ValueError: it is missing, not JSON, not schema `BENCH_SCHEMA`, or an app entry is
            malformed or listed twice; the message names the file and the entry.
    """
    path = folder / "bench.json"
    manifest = read_json_object(path)
    schema = manifest.get("schema")
    if schema != BENCH_SCHEMA:
        raise ValueError(
            f"{path}: schema {BENCH_SCHEMA!r} expected, not {schema!r}: not a maeltrace bench"
        )
    entries = manifest.get("apps")
    if not isinstance(entries, list):
        raise ValueError(f"{path}: 'apps' is not a list")
    apps = tuple(
        AppOutcome.from_dict(entry, f"{path}: apps[{index}]") for index, entry in enumerate(entries)
    )
    seen: set[str] = set()
    for app in apps:
        if app.name in seen:
            raise ValueError(f"{path}: app {app.name!r} is listed twice")
        seen.add(app.name)
    return Bench(folder, manifest, apps)
