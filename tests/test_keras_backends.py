"""Keras 3 on the jax and torch backends: `TimerCallback(gpu=True)` uses the backend's device
clock, not TensorFlow's (real Keras fits, each in its own process, since Keras chooses its
backend once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, warnings
import numpy as np
import keras
import maeltrace
from maeltrace.keras import TimerCallback

tmr = maeltrace.Timer(export=False)
model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model.fit(np.zeros((8, 4)), np.zeros((8, 1)), batch_size=4, epochs=1, verbose=0,
              callbacks=[TimerCallback(tmr, gpu=True)])
print(json.dumps({
    "backend": keras.backend.backend(),
    "clock": tmr.device_clock.name,
    "clock_no_gpu": bool(getattr(tmr.device_clock, "no_gpu_reason", None)),
    "warnings": [str(w.message) for w in caught
                 if isinstance(w.message, maeltrace.MaeltraceWarning)],
}))
"""


def fit_on(backend: str) -> dict[str, object]:
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path]),
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    return result


def test_keras_on_jax_uses_the_jax_clock() -> None:
    """The jax clock is chosen. It times a region until its outputs are ready, and a Keras
    callback is not handed the step's outputs, so it says so once (issue 14 leaves blocking on
    them for later) instead of timing TensorFlow's devices."""
    result = fit_on("jax")
    assert result["clock"] == "jax-block"
    warnings = result["warnings"]
    assert isinstance(warnings, list)
    # On JAX's CPU backend there is no device time to miss: the one warning says there is no GPU.
    expected = "JAX's backend is cpu" if result["clock_no_gpu"] else "without region.block(outputs)"
    assert any(expected in str(message) for message in warnings), warnings


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the CPU fallback of torch's clock"
)
def test_keras_on_torch_uses_the_torch_clock() -> None:
    """Without CUDA torch's clock falls back to the CPU clock, saying it is torch that sees no
    device: TensorFlow's clock is never chosen."""
    result = fit_on("torch")
    assert result["clock"] == "cpu-sync"
    warnings = result["warnings"]
    assert isinstance(warnings, list)
    assert any("torch sees no CUDA device" in str(message) for message in warnings), warnings
