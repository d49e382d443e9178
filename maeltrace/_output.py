"""Where a run's files go: ``$MAELTRACE_OUTPUT_DIR/<run id>/``."""

from __future__ import annotations

import os
from pathlib import Path

from maeltrace.environment import MAELTRACE_OUTPUT_DIR, env_str

__all__ = ["DEFAULT_OUTPUT_DIR", "output_root", "run_output_dir"]

DEFAULT_OUTPUT_DIR = "maeltrace-out"
"""The output folder when ``MAELTRACE_OUTPUT_DIR`` is unset, relative to the working folder."""


def output_root() -> Path:
    """The output folder: ``MAELTRACE_OUTPUT_DIR``, else `DEFAULT_OUTPUT_DIR`."""
    return Path(env_str(MAELTRACE_OUTPUT_DIR, DEFAULT_OUTPUT_DIR))


def run_output_dir(run_id: str, base: str | os.PathLike[str] | None = None) -> Path:
    """The folder of one run, created if needed.

    Args:
        run_id: the run's id; the folder's name.
        base: the output folder; default ``MAELTRACE_OUTPUT_DIR``, else `DEFAULT_OUTPUT_DIR`.

    Raises:
        ValueError: ``run_id`` is empty or would leave the output folder.
        OSError: the folder cannot be created.
    """
    if not run_id or run_id in (".", "..") or os.sep in run_id or (os.altsep or os.sep) in run_id:
        raise ValueError(f"run id {run_id!r} cannot name a folder")
    folder = (Path(base) if base is not None else output_root()) / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder
