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
    model.fit(np.zeros((8, 4)), np.zeros((8, 1)), batch_size=4, epochs=2, verbose=0,
              validation_data=(np.zeros((8, 4)), np.zeros((8, 1))),
              callbacks=[TimerCallback(tmr, gpu=True)])
    model.evaluate(np.zeros((8, 4)), np.zeros((8, 1)), batch_size=4, verbose=0,
                   callbacks=[TimerCallback(tmr, gpu=True)])
    model.predict(np.zeros((8, 4)), batch_size=4, verbose=0,
                  callbacks=[TimerCallback(tmr, gpu=True)])

def rows(device):
    # samples per batch key, compiling regions (JAX's first calls) included
    out = {}
    for row in tmr.summary().rows:
        if row.device == device and str(row.key).endswith("batch"):
            out[str(row.key)] = out.get(str(row.key), 0) + row.stats.count
    return out

def items():
    # samples counted per batch key
    records = tmr.records()
    out = {}
    for seq, key_id in zip(records.seq, records.key_id):
        key = str(records.keys[key_id])
        out[key] = out.get(key, 0) + records.counts.get(seq, (0, 0))[0]
    return {key: n for key, n in out.items() if n}

print(json.dumps({
    "items": items(),
    "backend": keras.backend.backend(),
    "clock": tmr.device_clock.name,
    "clock_no_gpu": bool(getattr(tmr.device_clock, "no_gpu_reason", None)),
    "warnings": [str(w.message) for w in caught
                 if isinstance(w.message, maeltrace.MaeltraceWarning)],
    "device_counts": rows(True),
    "cpu_counts": rows(False),
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


#: Batches per pass of the script: 8 samples in batches of 4.
BATCHES = 2
#: Every batch key's count in the script: 2 epochs with validation, one evaluate, one predict.
COUNTS = {
    "batch": 2 * BATCHES,
    "validation_batch": 2 * BATCHES,
    "test_batch": BATCHES,
    "predict_batch": BATCHES,
}
#: The samples each batch key counts in the script, Keras knowing the arrays' batch size.
ITEMS = {key: 4 * count for key, count in COUNTS.items()}


def test_keras_on_jax_gives_every_batch_a_device_time() -> None:
    """The jax clock is chosen, and it times a region until its outputs are ready: the callback
    waits for the step's logs and new state at each batch's end, so train, validation, test and
    predict batches all get a device time, with no warning."""
    result = fit_on("jax")
    assert result["clock"] == "jax-block"
    assert result["cpu_counts"] == COUNTS
    assert result["items"] == ITEMS
    messages = [str(message) for message in result["warnings"]]  # type: ignore[union-attr]
    # The callback waits for each step's outputs, so the clock never has to say it could not.
    assert not any("without region.block(outputs)" in message for message in messages), messages
    if result["clock_no_gpu"]:
        # On JAX's CPU backend there is no device time to take: no GPU rows, and one warning.
        assert result["device_counts"] == {}
        assert any("JAX's backend is cpu" in message for message in messages), messages
    else:
        assert result["device_counts"] == COUNTS


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the CPU fallback of torch's clock"
)
def test_keras_on_torch_uses_the_torch_clock() -> None:
    """Without CUDA torch's clock falls back to the CPU clock, saying it is torch that sees no
    device: TensorFlow's clock is never chosen."""
    result = fit_on("torch")
    assert result["clock"] == "cpu-sync"
    assert result["cpu_counts"] == COUNTS
    assert result["items"] == ITEMS
    assert result["device_counts"] == {}  # no GPU, no GPU rows
    warnings = result["warnings"]
    assert isinstance(warnings, list)
    assert any("torch sees no CUDA device" in str(message) for message in warnings), warnings
