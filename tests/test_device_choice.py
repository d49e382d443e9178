"""The device clock's documented choice, its one warning and no raise in the loop; without a GPU,
no device times: no GPU rows, spans or metrics, and the report says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from maeltrace import Timer
from maeltrace.devices import registry
from maeltrace.devices.registry import ClockEntry, register
from maeltrace.environment import MAELTRACE_DEVICE
from maeltrace.errors import DeviceClockWarning

TOY = "tests.fakes.toy_clock"
REAL = ("torch", "jax", "jaxlib", "tensorflow")


HIDDEN: dict[str, types.ModuleType] = {}
"""The real frameworks the fixture hid (a module such as torch cannot be imported twice)."""


@pytest.fixture
def toys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Three toy frameworks, imported: a (no GPU), b (a GPU in use), c (arrays of ``toyarrays``);
    the real frameworks hidden from the choice, whatever this process imported."""
    for name in REAL:
        if name in sys.modules:
            HIDDEN[name] = sys.modules[name]
        monkeypatch.delitem(sys.modules, name, raising=False)
    for framework in ("fw_a", "fw_b", "fw_c"):
        monkeypatch.setitem(sys.modules, framework, types.ModuleType(framework))
    register(ClockEntry("toya", f"{TOY}:make", "a", framework="fw_a", gpu_probe=f"{TOY}:no_gpu"))
    register(
        ClockEntry("toyb", f"{TOY}:make", "b", framework="fw_b", gpu_probe=f"{TOY}:gpu_in_use")
    )
    register(ClockEntry("toyc", f"{TOY}:make", "c", framework="fw_c", array_modules=("toyarrays",)))
    yield
    for name in ("toya", "toyb", "toyc"):
        registry.unregister(name)


class ToyArray:
    """An array of the toy framework c."""


ToyArray.__module__ = "toyarrays.core"


