"""OpenTelemetry SDK log records of a failed export, turned into maeltrace's one warning and a
count.

The SDK and its OTLP exporters report a failed export by logging (``Failed to export ...``,
retries), often once per span or per interval. maeltrace's rule for exporter errors is one
`maeltrace.errors.ExportWarning` and a count, the run going on; so where maeltrace makes the
SDK export (the SDK span path's replay, its own metrics exporter), the SDK's records on that
thread are counted and silenced. Records of other threads (the user's own pipeline) pass.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

__all__ = ["sdk_logs_counted"]


@contextmanager
def sdk_logs_counted(
    loggers: Sequence[str],
    fail: Callable[[BaseException | None, str | None], None],
    *,
    silence: int = logging.ERROR,
) -> Iterator[None]:
    """While the block runs, records of ``loggers`` logged on this thread at ``silence`` or
    above are dropped; those at ``ERROR`` or above call ``fail(exception, message)`` first (the
    exception where the record carries one, else its message).

    Args:
        loggers: the SDK's logger names.
        fail: counts the failure and warns once.
        silence: the lowest level dropped (``WARNING`` to drop the exporter's retry notices too).
    """
    thread = threading.get_ident()

    def counted(record: logging.LogRecord) -> bool:
        if record.thread != thread or record.levelno < silence:
            return True
        if record.levelno >= logging.ERROR:
            exc = record.exc_info[1] if record.exc_info else None
            fail(exc, None if exc is not None else record.getMessage())
        return False

    found = [logging.getLogger(name) for name in loggers]
    for logger in found:
        # First, before the SDK's own filters: its DuplicateFilter drops a message it saw in
        # the last 20 s (from any exporter), which would hide a failure from the count.
        logger.filters.insert(0, counted)
    try:
        yield
    finally:
        for logger in found:
            logger.removeFilter(counted)
