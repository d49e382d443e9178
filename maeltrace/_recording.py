"""What a timer hands out and binds: the Region protocol, the null region, the compiled recorder."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar

from maeltrace.keys import Key

if TYPE_CHECKING:
    from maeltrace import _hotpath

__all__ = ["NULL_REGION", "CountedRegion", "Region", "hotpath_recorder", "noop", "thread_info"]

T = TypeVar("T")


class Region(Protocol):
    """The context manager `Timer.region` returns: one per key and timer, reusable, and shared
    by threads (the open region lives in the thread's log, not in this object)."""

    @property
    def key(self) -> Key:
        """The region key."""

    @property
    def gpu(self) -> bool:
        """Whether the region also measures device time."""

    def block(self, value: T) -> T:
        """Waits until ``value`` (the region's outputs) is computed on the device; returns it.

        JAX dispatches asynchronously: ``with tmr.region(k, gpu=True) as r: r.block(f(x))``
        times the work, not its dispatch. Elsewhere it returns ``value`` at once.
        """

    def __enter__(self) -> Region: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def hotpath_recorder() -> type[_hotpath.Recorder] | None:
    """The compiled recorder type, or None where the extension was not built."""
    try:
        from maeltrace import _hotpath
    except ImportError:
        return None
    return _hotpath.Recorder


class _NullRegion:
    """What `Timer.region` returns on a disabled timer."""

    __slots__ = ()
    key = ""
    gpu = False

    def __enter__(self) -> _NullRegion:
        return self

    def block(self, value: T) -> T:
        return value

    def __exit__(self, *exc: object) -> None:
        return None


NULL_REGION = _NullRegion()
"""What `Timer.region` returns on a disabled timer."""


class CountedRegion:
    """`Timer.region` given a count (``items``, ``tokens``): the key's own region, and, as it
    opens, the count noted for it by sequence number. Made per call (the count changes from
    batch to batch) from a target the timer keeps per key.

    Args:
        target: the key's region, its key id, the recorder's ``open_seq`` (the sequence number
            of this thread's open region of a key id) and the ``extend`` of the array that
            keeps ``(seq, items, tokens)`` triples (`maeltrace.records.RegionCounts`).
        items: items (samples) the region works on.
        tokens: tokens the region works on.
    """

    __slots__ = ("_items", "_target", "_tokens")

    def __init__(self, target: CountTarget, items: int, tokens: int) -> None:
        self._target = target
        self._items = items
        self._tokens = tokens

    @property
    def key(self) -> Key:
        return self._target[0].key

    @property
    def gpu(self) -> bool:
        return self._target[0].gpu

    def block(self, value: T) -> T:
        return self._target[0].block(value)

    def __enter__(self) -> CountedRegion:
        region, key_id, open_seq, extend = self._target
        region.__enter__()
        extend((open_seq(key_id), self._items, self._tokens))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._target[0].__exit__(exc_type, exc, tb)


CountTarget = tuple[Region, int, Callable[[int], int], Callable[[tuple[int, int, int]], None]]
"""What a `CountedRegion` opens and where its count goes (see its ``target`` argument)."""


def noop(key: Key, gpu: bool = False) -> None:
    """A disabled timer's ``start`` and ``end``."""
    return None


def thread_info() -> tuple[int | None, int | None, str]:
    """The calling thread's ident, native id and name, for its log."""
    thread = threading.current_thread()
    return (thread.ident, thread.native_id, thread.name)
