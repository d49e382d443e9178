"""The device clock registry: a clock added by one registration is chosen by name or framework."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from maeltrace import Timer
from maeltrace.devices import registry
from maeltrace.devices.base import DeviceTimes
from maeltrace.devices.registry import ClockEntry, register
from maeltrace.errors import DeviceClockWarning

TOY_MODULE = "tests.fakes.toy_clock"


@pytest.fixture
def toy() -> Iterator[ClockEntry]:
    """The toy clock, registered for one test, its module not yet imported."""
    sys.modules.pop(TOY_MODULE, None)
    entry = register(
        ClockEntry(
            "toy",
            f"{TOY_MODULE}:make",
            "one microsecond per region",
            framework="toy_framework",
            aliases=("toy-device",),
        )
    )
    yield entry
    registry.unregister("toy")


class TestRegisteredClock:
    def test_a_timer_uses_a_clock_registered_by_name(self, toy: ClockEntry) -> None:
        tmr = Timer(device="toy", export=False, sync_every=3)
        assert TOY_MODULE not in sys.modules  # imported when chosen, not when registered
        for _ in range(4):
            with tmr.region("step", gpu=True):
                pass
        clock = tmr.device_clock
        assert clock is not None and clock.name == "toy"
        assert clock.sync_every == 3  # type: ignore[attr-defined]  # the toy's own attribute
        assert tmr.get_time("step", gpu=True) == [1e-6] * 4

    def test_an_alias_names_the_same_clock(self, toy: ClockEntry) -> None:
        assert Timer(device="toy-device", export=False).use_device().name == "toy"

    def test_an_unknown_device_lists_the_registered_clocks(self, toy: ClockEntry) -> None:
        with pytest.raises(ValueError, match=r"use one of torch, jax, tensorflow, cpu, toy$"):
            Timer(device="tpu", export=False)

    def test_a_name_or_alias_is_registered_once(self, toy: ClockEntry) -> None:
        for name, aliases in (("toy", ()), ("other", ("cuda",)), ("keras", ())):
            with pytest.raises(ValueError, match="already registered"):
                register(ClockEntry(name, f"{TOY_MODULE}:make", "again", aliases=aliases))
        assert registry.clock_names() == ("torch", "jax", "tensorflow", "cpu", "toy")

    def test_a_factory_names_its_module_and_attribute(self) -> None:
        with pytest.raises(ValueError, match="'module:attribute'"):
            register(ClockEntry("bad", TOY_MODULE, "no attribute"))
        assert not registry.is_known("bad")

    def test_unregistering_removes_the_name_and_its_aliases(self, toy: ClockEntry) -> None:
        registry.unregister("toy")
        assert not registry.is_known("toy") and not registry.is_known("toy-device")
        register(toy)  # for the fixture to remove again


class TestChoiceByFramework:
    def test_the_clock_of_the_one_imported_framework_is_chosen(self) -> None:
        # A fresh interpreter: the test process may have imported torch, jax or tensorflow.
        code = (
            "import sys, types, warnings\n"
            "from maeltrace.devices import registry\n"
            "from maeltrace.devices.base import DeviceTimes\n"
            "registry.register(registry.ClockEntry("
            f"'toy', '{TOY_MODULE}:make', 'toy', framework='toy_framework'))\n"
            "with warnings.catch_warnings(record=True):\n"
            "    warnings.simplefilter('always')\n"
            "    print(registry.make_clock(None, DeviceTimes()).name)\n"
            "sys.modules['toy_framework'] = types.ModuleType('toy_framework')\n"
            "print(registry.make_clock(None, DeviceTimes()).name)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert out.split() == ["cpu-sync", "toy"]

    def test_several_imported_frameworks_choose_one_and_warn_once(self, toy: ClockEntry) -> None:
        register(ClockEntry("toy2", f"{TOY_MODULE}:make", "again", framework="toy_framework2"))
        try:
            with pytest.MonkeyPatch.context() as patch:
                for framework in ("toy_framework", "toy_framework2"):
                    patch.setitem(sys.modules, framework, sys.modules[__name__])
                for real in ("torch", "jax", "tensorflow"):  # whatever this process imported
                    patch.delitem(sys.modules, real, raising=False)
                with pytest.warns(DeviceClockWarning) as caught:
                    chosen = registry.make_clock(None, DeviceTimes())
                assert chosen.name == "toy"  # the first registered of those imported
                assert len(caught) == 1
                message = str(caught[0].message)
                assert "'toy' device clock" in message and "Timer(device='toy2')" in message
                assert "MAELTRACE_DEVICE" in message
                assert registry.make_clock(None, DeviceTimes(), prefer="toy2").name == "toy"
        finally:
            registry.unregister("toy2")
