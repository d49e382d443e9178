"""The exceptions maeltrace raises on bad use."""

from __future__ import annotations

__all__ = ["DeviceClockWarning", "MaeltraceError", "RegionError"]


class MaeltraceError(Exception):
    """Base class of every error that maeltrace raises itself."""


class RegionError(MaeltraceError, RuntimeError):
    """A region was opened or closed out of order.

    Raised by `Timer.start` when the same key is already open on the calling thread, and by
    `Timer.end` when the key is not open there. It subclasses `RuntimeError`, which is what
    Deep500's timer raised, so code that catches `RuntimeError` keeps working. Nothing already
    recorded is changed by the failed call.
    """


class DeviceClockWarning(UserWarning):
    """GPU regions are measured on a stand-in clock (no GPU, or a framework's limits).

    Issued once per timer, when its device clock is chosen; the reports name the clock too.
    """
