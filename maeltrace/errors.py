"""The exceptions maeltrace raises on bad use, and the warnings it gives instead of raising."""

from __future__ import annotations

import contextlib
import warnings

__all__ = [
    "DeviceClockWarning",
    "ExportConfigError",
    "ExportFailed",
    "ExportWarning",
    "FormatError",
    "MaeltraceError",
    "MaeltraceWarning",
    "OutboxBusy",
    "RegionError",
    "SinkError",
    "SinkWarning",
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


class ExportConfigError(MaeltraceError, ValueError):
    """The export configuration is wrong: an endpoint, protocol, header string, timeout,
    compression or file that cannot be used.

    Raised when the configuration is read or an exporter is built, never during an export; the
    message names the environment variable (or argument) that holds the bad value.
    """


class ExportFailed(MaeltraceError):
    """An export did not reach the receiver, after the exporter's own retries.

    Args:
        message: what went wrong, for people.
        retryable: whether trying again later may succeed (the receiver was down, overloaded or
            too slow), as opposed to a refusal that a retry would get again (a bad request, an
            authentication failure, a too-large batch).
        attempts: how many attempts the exporter made.
        too_large: the receiver refused the request for its size (HTTP 413, gRPC
            RESOURCE_EXHAUSTED): the same spans in smaller requests may pass.

    Attributes:
        retryable: as given.
        attempts: as given.
        too_large: as given.
    """

    def __init__(
        self, message: str, *, retryable: bool, attempts: int = 1, too_large: bool = False
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.attempts = attempts
        self.too_large = too_large


class FormatError(MaeltraceError, ValueError):
    """A file or request that maeltrace reads is malformed, too large or nested too deeply.

    Its message is one line: the file (or request), the place in it, and what is wrong, as in
    ``stats.json: regions[2].samples_ns[7]: a duration must be finite and not negative, not
    -3``. Commands that read such files (``report``, ``compare``, ``replay``) print it and exit
    with status 2; it is a ValueError, so callers that caught ValueError still do.

    Args:
        source: the file or request, as the user would name it.
        where: the place in it (``regions[2].count``); empty for the whole.
        problem: what is wrong there.
    """

    def __init__(self, source: str, where: str, problem: str) -> None:
        self.source = source
        self.where = where
        self.problem = problem
        place = f"{source}: {where}" if where else source
        super().__init__(f"{place}: {_one_line(problem)}")


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, cut to ``limit`` characters: a hostile value cannot flood a
    terminal or forge more lines of output."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class OutboxBusy(MaeltraceError):
    """Another process is writing this outbox (or replaying it) right now."""


class SinkWarning(MaeltraceWarning):
    """A sink could not deliver statistics (tracker down, refused, too slow).

    Issued once per failed call; training goes on, and the values are kept in the output
    folder's ``pending-<sink>.jsonl``.
    """


class SinkError(MaeltraceError):
    """A sink could not log a summary.

    Args:
        message: what went wrong.
        retryable: whether a later try may succeed (the service was down or too slow), as
            opposed to a refusal that would recur (a bad request, no credentials).
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def warn_safely(message: str, category: type[Warning] = ExportWarning, stacklevel: int = 2) -> None:
    """Warns, but never raises: a warnings filter set to ``error`` would otherwise turn a fault
    that must stay off the training thread into an exception on it."""
    with contextlib.suppress(Exception):
        warnings.warn(message, category, stacklevel=stacklevel + 1)
