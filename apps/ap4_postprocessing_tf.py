"""AP4 analogue in TensorFlow: a U-Net calibrating ensemble forecasts, in a custom loop.

The seed's application 4 post-processes the ensemble of a numerical weather prediction
(ENS-10: ten members) with a U-Net that predicts a calibrated distribution of the verifying
field, and benchmarks it in PyTorch and TensorFlow (tables 4 and 5). Here each sample is a
square patch, ``scale`` grid points a side, of a synthetic 850 hPa temperature forecast:

- the truth is a smooth random field;
- the ensemble mean misses it by a smooth systematic bias (growing across the patch, as a
  latitude-dependent bias would) and a smooth random error, and the ten members scatter around
  that mean with too little spread, as real ensembles do;
- the input pipeline (``tf.data``: ``from_tensor_slices``, ``shuffle``, a ``map`` that
  standardises the members and appends the ensemble mean and spread, ``batch``, ``prefetch``)
  yields ``(scale, scale, 12)`` inputs and the truth; the map runs on ``--workers`` threads
  (0: sequentially).

The U-Net (two levels, skip connections) predicts the mean (as a correction of the ensemble
mean) and the spread of a normal distribution per grid point; the loss is its continuous
ranked probability score (CRPS), minimised with Adam in a custom training loop. The results
are the last epoch's mean CRPS (``loss``, and ``crps_k`` in kelvin) and, for comparison, that
of the raw ensemble read as a normal distribution (``raw_ensemble_crps_k``).

Regions: an ``epoch`` region per epoch; in it, `Timer.iterate` times each fetch from the
dataset's iterator as ``io`` and a ``batch`` region times each step, inside which
``forward`` (the model and the loss, recorded on a gradient tape), ``backward``
(``tape.gradient``) and ``optimizer`` (``apply_gradients``) follow each other. All but ``io``
are GPU regions with ``--device cuda`` (which raises RuntimeError where TensorFlow sees no
GPU).

Keeping forward and backward apart under ``tf.function``: one traced function for the whole
step would leave nothing to time inside it. Instead the forward pass and loss are one
``tf.function``, called eagerly under a ``tf.GradientTape``; the tape records the call as a
single operation and TensorFlow traces the matching backward function, so ``tape.gradient``
runs the backward pass as compiled graph too. The optimizer update is a second
``tf.function``. Each phase is thus a graph of its own, timed from Python between graphs; the
price is that the step is three graph launches instead of one, and that TensorFlow cannot
fuse across the phases.

The random fields (``smooth_fields``) come from ``apps/_fields.py``, and the device choice, the
U-Net's layers (``unet_features``) and the ``tf.data`` pipeline (``batched_dataset``) from
``apps/_tf.py``, shared with the other TensorFlow apps; what is timed, and how, is all here.

Sizes: ``scale`` is the side of a patch in grid points (a multiple of 4): tiny 16, small 32,
medium 64.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from _fields import smooth_fields
from _harness import App, AppConfig, Progress, Size
from _tf import batched_dataset, unet_features, use_device

from maeltrace import Timer, TimeType

OPTIMIZER = "optimizer"
"""Key of the parameter update inside each batch."""

APP = App(
    name="ap4-postprocessing-tf",
    title="AP4: TensorFlow U-Net calibrating ensemble forecasts (tf.data, GradientTape loop)",
    framework="tensorflow",
    seed_app="AP4",
    sizes={
        # As the PyTorch variant's, so that the two compare.
        "tiny": Size(epochs=2, batches=4, batch_size=8, scale=16),
        "small": Size(epochs=3, batches=24, batch_size=16, scale=32),
        "medium": Size(epochs=3, batches=40, batch_size=16, scale=64),
    },
    regions=[
        TimeType.EPOCH,
        TimeType.IO,
        TimeType.BATCH,
        TimeType.FORWARD,
        TimeType.BACKWARD,
        OPTIMIZER,
    ],
)

MEMBERS = 10
CLIMATE_MEAN_K = 275.0
CLIMATE_STD_K = 8.0


def make_ensembles(config: AppConfig) -> tuple[np.ndarray, np.ndarray]:
    """Members ``(n, side, side, 10)`` and truth ``(n, side, side, 1)``, in kelvin."""
    rng = np.random.default_rng(config.seed)
    n, side = config.batches * config.batch_size, config.scale
    truth = CLIMATE_MEAN_K + CLIMATE_STD_K * smooth_fields(rng, n, side, side / 6)
    bias = np.linspace(-1.5, 1.5, side)[None, :, None]
    error = 1.5 * smooth_fields(rng, n, side, side / 8)
    spread = 0.5 * smooth_fields(rng, n * MEMBERS, side, side / 8).reshape(n, MEMBERS, side, side)
    members = (truth + bias + error)[:, None] + spread
    return (
        members.transpose(0, 2, 3, 1).astype(np.float32),
        truth[..., None].astype(np.float32),
    )


def features(members: tf.Tensor, truth: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Standardised members plus the ensemble mean and spread as channels; truth alike."""
    members = (members - CLIMATE_MEAN_K) / CLIMATE_STD_K
    mean = tf.reduce_mean(members, axis=-1, keepdims=True)
    spread = tf.math.reduce_std(members, axis=-1, keepdims=True)
    return tf.concat([members, mean, spread], axis=-1), (truth - CLIMATE_MEAN_K) / CLIMATE_STD_K


