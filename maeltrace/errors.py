"""The exceptions maeltrace raises on bad use, and the warnings it gives instead of raising."""

from __future__ import annotations

import contextlib
import warnings

__all__ = [
    "DeviceClockWarning",
    "ExportWarning",
    "MaeltraceError",
    "MaeltraceWarning",
    "RegionError",
    "warn_safely",
]


class MaeltraceError(Exception):
    """Base class of every error that maeltrace raises itself."""


class RegionError(MaeltraceError, RuntimeError):
    """A region was opened or closed out of order.

    Raised by `Timer.start` when the same key is already open on the calling thread, and by
    `Timer.end` when the key is not open there. It subclasses `RuntimeError`, which is what
    Deep500's timer raised, so code that catches `RuntimeError` keeps working. Nothing already
    recorded is changed by the failed call.
    """


class MaeltraceWarning(UserWarning):
    """Base class of the warnings maeltrace gives where it does not raise."""


class DeviceClockWarning(MaeltraceWarning):
    """GPU regions are measured on a stand-in clock (no GPU, or a framework's limits).

    Issued once per timer, when its device clock is chosen; the reports name the clock too.
    """


class ExportWarning(MaeltraceWarning):
    """A file could not be written or spans could not be sent; the run goes on.

    Faults of the file system, the exporter or the outbox never raise into the training thread:
    each cause is warned about once, naming the path or endpoint, and counted
    (`maeltrace.Timer.export_health`); what was recorded stays in memory, and `Timer.close`
    ends with one line saying what was not written or sent and where it is instead.
    """


def warn_safely(message: str, category: type[Warning] = ExportWarning, stacklevel: int = 2) -> None:
    """Warns, but never raises: a warnings filter set to ``error`` would otherwise turn a fault
    that must stay off the training thread into an exception on it."""
    with contextlib.suppress(Exception):
        warnings.warn(message, category, stacklevel=stacklevel + 1)
