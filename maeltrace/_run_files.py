"""A run's files: the stats files and Chrome trace in the run folder, or a rescue folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from maeltrace._chrome import chrome_trace, write_chrome_trace
from maeltrace._clock import ClockAnchor
from maeltrace._output import output_root, run_output_dir
from maeltrace.errors import ExportWarning, warn_safely
from maeltrace.records import Records

if TYPE_CHECKING:
    from maeltrace.report import Summary

__all__ = ["RESCUE_FOLDER", "RunFiles", "file_names"]

RESCUE_FOLDER = "maeltrace-rescue"
"""The folder under the system's temporary folder that takes a run's files when the run
folder cannot."""


def file_names(suffix: str) -> tuple[str, str, str]:
    """The names of a run's stats files and Chrome trace: ``stats<suffix>.json``,
    ``stats<suffix>.md``, ``trace<suffix>.json``."""
    return f"stats{suffix}.json", f"stats{suffix}.md", f"trace{suffix}.json"


class RunFiles:
    """Writes one run's files, never raising for the file system: each fault is counted
    (`errors`) and the first is warned about (`maeltrace.errors.ExportWarning`).

    Args:
        run_id: the run's id, the run folder's name.
        folder: the run folder; default ``$MAELTRACE_OUTPUT_DIR/<run id>``.
    """

    def __init__(self, run_id: str, folder: str | os.PathLike[str] | None = None) -> None:
        self.run_id = run_id
        self._folder = Path(folder) if folder is not None else None
        self._warned = False
        self.errors = 0
        """Failed writes and folder creations."""

    @property
    def folder(self) -> Path:
        """The run folder, created if needed.

        Raises:
            OSError: the folder cannot be created.
            ValueError: the run id cannot name a folder.
        """
        if self._folder is None:
            self._folder = run_output_dir(self.run_id)
        else:
            self._folder.mkdir(parents=True, exist_ok=True)
        return self._folder

    def intended_folder(self) -> Path:
        """`folder`'s path, without creating it."""
        return self._folder or output_root() / self.run_id

    def usable_folder(self) -> Path | None:
        """`folder`, or None (counted, and warned about once) when it cannot be created."""
        try:
            return self.folder
        except (OSError, ValueError) as exc:
            self.errors += 1
            self.warn(f"cannot create the output folder {self.intended_folder()}: {exc}")
            return None

    def rescue_folder(self) -> Path | None:
        """Where the files go when the run folder cannot take them:
        ``<temporary folder>/maeltrace-rescue/<run id>``; None when it cannot be created."""
        try:
            return run_output_dir(self.run_id, Path(tempfile.gettempdir()) / RESCUE_FOLDER)
        except (OSError, ValueError):
            return None

    def warn(self, message: str) -> None:
        """One `ExportWarning` for the first fault; later ones are only counted."""
        if not self._warned:
            self._warned = True
            warn_safely(f"maeltrace: {message}", ExportWarning, stacklevel=4)

    def save(self, summary: Summary, filename: str | os.PathLike[str], *, exist_ok: bool) -> None:
        """`Summary.save`, counting and warning about a file system fault instead of raising.

        Raises:
            ValueError: the suffix names no supported format.
            FileExistsError: the file exists and ``exist_ok`` is false.
        """
        try:
            summary.save(filename, exist_ok=exist_ok)
        except FileExistsError:
            raise
        except OSError as exc:
            self.errors += 1
            warn_safely(f"maeltrace: cannot write {filename}: {exc}", ExportWarning, stacklevel=3)

    def write(
        self,
        summary: Summary,
        records: Records,
        anchor: ClockAnchor,
        suffix: str,
        *,
        failures: Mapping[int, str] | None = None,
        device_clock: str | None = None,
    ) -> Path | None:
        """Writes ``stats<suffix>.json``, ``stats<suffix>.md`` and the Chrome trace
        ``trace<suffix>.json`` atomically, into the run folder, else the rescue folder.

        Returns:
            The folder written to, or None when neither could be written.
        """
        trace = chrome_trace(
            records,
            anchor,
            failures=failures,
            device_clock=device_clock,
            metadata={"run_id": self.run_id},
        )
        causes = []
        for folder in (self.usable_folder(), self.rescue_folder()):
            if folder is None:
                continue
            stats_json, stats_md, trace_json = file_names(suffix)
            try:
                summary.save(folder / stats_json)
                summary.save(folder / stats_md)
                write_chrome_trace(folder / trace_json, trace)
            except OSError as exc:
                self.errors += 1
                causes.append(f"{exc}")
                continue
            if causes:
                self.warn(f"cannot write the stats files ({causes[0]}); wrote them to {folder}")
            return folder
        self.warn(f"cannot write the stats files: {'; '.join(causes) or 'no folder'}")
        return None

    @staticmethod
    def artifacts(folder: Path, suffix: str) -> list[Path]:
        """The files `write` wrote into ``folder``, and the run's reports there (what sinks
        upload), those that exist."""
        found = [folder / name for name in file_names(suffix)]
        found += sorted(folder.glob(f"report{suffix}.*"))
        return [path for path in found if path.is_file() and not path.name.startswith(".")]

    def close_line(self, written: Path | None) -> str | None:
        """The line `Timer.close` prints when the files are not in the run folder."""
        if written is None:
            return (
                "maeltrace: the stats files and trace.json could not be written anywhere; "
                "the statistics stay readable from this timer"
            )
        if written != self._folder:
            return (
                f"maeltrace: the stats files and trace.json could not be written to "
                f"{self.intended_folder()}; they are in {written}"
            )
        return None
