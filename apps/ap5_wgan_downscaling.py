"""AP5 analogue: a Wasserstein GAN downscaling 2 m temperature, in a TensorFlow custom loop.

The seed's application 5 downscales ERA5 2 m temperature (about 30 km) to the COSMO-REA6 grid
(about 6 km) with a WGAN: a U-Net generator maps the coarse predictors, remapped onto the fine
grid, to the fine temperature, trained on a reconstruction loss plus the verdict of a critic,
and the critic is trained several times per generator update. Here each sample is a square
patch, ``scale`` fine grid points a side:

- the target is the fine 2 m temperature: a smooth large-scale field, a lapse rate on the
  fine orography, a cold-valley term that grows with the low-level stability, and small-scale
  noise;
- the predictors, as in the real data, lie on the fine grid: the coarse 2 m and 850 hPa
  temperatures (block means over 4 x 4 fine points, repeated back onto the fine grid), the
  fine orography and the coarse orography. Four channels, ``(scale, scale, 4)`` per sample.

The generator is a two-level U-Net predicting a correction of the coarse 2 m temperature; the
critic, a strided convolutional network, scores a temperature field together with its
predictors. Training is WGAN-GP: per batch, ``N_CRITIC`` critic updates (Wasserstein loss plus
a gradient penalty on interpolates between real and generated fields, a second-order
gradient) on the batch, then one generator update (mean absolute error plus a small weight on
the critic's score). Both updates are ``tf.function`` steps with Adam; a ``tf.data`` pipeline
(``from_tensor_slices``, ``shuffle``, ``batch``, ``prefetch``) feeds them. The results are
the last batch's generator loss (``loss``), critic loss, and mean absolute error of the
generated field in kelvin (``mae_k``).

Regions, and how they nest::

    epoch
    ├── io              one per batch: the fetch from the dataset's iterator (Timer.iterate)
    └── batch           one per batch
        ├── critic          the N_CRITIC critic updates
        │   └── critic_step     one per update: forward, penalty, gradient and Adam step
        └── generator       the generator update

All but ``io`` are GPU regions with ``--device cuda`` (which raises RuntimeError where
TensorFlow sees no GPU).

The random fields (``smooth_fields``, ``coarsen``) come from ``apps/_fields.py``, and the
device choice, the generator's U-Net layers (``unet_features``) and the ``tf.data`` pipeline
(``batched_dataset``) from ``apps/_tf.py``, shared with the other TensorFlow apps; what is
timed, and how, is all here.

Sizes: ``scale`` is the side of a patch in fine grid points (a multiple of 8): tiny 16, small
32, medium 64.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from _fields import coarsen, smooth_fields
from _harness import App, AppConfig, Progress, Size
from _tf import batched_dataset, unet_features, use_device

from maeltrace import Timer, TimeType

CRITIC = "critic"
"""Key of a batch's critic updates."""
CRITIC_STEP = "critic_step"
"""Key of one critic update, inside `CRITIC`."""
GENERATOR = "generator"
"""Key of a batch's generator update."""

APP = App(
    name="ap5-wgan-downscaling",
    title="AP5: TensorFlow WGAN-GP downscaling 2 m temperature (custom loop, critic/generator)",
    framework="tensorflow",
    seed_app="AP5",
    sizes={
        "tiny": Size(epochs=2, batches=3, batch_size=4, scale=16),
        "small": Size(epochs=3, batches=16, batch_size=8, scale=32),
        "medium": Size(epochs=4, batches=20, batch_size=16, scale=64),
    },
    regions=[TimeType.EPOCH, TimeType.IO, TimeType.BATCH, CRITIC, CRITIC_STEP, GENERATOR],
)

N_CRITIC = 4
"""Critic updates per generator update."""
GRADIENT_PENALTY_WEIGHT = 10.0
ADVERSARIAL_WEIGHT = 0.01
"""Weight of the critic's score in the generator's loss, next to the reconstruction error."""
COARSE_FACTOR = 4
TEMPERATURE_SCALE_K = 10.0
ELEVATION_SCALE_M = 1000.0


def make_data(config: AppConfig) -> tuple[np.ndarray, np.ndarray]:
    """Predictors ``(n, side, side, 4)`` and fine 2 m temperature ``(n, side, side, 1)``,
    scaled to order one."""
    rng = np.random.default_rng(config.seed)
    n, side = config.batches * config.batch_size, config.scale
    elevation_m = np.maximum(700.0 * (smooth_fields(rng, n, side, side / 8) + 0.5), 0.0)
    # Positive below the surrounding terrain, where cold air pools when the air is stable.
    valley_m = coarsen(elevation_m, COARSE_FACTOR) - elevation_m
    large_scale_k = 6.0 * smooth_fields(rng, n, side, side / 2) + rng.normal(8.0, 6.0, (n, 1, 1))
    stability = np.maximum(smooth_fields(rng, n, side, side / 2) + 0.5, 0.0)
    t850_k = large_scale_k - 8.0 + 4.0 * stability
    t2m_k = (
        large_scale_k
        - 0.0065 * elevation_m
        - 0.01 * stability * valley_m
        + 0.3 * smooth_fields(rng, n, side, 1.0)
    )
    predictors = np.stack(
        [
            coarsen(t2m_k, COARSE_FACTOR) / TEMPERATURE_SCALE_K,
            coarsen(t850_k, COARSE_FACTOR) / TEMPERATURE_SCALE_K,
            elevation_m / ELEVATION_SCALE_M,
            coarsen(elevation_m, COARSE_FACTOR) / ELEVATION_SCALE_M,
        ],
        axis=-1,
    )
    target = (t2m_k / TEMPERATURE_SCALE_K)[..., None]
    return predictors.astype(np.float32), target.astype(np.float32)


