"""JAX: device time by waiting for a region's outputs, with compiling regions set apart."""

from __future__ import annotations

import threading
import warnings
from time import perf_counter_ns
from typing import TYPE_CHECKING, TypeVar

import jax
import jax.monitoring

from maeltrace.devices.base import FLAG_COMPILED, DeviceClock, DeviceTimes
from maeltrace.errors import DeviceClockWarning
from maeltrace.records import NO_DEVICE_TIME

if TYPE_CHECKING:
    from maeltrace.devices.registry import ClockOptions

__all__ = ["JaxBlockClock", "jax_clock"]

T = TypeVar("T")

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class _CompileCounter(threading.local):
    count = 0


_compiles = _CompileCounter()


def _on_duration(event: str, duration_secs: float, **_: object) -> None:
    if event == _COMPILE_EVENT:
        _compiles.count += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)


class JaxBlockClock:
    """Host time from the region's start until ``region.block(outputs)`` returned.

    JAX dispatches asynchronously: without waiting, a region measures only the dispatch. The
    region waits with ``jax.block_until_ready`` on what it hands to `block`; a gpu region that
    never calls it gets no device time (one warning per key). Regions during which JAX compiled
    (a first call of a jitted function) are flagged and reported apart from the steady state.

    On the CPU backend there is no GPU: the clock still waits and flags compiling regions, but
    records no device times (``no_gpu_reason`` says so), so regions keep their CPU time only.

    Args:
        times: where resolved times go.
        no_gpu_reason: why there is no GPU, where there is none; None measures device times.
    """

    name = "jax-block"
    host_syncs = 0
    host_offset_ns = 0

    def __init__(self, times: DeviceTimes, no_gpu_reason: str | None = None) -> None:
        self._times = times
        self._unblocked: set[int] = set()
        self.no_gpu_reason = no_gpu_reason
        self.description = (
            "host clock from region start until jax.block_until_ready(outputs) returned "
            f"(backend {jax.default_backend()})"
        )
        if no_gpu_reason is not None:
            self.description = f"no GPU ({no_gpu_reason}): gpu=True regions have CPU times only"

    def open(self, key_id: int) -> object:
        return [key_id, _compiles.count, perf_counter_ns(), None]

    def block(self, handle: object, value: T) -> T:
        value = jax.block_until_ready(value)  # type: ignore[no-untyped-call]  # untyped in jax
        if isinstance(handle, list):
            handle[3] = perf_counter_ns()
        return value

    def close(self, seq: int, handle: object, status: int) -> None:
        assert isinstance(handle, list)
        key_id, compiles, start, ready = handle
        if self.no_gpu_reason is not None:
            if _compiles.count != compiles:  # the CPU row still keeps first calls apart
                self._times.add(seq, start, NO_DEVICE_TIME, FLAG_COMPILED)
            return
        if ready is None:
            if key_id not in self._unblocked:
                self._unblocked.add(key_id)
                warnings.warn(
                    "a gpu=True region ended without region.block(outputs): JAX runs "
                    "asynchronously, so it has no device time",
                    DeviceClockWarning,
                    stacklevel=3,
                )
            return
        flags = FLAG_COMPILED if _compiles.count != compiles else 0
        self._times.add(seq, start, ready - start, flags)

    def poll(self) -> None:
        return None

    def flush(self) -> None:
        return None


def jax_clock(times: DeviceTimes, options: ClockOptions | None = None) -> DeviceClock:
    """The JAX clock, on whatever backend JAX runs.

    The ``jax`` entry of `maeltrace.devices.registry`; it takes no options. On the CPU backend
    it records no device times (`JaxBlockClock`'s ``no_gpu_reason``).
    """
    backend = jax.default_backend()
    return JaxBlockClock(times, f"JAX's backend is {backend}" if backend == "cpu" else None)
