"""Device clocks by name: their aliases, the framework each belongs to, and the choice of one."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, cast

from maeltrace._imports import load
from maeltrace.errors import DeviceClockWarning

if TYPE_CHECKING:
    from maeltrace.devices.base import DeviceClock, DeviceTimes

__all__ = [
    "CLOCK_NAMES",
    "ClockBuilder",
    "ClockEntry",
    "ClockOptions",
    "canonical_name",
    "choose",
    "clock_names",
    "entries",
    "framework_of",
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
        memory: also measure each gpu region's peak device memory, where the clock can read
            it from the framework's allocator without waiting for the device (``torch``).
    """

    sync_every: int = 1
    memory: bool = False


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
        gpu_probe: ``"module:attribute"`` of a function telling, cheaply and without starting
            the framework's GPU runtime, whether the (imported) framework has a GPU in use.
        array_modules: top-level modules whose arrays belong to this clock's framework (the
            arrays regions block on); default the framework itself.
    """

    name: str
    factory: str
    description: str
    framework: str | None = None
    aliases: tuple[str, ...] = ()
    gpu_probe: str | None = None
    array_modules: tuple[str, ...] = ()

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


def framework_of(value: object) -> str | None:
    """The clock whose framework made ``value`` (an array, or a tuple, list or dict whose first
    item is one), or None; looks at types only, never at the device."""
    for _ in range(3):  # a few levels of nesting: (loss, logits), {"x": ...}
        if isinstance(value, dict):
            value = next(iter(value.values()), None)
        elif isinstance(value, list | tuple):
            value = value[0] if value else None
        else:
            break
    if value is None:
        return None
    root = type(value).__module__.partition(".")[0]
    for entry in _ENTRIES.values():
        if entry.framework is not None and root in (entry.array_modules or (entry.framework,)):
            return entry.name
    return None


def _gpu_in_use(entry: ClockEntry) -> bool:
    """Whether the entry's imported framework has a GPU in use; a failing probe says no."""
    if entry.gpu_probe is None:
        return False
    try:
        return bool(load(entry.gpu_probe)())
    except Exception:  # a private API moved: the probe is a hint, never a reason to fail
        return False


def choose(
    prefer: str | None = None, blocked: str | None = None
) -> tuple[str, str, list[ClockEntry]]:
    """The clock the timer takes when it names none, in the documented order.

    (a) ``prefer``, the integration's framework; (b) ``blocked``, the framework of the arrays
    regions blocked on; (c) the imported framework with a GPU in use; (d) the first imported
    of torch, jax, tensorflow (registration order); else ``cpu``.

    Returns:
        The clock's name, why it was chosen, and the imported frameworks' entries.
    """
    imported = _imported_frameworks()
    if prefer is not None:
        return canonical_name(prefer), "the integration's framework", imported
    names = [e.name for e in imported]
    if blocked is not None and blocked in names:
        return blocked, "the framework of the arrays regions blocked on", imported
    in_use = [e for e in imported if _gpu_in_use(e)]
    if in_use:
        return in_use[0].name, "the framework with a GPU in use", imported
    if len(imported) == 1:
        return imported[0].name, "the only framework imported", imported
    if imported:
        return imported[0].name, "the first imported of " + ", ".join(names), imported
    return "cpu", "no framework is imported", imported


def make_clock(
    device: str | None,
    times: DeviceTimes,
    *,
    prefer: str | None = None,
    sync_every: int = 1,
    blocked: str | None = None,
    memory: bool = False,
) -> DeviceClock:
    """Builds the device clock for ``device``, or chooses one (`choose`) when it is None.

    A choice among several frameworks, and a clock that found no GPU (it then records no
    device times: ``gpu=True`` regions get CPU times only), give one `DeviceClockWarning`
    saying what was chosen and how to choose otherwise.

    Args:
        device: a registered name or alias: ``torch`` (alias ``cuda``), ``tensorflow``
            (``tf``, ``keras``), ``jax``, ``cpu``; or None.
        times: where the clock puts resolved times.
        prefer: the clock of the framework an integration works in (the Keras callback passes
            its backend's), used when ``device`` is None.
        sync_every: for the ``tensorflow`` clock: measure every N-th region of each key.
        blocked: the clock of the arrays regions blocked on so far, used when ``device`` is
            None and that framework is imported.
        memory: also measure peak device memory per gpu region (`ClockOptions.memory`).

    Raises:
        ValueError: ``device`` (or ``prefer``) names no clock; the timer checks ``device`` when
            it is built, so this never happens inside a training loop.
    """
    why = ""
    imported: list[ClockEntry] = []
    if device is None:
        name, why, imported = choose(prefer, blocked)
    else:
        name = canonical_name(device)
    entry = _ENTRIES.get(name)
    if entry is None:
        raise ValueError(
            f"unknown device clock {device or prefer!r}; use one of {', '.join(_ENTRIES)}"
        )
    # Called here, not through a helper: the clocks' warnings count their stack levels from it.
    clock = entry.load()(times, ClockOptions(sync_every=sync_every, memory=memory))
    no_gpu = getattr(clock, "no_gpu_reason", None)
    if len(imported) > 1 or no_gpu:
        # Stack: here, Timer.use_device, Timer._device_open, the region's start.
        warnings.warn(_choice_message(entry, why, imported, no_gpu), DeviceClockWarning, 4)
    return clock


def _choice_message(
    entry: ClockEntry, why: str, imported: list[ClockEntry], no_gpu: str | None
) -> str:
    """What was chosen and how to choose otherwise; names only frameworks that are imported."""
    text = f"gpu=True regions use the {entry.name!r} device clock"
    if why:
        text += f" ({why})"
    if no_gpu:
        text += f"; no GPU was found ({no_gpu}): they are timed on the CPU clock only"
    others = [e.name for e in imported if e.name != entry.name]
    if others:
        names = " or ".join(repr(n) for n in others)
        text += f"; to use another, pass Timer(device={names}) or set MAELTRACE_DEVICE"
    elif why and not imported:
        text += "; import the framework before the first gpu region, or pass Timer(device=...)"
    return text


# The clocks shipped. Adding one: its module with a ClockBuilder, and one line here.
register(
    ClockEntry(
        "torch",
        "maeltrace.devices.torch_cuda:torch_clock",
        "CUDA events around each region, resolved without stalling",
        framework="torch",
        aliases=("cuda",),
        gpu_probe="maeltrace.devices._probes:torch_gpu_in_use",
    )
)
register(
    ClockEntry(
        "jax",
        "maeltrace.devices.jax:jax_clock",
        "host time until the region's outputs are ready",
        framework="jax",
        gpu_probe="maeltrace.devices._probes:jax_gpu_in_use",
        array_modules=("jax", "jaxlib"),
    )
)
register(
    ClockEntry(
        "tensorflow",
        "maeltrace.devices.tensorflow:tf_clock",
        "a device synchronisation at both ends of a region",
        framework="tensorflow",
        aliases=("tf", "keras"),
        gpu_probe="maeltrace.devices._probes:tf_gpu_in_use",
    )
)
register(
    ClockEntry(
        "cpu",
        "maeltrace.devices.base:cpu_clock",
        "no device time: the CPU clock only, where no framework is imported",
    )
)

CLOCK_NAMES = clock_names()
"""The device clocks shipped with maeltrace (`clock_names` adds those registered since)."""