def build_generator(side: int, channels: int, width: int = 16) -> keras.Model:
    """A two-level U-Net (`unet_features`) adding its output to the coarse 2 m temperature
    (channel 0)."""
    inputs = keras.Input((side, side, channels))
    # Built before the output layer: each layer's initial weights depend on how many
    # layers were built before it.
    features = unet_features(inputs, width)
    correction = keras.layers.Conv2D(1, 1)(features)
    coarse = keras.layers.Lambda(lambda t: t[..., :1])(inputs)
    return keras.Model(inputs, keras.layers.Add()([coarse, correction]), name="generator")


def build_critic(side: int, channels: int, width: int = 16) -> keras.Model:
    """Strided convolutions over a temperature field and its predictors, to one score."""
    predictors = keras.Input((side, side, channels))
    field = keras.Input((side, side, 1))
    x = keras.layers.Concatenate()([predictors, field])
    for level in range(3):
        x = keras.layers.Conv2D(width * 2**level, 3, strides=2, padding="same")(x)
        x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model([predictors, field], keras.layers.Dense(1)(x), name="critic")


def train(tmr: Timer, config: AppConfig, progress: Progress) -> dict[str, float]:
    if config.scale % (2 * COARSE_FACTOR):
        raise ValueError(f"scale must be a multiple of {2 * COARSE_FACTOR}, not {config.scale}")
    use_device(config, tmr)
    keras.utils.set_random_seed(config.seed)
    predictors, target = make_data(config)
    dataset = batched_dataset((predictors, target), config)
    channels = predictors.shape[-1]
    generator = build_generator(config.scale, channels)
    critic = build_critic(config.scale, channels)
    generator_optimizer = keras.optimizers.Adam(1e-3, beta_1=0.5, beta_2=0.9)
    critic_optimizer = keras.optimizers.Adam(1e-3, beta_1=0.5, beta_2=0.9)
    generator_optimizer.build(generator.trainable_variables)
    critic_optimizer.build(critic.trainable_variables)
    noise = tf.random.Generator.from_seed(config.seed)

    @tf.function
    def critic_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        fake = generator(x, training=False)
        weight = noise.uniform([tf.shape(y)[0], 1, 1, 1])
        between = weight * y + (1 - weight) * fake
        with tf.GradientTape() as tape:
            with tf.GradientTape() as penalty_tape:
                penalty_tape.watch(between)
                between_score = critic([x, between], training=True)
            slopes = penalty_tape.gradient(between_score, between)
            norms = tf.sqrt(tf.reduce_sum(slopes**2, axis=[1, 2, 3]) + 1e-12)
            penalty = tf.reduce_mean((norms - 1) ** 2)
            wasserstein = tf.reduce_mean(critic([x, fake], training=True)) - tf.reduce_mean(
                critic([x, y], training=True)
            )
            loss = wasserstein + GRADIENT_PENALTY_WEIGHT * penalty
        gradients = tape.gradient(loss, critic.trainable_variables)
        critic_optimizer.apply_gradients(zip(gradients, critic.trainable_variables, strict=True))
        return loss

    @tf.function
    def generator_step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            fake = generator(x, training=True)
            reconstruction = tf.reduce_mean(tf.abs(fake - y))
            adversarial = -tf.reduce_mean(critic([x, fake], training=False))
            loss = reconstruction + ADVERSARIAL_WEIGHT * adversarial
        gradients = tape.gradient(loss, generator.trainable_variables)
        generator_optimizer.apply_gradients(
            zip(gradients, generator.trainable_variables, strict=True)
        )
        return loss, reconstruction

    critic_loss = generator_loss = reconstruction = tf.constant(math.nan)
    for _ in range(config.epochs):
        with tmr.region(TimeType.EPOCH):
            for x, y in tmr.iterate(iter(dataset), TimeType.IO):
                with tmr.region(TimeType.BATCH, gpu=config.gpu, items=int(x.shape[0])):
                    with tmr.region(CRITIC, gpu=config.gpu):
                        for _ in range(N_CRITIC):
                            with tmr.region(CRITIC_STEP, gpu=config.gpu):
                                critic_loss = critic_step(x, y)
                    with tmr.region(GENERATOR, gpu=config.gpu):
                        generator_loss, reconstruction = generator_step(x, y)
                progress()
    return {
        "loss": float(generator_loss),
        "critic_loss": float(critic_loss),
        "mae_k": float(reconstruction) * TEMPERATURE_SCALE_K,
    }


if __name__ == "__main__":
    raise SystemExit(APP.main(train))
