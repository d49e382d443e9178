"""SIGTERM and SIGINT write the open timers' files, then end the process as they would have."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from time import monotonic
from types import FrameType
from typing import Any, Protocol

__all__ = ["EXPORT_SHARE", "SIGNALS", "SIGNAL_TIMEOUT_S", "Writable", "install"]

SIGNAL_TIMEOUT_S = 5.0
"""How long all timers together may take to write their files once a signal came; after that
the signal ends the process whatever is left. Read at each signal."""

EXPORT_SHARE = 0.6
"""The share of `SIGNAL_TIMEOUT_S` the exports may wait for their endpoint: the rest is for the
stats and trace files, which a stuck endpoint must not keep from being written."""

SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals handled: the ones Slurm, Kubernetes, torchrun and a terminal end a job with."""

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
"""A disposition as `signal.getsignal` returns it."""


class Writable(Protocol):
    """What a signal writes: a `maeltrace.Timer`."""

    def close(self, timeout_s: float = ...) -> None:
        """Exports, writes the files and stops the exporter."""

    def flush(self, timeout_s: float = ...) -> None:
        """Exports what was recorded so far."""

    def write_outputs(self) -> object:
        """Writes the stats and trace files."""


@dataclass
class _State:
    """The handler's state, one per process (a forked child inherits its parent's)."""

    pid: int = 0
    """The process that installed the handler; 0 before."""
    timers: Callable[[], Iterable[Writable]] = tuple
    """The timers to write, asked for when a signal comes."""
    previous: dict[int, Handler] = field(default_factory=dict)
    """Each handled signal's disposition before ours: what it chains to."""
    writing: bool = False


_state = _State()


def install(timers: Callable[[], Iterable[Writable]]) -> bool:
    """Makes SIGTERM and SIGINT write the files of ``timers()`` before the signal takes effect.

    Only the main thread can set handlers (elsewhere this does nothing), and only once per
    process. A signal is taken over only where its disposition is the default (``SIG_DFL``,
    Python's `signal.default_int_handler`) or a Python handler, which ours then calls after
    writing; an ignored signal stays ignored. A handler set later replaces ours.

    Returns:
        Whether a handler of ours is in place for at least one signal.
    """
    pid = os.getpid()
    if _state.pid == pid:
        return bool(_state.previous)
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        return False
    inherited = _state.previous
    previous: dict[int, Handler] = {}
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if current is _on_signal and signum in inherited:
            # A forked child whose fork hook could not restore the parent's disposition.
            previous[signum] = inherited[signum]
            continue
        if not _takes_over(current):
            continue
        try:
            signal.signal(signum, _on_signal)
        except (ValueError, OSError):  # not the main interpreter, or a signal it cannot catch
            continue
        previous[signum] = current
    if not _state.pid:
        os.register_at_fork(after_in_child=_after_fork_in_child)
    _state.pid, _state.timers, _state.previous = pid, timers, previous
    return bool(previous)


def _takes_over(current: Handler) -> bool:
    """Whether a disposition is one a handler of ours may wrap: not ignored, not set in C."""
    return current is not None and current != signal.SIG_IGN and current is not _on_signal


def _after_fork_in_child() -> None:
    """In a forked child (a data loader worker), puts back the dispositions ours replaced: the
    child writes none of its parent's files, and SIGTERM ends it in the kernel as before, even
    while it runs C code for long (a Python handler waits for the main thread's next bytecode)."""
    for signum, previous in _state.previous.items():
        try:
            if signal.getsignal(signum) is _on_signal and previous is not None:
                signal.signal(signum, previous)
        except (ValueError, OSError):  # not the main thread: _on_signal checks the pid instead
            pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Writes the timers' files (bounded), then does what the signal would have done."""
    previous = _state.previous.get(signum, signal.SIG_DFL)
    if _state.writing:
        # A signal came in while the files are written (see below): the user wants out now.
        _end_by(signum)
    if os.getpid() != _state.pid:
        # A forked child (a data loader worker): its timers are its parent's, which writes them.
        _chain(signum, frame, previous)
        return
    # A second signal now ends the process at once, at the C level, even if this thread is
    # stuck; each handled signal gets ours back once the files are written.
    for handled in _state.previous:
        signal.signal(handled, signal.SIG_DFL)
    _state.writing = True
    try:
        # A Python handler may let the run go on: write the files and keep the timers open (exit
        # or a later signal closes them). The defaults end the run: close the timers.
        _write(signum, close=previous == signal.SIG_DFL or previous is signal.default_int_handler)
    finally:
        _state.writing = False
        for handled in _state.previous:
            signal.signal(handled, _on_signal)
    _chain(signum, frame, previous)


def _write(signum: int, *, close: bool) -> None:
    """Writes every timer's files on a thread of its own, waiting for it `SIGNAL_TIMEOUT_S` at
    most: the interrupted main thread may hold a lock that writing needs."""
    name = signal.Signals(signum).name
    start = monotonic()
    deadline = start + SIGNAL_TIMEOUT_S
    export_deadline = start + SIGNAL_TIMEOUT_S * EXPORT_SHARE
    writer = threading.Thread(
        target=_write_all,
        args=(name, _state.timers, deadline, export_deadline, close),
        name="maeltrace-signal",
        daemon=True,
    )
    try:
        writer.start()
    except RuntimeError as exc:  # the interpreter is shutting down: no thread can start
        print(f"maeltrace: {name}: could not write the timers' files: {exc}", file=sys.stderr)
        return
    writer.join(max(0.0, deadline - monotonic()))
    if writer.is_alive():
        print(
            f"maeltrace: {name}: gave up writing the timers' files after {SIGNAL_TIMEOUT_S:g} s "
            "(maeltrace._signals.SIGNAL_TIMEOUT_S); finished epochs stay in the output folder's "
            "outbox for `maeltrace replay`",
            file=sys.stderr,
        )


def _write_all(
    name: str,
    timers: Callable[[], Iterable[Writable]],
    deadline: float,
    export_deadline: float,
    close: bool,
) -> None:
    """Closes (or flushes and writes) each timer in turn until the deadline."""
    try:
        for tmr in timers():
            if monotonic() >= deadline:
                return
            # Never 0: a timer whose turn comes late still gets a moment to hand its spans over.
            wait_s = max(0.1, export_deadline - monotonic())
            try:
                if close:
                    tmr.close(timeout_s=wait_s)
                else:
                    tmr.flush(timeout_s=wait_s)
                    tmr.write_outputs()
            except Exception as exc:  # the signal must still end the process
                print(f"maeltrace: {name}: could not write {tmr!r}: {exc}", file=sys.stderr)
    except Exception as exc:  # listing the timers failed: same reason
        print(f"maeltrace: {name}: could not write the timers' files: {exc}", file=sys.stderr)


def _chain(signum: int, frame: FrameType | None, previous: Handler) -> None:
    """Does what the signal would have done without us."""
    if previous is signal.default_int_handler:
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt, as always
    elif callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        _end_by(signum)


def _end_by(signum: int) -> None:
    """Ends the process by the signal's default action: the status says "killed by signal"."""
    signal.signal(signum, signal.SIG_DFL)
    # raise(3) delivers to this very thread before it returns; os.kill could pick another.
    signal.raise_signal(signum)
    # Only reached where the default action does not end the process (it does for both).
    os._exit(128 + signum)
