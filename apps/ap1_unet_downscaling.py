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

Sizes: ``scale`` is the side of a patch in fine grid points (a multiple of 8): tiny 16, small
32, medium 64.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from _harness import App, AppConfig, Progress, Size

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


def use_device(config: AppConfig) -> None:
    """Keeps TensorFlow off the GPU for ``--device cpu``; insists on one for ``cuda``."""
    if config.gpu:
        if not tf.config.list_physical_devices("GPU"):
            raise RuntimeError("--device cuda needs a GPU that TensorFlow can see; it sees none")
    else:
        tf.config.set_visible_devices([], "GPU")


def smooth_fields(rng: np.random.Generator, count: int, side: int, length_px: float) -> np.ndarray:
    """``count`` random fields correlated over ``length_px``, of unit standard deviation over
    all of them (a field much smaller than its length is close to one random constant)."""
    noise = rng.standard_normal((count, side, side))
    k = np.fft.fftfreq(side)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    spectrum = np.exp(-2 * (math.pi * length_px) ** 2 * k2)
    fields = np.fft.ifft2(np.fft.fft2(noise) * spectrum).real
    return fields / fields.std()


def coarsen(fields: np.ndarray) -> np.ndarray:
    """Block means over ``COARSE_FACTOR`` points, repeated back onto the fine grid."""
    n, side, _ = fields.shape
    blocks = side // COARSE_FACTOR
    coarse = fields.reshape(n, blocks, COARSE_FACTOR, blocks, COARSE_FACTOR).mean(axis=(2, 4))
    return coarse.repeat(COARSE_FACTOR, axis=1).repeat(COARSE_FACTOR, axis=2)


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
    coarse_k = coarsen(fine_k) + forecast_error_k
    inputs = np.stack(
        [
            coarse_k / TEMPERATURE_SCALE_K,
            elevation_m / ELEVATION_SCALE_M,
            coarsen(elevation_m) / ELEVATION_SCALE_M,
            (elevation_m > 0).astype(np.float64),
        ],
        axis=-1,
    )
    target = (fine_k / TEMPERATURE_SCALE_K)[..., None]
    return inputs.astype(np.float32), target.astype(np.float32)


def conv_pair(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    for _ in range(2):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    return x


def build_unet(side: int, channels: int, width: int = 16) -> keras.Model:
    """A two-level U-Net: encoder, bottleneck, decoder with skip connections."""
    inputs = keras.Input((side, side, channels))
    skip1 = conv_pair(inputs, width)
    skip2 = conv_pair(keras.layers.MaxPooling2D()(skip1), 2 * width)
    x = conv_pair(keras.layers.MaxPooling2D()(skip2), 4 * width)
    x = keras.layers.Conv2DTranspose(2 * width, 2, strides=2)(x)
    x = conv_pair(keras.layers.Concatenate()([x, skip2]), 2 * width)
    x = keras.layers.Conv2DTranspose(width, 2, strides=2)(x)
    x = conv_pair(keras.layers.Concatenate()([x, skip1]), width)
    outputs = keras.layers.Conv2D(1, 1)(x)
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
        callbacks=[
            TimerCallback(tmr, gpu=config.gpu),
            keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: progress()),
        ],
        verbose=0,
    )
    return {
        "loss": float(history.history["loss"][-1]),
        "mae_k": float(history.history["mae"][-1]) * TEMPERATURE_SCALE_K,
    }


if __name__ == "__main__":
    raise SystemExit(APP.main(train))
