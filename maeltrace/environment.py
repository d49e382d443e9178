"""The environment variables maeltrace reads, each in one place with what it means."""

from __future__ import annotations

import os

__all__ = [
    "MAELTRACE_APPS_DIR",
    "MAELTRACE_DISABLED",
    "MAELTRACE_EXPORT",
    "MAELTRACE_MAX_REQUEST_BYTES",
    "MAELTRACE_OUTPUT_DIR",
    "MAELTRACE_PURE_PYTHON",
    "MAELTRACE_RUN_ID",
    "MAELTRACE_SIGNALS",
    "env_flag",
]

MAELTRACE_APPS_DIR = "MAELTRACE_APPS_DIR"
"""Folder of the example apps that ``maeltrace bench`` runs; default ``apps/`` of the source tree
maeltrace runs from, else of the working folder."""

MAELTRACE_DISABLED = "MAELTRACE_DISABLED"
"""``1``, ``true``, ``yes`` or ``on`` makes every `Timer` built afterwards a no-op, as if it were
built with ``enabled=False``. Read when a timer is built, never on the hot path."""

MAELTRACE_EXPORT = "MAELTRACE_EXPORT"
"""``0``, ``false``, ``no`` or ``off`` makes timers built afterwards keep their regions to
themselves: no spans, no files at exit. Default on."""

MAELTRACE_MAX_REQUEST_BYTES = "MAELTRACE_MAX_REQUEST_BYTES"
"""The most bytes of one export request, outbox record or traces file line (at least 4096);
default 4 MiB, gRPC's limit. Read when a timer is built."""

MAELTRACE_PURE_PYTHON = "MAELTRACE_PURE_PYTHON"
"""``1`` makes timers built afterwards use the pure-Python recorder and span encoder even where
the compiled ones (``maeltrace._hotpath``, ``maeltrace._spanenc``) are installed; they record and
encode the same things, more slowly."""

MAELTRACE_OUTPUT_DIR = "MAELTRACE_OUTPUT_DIR"
"""Folder that runs write their files into; default ``./maeltrace-out``. Each run writes into a
subfolder named by its run id."""

MAELTRACE_RUN_ID = "MAELTRACE_RUN_ID"
"""The run id, shared by every process of one run. When unset, the launcher's id is used
(``TORCHELASTIC_RUN_ID``, ``SLURM_JOB_ID`` with ``SLURM_STEP_ID``), else a new one."""

MAELTRACE_SIGNALS = "MAELTRACE_SIGNALS"
"""``0``, ``false``, ``no`` or ``off`` keeps timers built afterwards from handling SIGTERM and
SIGINT (writing their files before the signal ends the process), as
``Timer(handle_signals=False)`` does. Default on."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def env_flag(name: str, default: bool = False) -> bool:
    """Reads a boolean environment variable; unset or empty gives ``default``.

    Raises:
        ValueError: the variable holds something other than a yes/no word, named in the message.
    """
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(
        f"{name}={os.environ[name]!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off"
    )
