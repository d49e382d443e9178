"""Imports: ``import maeltrace`` stays light; old integration paths give the same objects."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "tensorflow", "jax", "mlflow", "wandb", "numpy", "opentelemetry")


def test_importing_maeltrace_loads_no_framework_or_sink() -> None:
    code = (
        "import json, sys, maeltrace, maeltrace.deep500.timer; "
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_the_public_names_are_exported() -> None:
    import maeltrace

    assert set(maeltrace.__all__) >= {"Timer", "TimeType", "TimeStats", "RegionError"}
    for name in maeltrace.__all__:
        assert getattr(maeltrace, name) is not None


@pytest.mark.parametrize(
    ("old", "new", "framework"),
    [
        ("maeltrace.keras", "maeltrace.integrations.keras", "keras"),
        ("maeltrace.tf_keras", "maeltrace.integrations.tf_keras", "tf_keras"),
        ("maeltrace.deep500.timer", "maeltrace.integrations.deep500.timer", None),
        ("maeltrace.deep500.timer_tf", "maeltrace.integrations.deep500.timer_tf", "keras"),
        ("maeltrace.deep500.timer_torch", "maeltrace.integrations.deep500.timer_torch", "torch"),
    ],
)
def test_the_old_integration_paths_give_the_same_objects(
    old: str, new: str, framework: str | None
) -> None:
    if framework is not None:
        pytest.importorskip(framework, reason=f"{framework} is not installed")
    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    assert old_module.__all__ == new_module.__all__
    for name in new_module.__all__:
        assert getattr(old_module, name) is getattr(new_module, name), name


def test_the_old_deep500_import_line_still_works() -> None:
    # The README's drop-in line: ``from deep500.utils import timer`` becomes this one.
    from maeltrace.deep500 import timer
    from maeltrace.integrations.deep500 import timer as moved

    assert timer.Timer is moved.Timer
    assert timer.TimeType is moved.TimeType