def make_dataset(config: AppConfig) -> tf.data.Dataset:
    """The shuffled, batched ensembles, with `features` mapped over them."""
    return batched_dataset(make_ensembles(config), config, features)


def build_unet(side: int, channels: int, width: int = 16) -> keras.Model:
    """A two-level U-Net (`unet_features`) returning the mean correction and the raw spread
    per grid point."""
    inputs = keras.Input((side, side, channels))
    # Built before the output layer: each layer's initial weights depend on how many
    # layers were built before it.
    features = unet_features(inputs, width)
    outputs = keras.layers.Conv2D(2, 1)(features)
    return keras.Model(inputs, outputs, name="unet_postprocessing")


def gaussian_crps(mean: tf.Tensor, std: tf.Tensor, truth: tf.Tensor) -> tf.Tensor:
    """Mean continuous ranked probability score of normal distributions."""
    z = (truth - mean) / std
    pdf = tf.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + tf.math.erf(z / math.sqrt(2)))
    return tf.reduce_mean(std * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi)))


def train(tmr: Timer, config: AppConfig, progress: Progress) -> dict[str, float]:
    if config.scale % 4:
        raise ValueError(f"scale must be a multiple of 4, not {config.scale}")
    use_device(config, tmr)
    keras.utils.set_random_seed(config.seed)
    dataset = make_dataset(config)
    model = build_unet(config.scale, MEMBERS + 2)
    variables = model.trainable_variables
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(variables)

    @tf.function
    def forward(inputs: tf.Tensor, truth: tf.Tensor) -> tf.Tensor:
        outputs = model(inputs, training=True)
        mean = inputs[..., MEMBERS : MEMBERS + 1] + outputs[..., :1]
        return gaussian_crps(mean, tf.nn.softplus(outputs[..., 1:]) + 1e-3, truth)

    @tf.function
    def apply(gradients: list[tf.Tensor]) -> None:
        optimizer.apply_gradients(zip(gradients, variables, strict=True))

    for _ in range(config.epochs):
        loss_sum = tf.constant(0.0)  # a tensor: no device sync per batch to read it
        with tmr.region(TimeType.EPOCH):
            for inputs, truth in tmr.iterate(iter(dataset), TimeType.IO):
                with tmr.region(TimeType.BATCH, gpu=config.gpu, items=int(inputs.shape[0])):
                    with (
                        tmr.region(TimeType.FORWARD, gpu=config.gpu),
                        tf.GradientTape() as tape,
                    ):
                        loss = forward(inputs, truth)
                    with tmr.region(TimeType.BACKWARD, gpu=config.gpu):
                        gradients = tape.gradient(loss, variables)
                    with tmr.region(OPTIMIZER, gpu=config.gpu):
                        apply(gradients)
                loss_sum += loss
                progress()
    crps = float(loss_sum) / config.batches
    raw_sum = sum(
        float(gaussian_crps(inputs[..., MEMBERS : MEMBERS + 1], inputs[..., -1:] + 1e-3, truth))
        for inputs, truth in dataset
    )
    return {
        "loss": crps,
        "crps_k": crps * CLIMATE_STD_K,
        "raw_ensemble_crps_k": raw_sum * CLIMATE_STD_K / config.batches,
    }


if __name__ == "__main__":
    raise SystemExit(APP.main(train))
