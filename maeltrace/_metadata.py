"""Who produced a set of timings: host, process, versions, run id and start time."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from dataclasses import asdict
from typing import Any

from maeltrace._clock import ClockAnchor
from maeltrace._redact import redact_argv
from maeltrace._runinfo import hostname, new_run_id, rank_info, run_id_from_environment, versions
from maeltrace.environment import MAELTRACE_RECORD_ARGV, env_flag

# new_run_id and run_id_from_environment live in maeltrace._runinfo; re-exported for old imports.
__all__ = ["new_run_id", "run_id_from_environment", "run_metadata"]


def run_metadata(anchor: ClockAnchor, run_id: str) -> dict[str, Any]:
    """Metadata for stats files: reads ``sys.modules`` for framework versions, imports none.

    The command line is recorded with the values of secret-looking flags masked
    (`maeltrace._redact.redact_argv`), and left out with ``MAELTRACE_RECORD_ARGV=0``.
    """
    started = dt.datetime.fromtimestamp(anchor.wall_time_unix_nano / 1e9, dt.UTC)
    return {
        "run_id": run_id,
        "host": hostname(),
        "pid": os.getpid(),
        "platform": platform.platform(),
        **(
            {"argv": redact_argv(sys.argv)} if env_flag(MAELTRACE_RECORD_ARGV, default=True) else {}
        ),
        "versions": versions(),
        "start_time": started.isoformat(),
        "start_time_unix_nano": anchor.wall_time_unix_nano,
        "clock": "time.perf_counter_ns",
        "rank": asdict(rank_info()),
    }
