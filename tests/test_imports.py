"""``import maeltrace`` stays light: no framework or sink is imported with it."""

from __future__ import annotations

import json
import subprocess
import sys

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