class TestOrder:
    def test_the_integrations_framework_comes_first(self, toys: None) -> None:
        assert registry.choose(prefer="toyc", blocked="toya")[0] == "toyc"

    def test_then_the_framework_of_the_arrays_blocked_on(self, toys: None) -> None:
        assert registry.choose(blocked="toyc")[0] == "toyc"  # over b's GPU in use

    def test_then_a_framework_with_a_gpu_in_use(self, toys: None) -> None:
        assert registry.choose()[0] == "toyb"

    def test_then_the_first_imported_in_registration_order(
        self, toys: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delitem(sys.modules, "fw_b")
        assert registry.choose(blocked="toyb")[0] == "toya"  # b is not imported: no hint
        monkeypatch.delitem(sys.modules, "fw_a")
        assert registry.choose()[:2] == ("toyc", "the only framework imported")

    def test_torch_jax_tensorflow_is_the_shipped_order(self) -> None:
        assert registry.clock_names()[:4] == ("torch", "jax", "tensorflow", "cpu")

    def test_an_array_is_known_by_its_type_through_tuples_and_dicts(self, toys: None) -> None:
        assert registry.framework_of(ToyArray()) == "toyc"
        assert registry.framework_of(({"loss": ToyArray()}, 1)) == "toyc"
        assert registry.framework_of(3.0) is None
        assert registry.framework_of([]) is None


class TestTimerChoice:
    def test_a_region_that_blocked_on_arrays_names_the_framework(self, toys: None) -> None:
        tmr = Timer(export=False)
        with tmr.region("load") as region:
            region.block(ToyArray())
        with (
            pytest.warns(DeviceClockWarning, match="the framework of the arrays") as caught,
            tmr.region("step", gpu=True),
        ):
            pass
        assert len(caught) == 1
        assert tmr.device_clock is not None and tmr.device_clock.name == "toy"
        message = str(caught[0].message)
        # Hints name only imported frameworks: a, b, never torch or tensorflow.
        assert "Timer(device='toya' or 'toyb')" in message and "torch" not in message

    def test_the_environment_names_the_clock(
        self, toys: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(MAELTRACE_DEVICE, "toya")
        tmr = Timer(export=False)
        assert tmr.use_device(prefer="toyb").name == "toy"
        assert tmr.device_clock is not None

    def test_a_bad_name_raises_where_the_timer_is_built(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with pytest.raises(ValueError, match="unknown device 'gpu0'; use one of torch"):
            Timer(device="gpu0", export=False)
        monkeypatch.setenv(MAELTRACE_DEVICE, "gpu0")
        with pytest.raises(ValueError, match=f"'gpu0' \\(from {MAELTRACE_DEVICE}\\)"):
            Timer(export=False)


class TestFakeGpuInUse:
    def test_a_framework_with_a_gpu_in_use_gets_gpu_rows(
        self, toys: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        if "torch" in HIDDEN:  # torch imported (it sees no GPU): the fake GPU comes first
            monkeypatch.setitem(sys.modules, "torch", HIDDEN["torch"])
        else:
            pytest.importorskip("torch", reason="the CUDA-event clock is part of the torch extra")
        monkeypatch.setitem(sys.modules, "fake_cuda_fw", types.ModuleType("fake_cuda_fw"))
        monkeypatch.delitem(sys.modules, "fw_b")
        register(
            ClockEntry(
                "fakecuda",
                "tests.fakes.cuda:fake_cuda_clock",
                "CUDA events on a fake GPU",
                framework="fake_cuda_fw",
                gpu_probe=f"{TOY}:gpu_in_use",
            )
        )
        try:
            tmr = Timer(export=False)
            with pytest.warns(DeviceClockWarning, match="the framework with a GPU in use"):
                tmr.start("batch", gpu=True)
            tmr.end("batch")
            for _ in range(2):
                with tmr.region("batch", gpu=True):
                    pass
            assert tmr.device_clock is not None and tmr.device_clock.name == "cuda-event"
            assert tmr.get_time_stats("batch", gpu=True).count == 3
            text = tmr.summary().to_markdown()
            assert "| Batch (GPU) " in text and "GPU rows: cuda-event" in text
            assert "No GPU rows" not in text
        finally:
            registry.unregister("fakecuda")


CPU_RUN = """
import json, sys, warnings
{imports}
import maeltrace
from maeltrace.sinks.base import metric_values

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tmr = maeltrace.Timer(output_dir=sys.argv[1], handle_signals=False)
    for epoch in range(2):
        with tmr.region("epoch"):
            for _ in range(3):
                with tmr.region("batch", gpu=True):
                    pass
    tmr.close()
summary = tmr.summary()
try:
    tmr.get_time("batch", gpu=True)
    error = None
except KeyError as exc:
    error = str(exc)
print(json.dumps({{
    "warnings": [str(w.message) for w in caught
                 if issubclass(w.category, maeltrace.errors.DeviceClockWarning)],
    "clock": tmr.device_clock.name,
    "cpu_batches": tmr.get_time_stats("batch").count,
    "gpu_rows": [row.label for row in summary.rows if row.device],
    "report": summary.to_markdown(),
    "metrics": sorted(metric_values(summary)),
    "traces": "".join(p.read_text() for p in tmr.output_dir.glob("traces*.otlp.jsonl")),
    "stats": "".join(p.read_text() for p in tmr.output_dir.glob("stats*.json")),
    "error": error,
    "modules": sorted(m for m in ("torch", "jax", "tensorflow") if m in sys.modules),
}}))
"""


def _cpu_run(tmp_path: Path, *frameworks: str) -> dict[str, object]:
    for framework in frameworks:
        pytest.importorskip(framework, reason=f"the {framework} extra is not installed")
    code = CPU_RUN.format(imports="\n".join(f"import {f}" for f in frameworks))
    # The embedded default (files), whatever export settings the test session has.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MAELTRACE_"))}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


class TestNoGpu:
    """Frameworks imported side by side on a machine without a GPU, each in a fresh process."""

    def _check(self, result: dict[str, object], chosen: str, reason: str, others: str) -> None:
        assert result["clock"] in ("cpu-sync", "jax-block")
        warnings = result["warnings"]
        assert isinstance(warnings, list) and len(warnings) == 1, warnings
        message = warnings[0]
        assert f"the {chosen!r} device clock" in message and reason in message
        assert f"Timer(device={others})" in message and "MAELTRACE_DEVICE" in message
        assert result["cpu_batches"] == 6
        # No GPU rows, no [gpu] spans or gpu attributes, no /gpu metrics, and the one line why.
        assert result["gpu_rows"] == []
        assert all("/gpu" not in name for name in result["metrics"])  # type: ignore[attr-defined]
        traces = str(result["traces"])
        assert '"batch"' in traces and "[gpu]" not in traces and "maeltrace.gpu" not in traces
        assert '"gpu"' not in str(result["stats"])
        line = (
            f"No GPU rows: no GPU was found ({reason}); gpu=True regions were timed on the CPU "
            "clock only."
        )
        assert line in str(result["report"])
        assert f"no GPU: {reason}" in str(result["error"])

    def test_tensorflow_with_jax_imported(self, tmp_path: Path) -> None:
        result = _cpu_run(tmp_path, "tensorflow", "jax")
        assert result["modules"] == ["jax", "tensorflow"]
        self._check(result, "jax", "JAX's backend is cpu", "'tensorflow'")

    def test_torch_tensorflow_and_jax(self, tmp_path: Path) -> None:
        result = _cpu_run(tmp_path, "torch", "tensorflow", "jax")
        self._check(result, "torch", "torch sees no CUDA device", "'jax' or 'tensorflow'")

    def test_no_framework(self, tmp_path: Path) -> None:
        result = _cpu_run(tmp_path)
        assert result["modules"] == []
        warnings = result["warnings"]
        assert isinstance(warnings, list) and len(warnings) == 1
        assert "no framework is imported" in warnings[0] and "Timer(device=...)" in warnings[0]
        assert result["gpu_rows"] == []
