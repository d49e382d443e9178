"""Device clocks by name: their aliases, the framework each belongs to, and the choice of one."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, cast

from maeltrace._imports import load

if TYPE_CHECKING:
    from maeltrace.devices.base import DeviceClock, DeviceTimes

__all__ = [
    "CLOCK_NAMES",
    "ClockBuilder",
    "ClockEntry",
    "ClockOptions",
    "canonical_name",
    "clock_names",
    "entries",
    "is_known",
    "make_clock",
    "register",
    "unregister",
]


@dataclass(frozen=True)
class ClockOptions:
    """The timer's settings a clock may use; each clock reads only those it knows.

    Attributes:
        sync_every: measure every N-th region of each key only (the ``tensorflow`` clock).
    """

    sync_every: int = 1


ClockBuilder: TypeAlias = "Callable[[DeviceTimes, ClockOptions], DeviceClock]"
"""What a registered factory is: it builds the clock that puts resolved times into ``times``."""


@dataclass(frozen=True)
class ClockEntry:
    """One device clock the timer can build by name.

    Attributes:
        name: the name ``Timer(device=...)`` takes, also listed in errors.
        factory: ``"module:attribute"`` of its `ClockBuilder`; the module (which may import a
            heavy framework) is imported only when this clock is chosen.
        description: what the clock measures, in a few words.
        framework: the module whose presence in `sys.modules` makes this clock a candidate
            when the timer names none; None for a clock never chosen that way.
        aliases: other names for the clock.
    """

    name: str
    factory: str
    description: str
    framework: str | None = None
    aliases: tuple[str, ...] = ()

    def load(self) -> ClockBuilder:
        """Imports the factory's module and returns the factory."""
        return cast("ClockBuilder", load(self.factory))


_ENTRIES: dict[str, ClockEntry] = {}
_ALIASES: dict[str, str] = {}


def register(entry: ClockEntry) -> ClockEntry:
    """Adds a device clock, after those registered before it (the order of automatic choice).

    Raises:
        ValueError: the factory is not ``"module:attribute"``, or the name or an alias is taken.
    """
    module, _, attribute = entry.factory.partition(":")
    if not module or not attribute:
        raise ValueError(f"factory must be 'module:attribute', not {entry.factory!r}")
    for name in (entry.name, *entry.aliases):
        if name in _ENTRIES or name in _ALIASES:
            raise ValueError(f"device clock name {name!r} is already registered")
    _ENTRIES[entry.name] = entry
    _ALIASES.update(dict.fromkeys(entry.aliases, entry.name))
    return entry


def unregister(name: str) -> None:
    """Removes the clock registered as ``name`` and its aliases (tests use it to clean up)."""
    entry = _ENTRIES.pop(name)
    for alias in entry.aliases:
        del _ALIASES[alias]


def entries() -> tuple[ClockEntry, ...]:
    """Every registered clock, in registration order."""
    return tuple(_ENTRIES.values())


def clock_names() -> tuple[str, ...]:
    """Names of every registered clock, in registration order."""
    return tuple(_ENTRIES)


def canonical_name(device: str) -> str:
    """The clock name ``device`` stands for (itself unless it is an alias)."""
    return _ALIASES.get(device, device)


def is_known(device: str) -> bool:
    """Whether ``device`` names a registered clock or an alias of one."""
    return canonical_name(device) in _ENTRIES


def _imported_frameworks() -> list[ClockEntry]:
    return [e for e in _ENTRIES.values() if e.framework is not None and e.framework in sys.modules]


def make_clock(
    device: str | None, times: DeviceTimes, *, prefer: str | None = None, sync_every: int = 1
) -> DeviceClock:
    """Builds the device clock for ``device``, or for the framework in use when it is None.

    Args:
        device: a registered name or alias: ``torch`` (alias ``cuda``), ``tensorflow``
            (``tf``, ``keras``), ``jax``, ``cpu``; or None.
        times: where the clock puts resolved times.
        prefer: the clock of the framework an integration works in (the Keras callback passes
            ``tensorflow``), used when ``device`` is None.
        sync_every: for the ``tensorflow`` clock: measure every N-th region of each key.

    Raises:
        ValueError: ``device`` names no clock, or it is None and several frameworks are
            imported with no preference.
    """
    name = canonical_name(device) if device is not None else None
    if name is None:
        imported = _imported_frameworks()
        if prefer is not None:
            name = prefer
        elif len(imported) == 1:
            name = imported[0].name
        elif not imported:
            name = "cpu"
        else:
            frameworks = ", ".join(str(e.framework) for e in imported)
            raise ValueError(
                f"gpu=True, but several frameworks are imported ({frameworks}); "
                "name the device clock, e.g. Timer(device='torch')"
            )
    entry = _ENTRIES.get(name)
    if entry is None:
        raise ValueError(f"unknown device clock {device!r}; use one of {', '.join(_ENTRIES)}")
    # Called here, not through a helper: the clocks' warnings count their stack levels from it.
    return entry.load()(times, ClockOptions(sync_every=sync_every))


# The clocks shipped. Adding one: its module with a ClockBuilder, and one line here.
register(
    ClockEntry(
        "torch",
        "maeltrace.devices.torch_cuda:torch_clock",
        "CUDA events around each region, resolved without stalling",
        framework="torch",
        aliases=("cuda",),
    )
)
register(
    ClockEntry(
        "tensorflow",
        "maeltrace.devices.tensorflow:tf_clock",
        "a device synchronisation at both ends of a region",
        framework="tensorflow",
        aliases=("tf", "keras"),
    )
)
register(
    ClockEntry(
        "jax",
        "maeltrace.devices.jax:jax_clock",
        "host time until the region's outputs are ready",
        framework="jax",
    )
)
register(
    ClockEntry(
        "cpu",
        "maeltrace.devices.base:cpu_clock",
        "the CPU clock, where no framework is imported",
    )
)

CLOCK_NAMES = clock_names()
"""The device clocks shipped with maeltrace (`clock_names` adds those registered since)."""
