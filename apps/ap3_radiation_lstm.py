"""AP3 analogue: a bidirectional-LSTM emulator of radiative transfer, per atmospheric column.

The seed's application 3 emulates the shortwave and longwave radiation scheme of a weather
model with recurrent networks: each atmospheric column is a sequence over its vertical levels,
and LSTMs carry information up and down the column. Here each sample is one synthetic column
of ``scale`` levels (137 is the IFS's): per level, seven inputs

- temperature, log pressure, specific humidity, ozone and cloud fraction of the level, and
- the column's cosine of the solar zenith angle and surface albedo, repeated on every level,

and two targets per level, the shortwave and longwave heating rates. The targets come from a
toy two-stream scheme: sunlight attenuated downwards through layers whose optical depth grows
with humidity, ozone and cloud, reflected at the surface and attenuated back up; thermal
emission of each layer (and of the surface) absorbed by the layers it crosses. A layer's
heating is the divergence of the net fluxes through it, so it depends on the whole column,
which is what the recurrent model has to learn.

The model embeds each level with a dense layer, runs two bidirectional LSTM layers over the
levels and maps each level's state to its two heating rates; ``model.fit`` trains it with Adam
on the mean squared error of standardised targets, on ``batches x batch_size`` in-memory
columns. `maeltrace.keras.TimerCallback` records ``fit``, an ``epoch`` region per epoch and,
in each, a ``batch`` region per train step with the ``io`` gap before each, as the seed's
table 3 reports; the batch regions are GPU regions with ``--device cuda`` (which raises
RuntimeError where TensorFlow sees no GPU).

The device choice and the progress callback come from ``apps/_tf.py``, shared with the other
TensorFlow apps; what is timed, and how, is all here.

Sizes: ``scale`` is the number of vertical levels of a column: tiny 16, small 40, medium 137.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from _harness import App, AppConfig, Progress, Size
from _tf import progress_callback, use_device

from maeltrace import Timer, TimeType
from maeltrace.keras import FIT, TimerCallback

APP = App(
    name="ap3-radiation-lstm",
    title="AP3: Keras bidirectional-LSTM column emulator of radiative heating rates (model.fit)",
    framework="keras",
    seed_app="AP3",
    sizes={
        "tiny": Size(epochs=2, batches=3, batch_size=16, scale=16),
        "small": Size(epochs=3, batches=16, batch_size=64, scale=40),
        "medium": Size(epochs=4, batches=24, batch_size=128, scale=137),
    },
    regions=[FIT, TimeType.EPOCH, TimeType.IO, TimeType.BATCH],
)

TOP_PRESSURE_HPA = 1.0
SOLAR_CONSTANT_W_M2 = 1361.0
STEFAN_BOLTZMANN = 5.670e-8
# g / c_p in K per (W/m2 per hPa) per day: heating of a layer from a flux divergence.
HEATING_K_PER_DAY = 9.81 / 1004.0 / 100.0 * 86400.0


def transmit(tau: np.ndarray, incoming: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Flux leaving each layer along the level axis: what enters it, attenuated by its
    optical depth ``tau``, plus what the layer emits (``sources``)."""
    out = np.empty_like(tau)
    flux = incoming
    for k in range(tau.shape[1]):
        flux = flux * np.exp(-tau[:, k]) + sources[:, k]
        out[:, k] = flux
    return out


