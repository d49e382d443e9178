"""AP1 analogue: a Keras U-Net downscaling coarse temperature forecasts to a 1 km grid.

The seed's application 1 trains a U-Net to turn 2.5 km NWP temperature forecasts, with static
predictors such as the 1 km orography, into 1 km temperature for the Nordic countries. Here
each sample is a square patch of a synthetic domain, ``scale`` fine (1 km) grid points a side:

- the target is the fine temperature: a smooth large-scale field, a lapse rate of 6.5 K/km
  applied to the fine orography, and small-scale noise the predictors cannot explain;
- the inputs, as in the real data, already lie on the fine grid: the coarse temperature (block
  means over 4 x 4 fine points, with a smooth forecast error, repeated back onto the fine grid),
  the fine orography, the coarse orography the forecast model saw, and the land fraction. Four
  channels, ``(scale, scale, 4)`` per sample, scaled to order one.

The model is a two-level U-Net (convolution pairs, max-pooling, transposed convolutions and
skip connections) trained with Adam on the mean squared error by ``model.fit`` on in-memory
arrays of ``batches x batch_size`` samples. `maeltrace.keras.TimerCallback` times it the way
the seed's table 1 reports it: ``fit`` around the call, an ``epoch`` region per epoch, and in
each epoch a ``batch`` region per train step with the ``io`` gap before each (the wait for
the next batch plus Keras' per-batch work). The callback's batch regions are GPU regions with
``--device cuda`` (which raises RuntimeError where TensorFlow sees no GPU).

The random fields (``smooth_fields``, ``coarsen``) come from ``apps/_fields.py``, and the
device choice, the U-Net's layers (``unet_features``) and the progress callback from
``apps/_tf.py``, shared with the other TensorFlow apps; what is timed, and how, is all here.

Sizes: ``scale`` is the side of a patch in fine grid points (a multiple of 8): tiny 16, small
32, medium 64.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from _fields import coarsen, smooth_fields
from _harness import App, AppConfig, Progress, Size
from _tf import progress_callback, unet_features, use_device

from maeltrace import Timer, TimeType
from maeltrace.keras import FIT, TimerCallback

APP = App(
    name="ap1-unet-downscaling",
    title="AP1: Keras U-Net downscaling coarse temperature to a 1 km grid (model.fit)",
    framework="keras",
    seed_app="AP1",
    sizes={
        "tiny": Size(epochs=2, batches=3, batch_size=4, scale=16),
        "small": Size(epochs=3, batches=16, batch_size=16, scale=32),
        "medium": Size(epochs=4, batches=24, batch_size=16, scale=64),
    },
    regions=[FIT, TimeType.EPOCH, TimeType.IO, TimeType.BATCH],
)

COARSE_FACTOR = 4
"""Fine grid points per coarse grid point along each axis (2.5 km NWP to 1 km, rounded)."""
LAPSE_RATE_K_PER_M = 0.0065
TEMPERATURE_SCALE_K = 10.0
ELEVATION_SCALE_M = 1000.0


def make_data(config: AppConfig) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(n, side, side, 4)`` and fine temperature ``(n, side, side, 1)``, scaled."""
    rng = np.random.default_rng(config.seed)
    n, side = config.batches * config.batch_size, config.scale
    elevation_m = np.maximum(600.0 * (smooth_fields(rng, n, side, side / 8) + 0.7), 0.0)
    large_scale_k = 5.0 * smooth_fields(rng, n, side, side / 2) + rng.normal(5.0, 8.0, (n, 1, 1))
    fine_k = (
        large_scale_k - LAPSE_RATE_K_PER_M * elevation_m + 0.5 * smooth_fields(rng, n, side, 1.0)
    )
    forecast_error_k = 1.0 * smooth_fields(rng, n, side, side / 4)
    coarse_k = coarsen(fine_k, COARSE_FACTOR) + forecast_error_k
    inputs = np.stack(
        [
            coarse_k / TEMPERATURE_SCALE_K,
            elevation_m / ELEVATION_SCALE_M,
            coarsen(elevation_m, COARSE_FACTOR) / ELEVATION_SCALE_M,
            (elevation_m > 0).astype(np.float64),
        ],
        axis=-1,
    )
    target = (fine_k / TEMPERATURE_SCALE_K)[..., None]
    return inputs.astype(np.float32), target.astype(np.float32)


def build_unet(side: int, channels: int, width: int = 16) -> keras.Model:
    """A two-level U-Net (`unet_features`) with one output channel, the fine temperature."""
    inputs = keras.Input((side, side, channels))
    # Built before the output layer: each layer's initial weights depend on how many
    # layers were built before it.
    features = unet_features(inputs, width)
    outputs = keras.layers.Conv2D(1, 1)(features)
    return keras.Model(inputs, outputs, name="unet_downscaling")


def train(tmr: Timer, config: AppConfig, progress: Progress) -> dict[str, float]:
    if config.scale % (2 * COARSE_FACTOR):
        raise ValueError(f"scale must be a multiple of {2 * COARSE_FACTOR}, not {config.scale}")
    use_device(config)
    keras.utils.set_random_seed(config.seed)
    inputs, target = make_data(config)
    model = build_unet(config.scale, inputs.shape[-1])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", metrics=["mae"])
    history = model.fit(
        inputs,
        target,
        batch_size=config.batch_size,
        epochs=config.epochs,
        steps_per_epoch=config.batches,
        callbacks=[TimerCallback(tmr, gpu=config.gpu), progress_callback(progress)],
        verbose=0,
    )
    return {
        "loss": float(history.history["loss"][-1]),
        "mae_k": float(history.history["mae"][-1]) * TEMPERATURE_SCALE_K,
    }


if __name__ == "__main__":
    raise SystemExit(APP.main(train))
