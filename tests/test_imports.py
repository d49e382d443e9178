"""Imports: ``import maeltrace`` stays light; old integration paths give the same objects."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

HEAVY = (
    "torch",
    "tensorflow",
    "jax",
    "mlflow",
    "wandb",
    "numpy",
    "opentelemetry",
    "keras",
    "tf_keras",
    "lightning",
    "pytorch_lightning",
    "transformers",
)


def test_importing_maeltrace_loads_no_framework_or_sink() -> None:
    code = (
        "import json, sys, maeltrace, maeltrace.deep500.timer; "
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize(
    ("name", "framework"),
    [
        ("keras", "keras"),
        ("tf_keras", "tf_keras"),
        ("lightning", "lightning"),
        ("pytorch_lightning", "pytorch_lightning"),
        ("transformers", "transformers"),
    ],
)
def test_import_maeltrace_alone_reaches_each_integration_when_first_read(
    name: str, framework: str
) -> None:
    # The README's ``maeltrace.keras.TimerCallback`` after only ``import maeltrace``; the
    # framework is imported by that first read, not by ``import maeltrace``.
    pytest.importorskip(framework, reason=f"{framework} is not installed")
    code = (
        "import json, sys, maeltrace; "
        f"before = {framework!r} in sys.modules; "
        f"callback = maeltrace.{name}.TimerCallback; "
        f"print(json.dumps([before, {framework!r} in sys.modules, callback.__module__]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False, True, f"maeltrace.integrations.{name}"]


def test_an_unknown_attribute_is_still_an_attribute_error() -> None:
    import maeltrace

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        maeltrace.nope  # noqa: B018  # the read under test


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
        ("maeltrace.lightning", "maeltrace.integrations.lightning", "lightning"),
        (
            "maeltrace.pytorch_lightning",
            "maeltrace.integrations.pytorch_lightning",
            "pytorch_lightning",
        ),
        ("maeltrace.transformers", "maeltrace.integrations.transformers", "transformers"),
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
