"""Who produced a set of timings: host, process, versions, run id and start time."""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import sys
import uuid
from dataclasses import asdict
from typing import Any

from maeltrace._version import __version__
from maeltrace.clock import ClockAnchor
from maeltrace.environment import MAELTRACE_RUN_ID

__all__ = ["new_run_id", "run_id_from_environment", "run_metadata"]

_FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "jaxlib", "numpy")


def run_id_from_environment() -> str | None:
    """The run id that every process of one run agrees on without talking, if there is one.

    In order: ``MAELTRACE_RUN_ID``, torchrun's ``TORCHELASTIC_RUN_ID``, Slurm's
    ``SLURM_JOB_ID`` (with ``.SLURM_STEP_ID`` when set).
    """
    env = os.environ
    if env.get(MAELTRACE_RUN_ID):
        return env[MAELTRACE_RUN_ID]
    if env.get("TORCHELASTIC_RUN_ID"):
        return env["TORCHELASTIC_RUN_ID"]
    if env.get("SLURM_JOB_ID"):
        step = env.get("SLURM_STEP_ID")
        return f"slurm-{env['SLURM_JOB_ID']}" + (f".{step}" if step else "")
    return None


def new_run_id() -> str:
    """A fresh run id: UTC time to the second and 8 random hex digits, sortable by start."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


def run_metadata(anchor: ClockAnchor, run_id: str) -> dict[str, Any]:
    """Metadata for stats files: reads ``sys.modules`` for framework versions, imports none."""
    versions = {"maeltrace": __version__, "python": platform.python_version()}
    for name in _FRAMEWORKS:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        if isinstance(version, str):
            versions[name] = version
    started = dt.datetime.fromtimestamp(anchor.wall_time_unix_nano / 1e9, dt.UTC)
    return {
        "run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "platform": platform.platform(),
        "argv": list(sys.argv),
        "versions": versions,
        "start_time": started.isoformat(),
        "start_time_unix_nano": anchor.wall_time_unix_nano,
        "clock": "time.perf_counter_ns",
        "rank": _rank(),
    }


def _rank() -> dict[str, object]:
    from maeltrace.distributed import rank_info

    return asdict(rank_info())