def make_columns(config: AppConfig) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(n, levels, 7)`` and standardised heating rates ``(n, levels, 2)``, top first."""
    rng = np.random.default_rng(config.seed)
    n, levels = config.batches * config.batch_size, config.scale
    surface_hpa = rng.uniform(950.0, 1040.0, (n, 1))
    sigma = (np.arange(levels) + 0.5) / levels
    pressure_hpa = TOP_PRESSURE_HPA + (surface_hpa - TOP_PRESSURE_HPA) * sigma[None, :] ** 2
    layer_hpa = np.diff(np.concatenate([np.zeros((n, 1)), pressure_hpa], axis=1), axis=1)
    surface_k = rng.uniform(250.0, 305.0, (n, 1))
    temperature_k = np.maximum(surface_k * (pressure_hpa / surface_hpa) ** 0.19, 205.0)
    humidity = rng.uniform(0.001, 0.02, (n, 1)) * (pressure_hpa / surface_hpa) ** 3
    ozone = rng.uniform(0.5, 1.5, (n, 1)) * np.exp(-((np.log(pressure_hpa / 10.0)) ** 2))
    cloud_level = rng.uniform(0.3, 0.9, (n, 1)) * levels
    cloud = rng.uniform(0.0, 1.0, (n, 1)) * np.exp(
        -(((np.arange(levels)[None, :] - cloud_level) / (0.05 * levels + 1)) ** 2)
    )
    cos_zenith = np.maximum(rng.uniform(-0.3, 1.0, (n, 1)), 0.0)
    albedo = rng.uniform(0.05, 0.8, (n, 1))

    # Shortwave: down from the top of the atmosphere, reflected at the surface, back up.
    tau_sw = layer_hpa * (2e-4 + 0.05 * humidity) + 0.3 * ozone / levels + 1.5 * cloud
    slant = np.maximum(cos_zenith, 0.05)
    zeros = np.zeros_like(tau_sw)
    sw_down = transmit(tau_sw / slant, SOLAR_CONSTANT_W_M2 * cos_zenith[:, 0], zeros)
    sw_up = transmit(tau_sw[:, ::-1], albedo[:, 0] * sw_down[:, -1], zeros)[:, ::-1]
    sw_in_down = np.concatenate([SOLAR_CONSTANT_W_M2 * cos_zenith, sw_down[:, :-1]], axis=1)
    sw_in_up = np.concatenate([sw_up[:, 1:], albedo * sw_down[:, -1:]], axis=1)
    sw_absorbed = (sw_in_down - sw_down) + (sw_in_up - sw_up)

    # Longwave: each layer emits what it absorbs the fraction of, up and down.
    tau_lw = layer_hpa * (1e-3 + 0.3 * humidity) + 3.0 * cloud
    emission = (1 - np.exp(-tau_lw)) * STEFAN_BOLTZMANN * temperature_k**4
    lw_down = transmit(tau_lw, np.zeros(n), emission)
    surface_emission = STEFAN_BOLTZMANN * surface_k[:, 0] ** 4
    lw_up = transmit(tau_lw[:, ::-1], surface_emission, emission[:, ::-1])[:, ::-1]
    lw_in_down = np.concatenate([np.zeros((n, 1)), lw_down[:, :-1]], axis=1)
    lw_in_up = np.concatenate([lw_up[:, 1:], surface_emission[:, None]], axis=1)
    lw_absorbed = (lw_in_down - lw_down) + (lw_in_up - lw_up)

    heating = np.stack([sw_absorbed, lw_absorbed], axis=-1) * (
        HEATING_K_PER_DAY / layer_hpa[..., None]
    )
    # Thin top layers heat by tens of K/day; a signed log keeps the targets of order one.
    heating = np.sign(heating) * np.log1p(np.abs(heating))
    heating = (heating - heating.mean(axis=(0, 1))) / heating.std(axis=(0, 1))
    inputs = np.stack(
        [
            (temperature_k - 250.0) / 30.0,
            np.log(pressure_hpa) / np.log(1000.0),
            humidity * 100.0,
            ozone,
            cloud,
            np.broadcast_to(cos_zenith, (n, levels)),
            np.broadcast_to(albedo, (n, levels)),
        ],
        axis=-1,
    )
    return inputs.astype(np.float32), heating.astype(np.float32)


def build_emulator(levels: int, features: int, width: int = 32) -> keras.Model:
    """Per-level embedding, two bidirectional LSTMs over the levels, per-level output."""
    inputs = keras.Input((levels, features))
    x = keras.layers.Dense(width, activation="tanh")(inputs)
    for _ in range(2):
        x = keras.layers.Bidirectional(keras.layers.LSTM(width, return_sequences=True))(x)
    outputs = keras.layers.Dense(2)(x)
    return keras.Model(inputs, outputs, name="radiation_lstm")


def train(tmr: Timer, config: AppConfig, progress: Progress) -> dict[str, float]:
    use_device(config)
    keras.utils.set_random_seed(config.seed)
    inputs, heating = make_columns(config)
    model = build_emulator(config.scale, inputs.shape[-1])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    history = model.fit(
        inputs,
        heating,
        batch_size=config.batch_size,
        epochs=config.epochs,
        steps_per_epoch=config.batches,
        callbacks=[TimerCallback(tmr, gpu=config.gpu), progress_callback(progress)],
        verbose=0,
    )
    return {"loss": float(history.history["loss"][-1])}


if __name__ == "__main__":
    raise SystemExit(APP.main(train))
