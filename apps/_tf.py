"""TensorFlow and Keras pieces shared by the example apps that use them (AP1, AP3, AP4's
TensorFlow variant, AP5): device choice, U-Net blocks, input pipeline, progress callback.

None of these time anything: each app's own file keeps its instrumentation (the
`maeltrace.keras.TimerCallback` in ``model.fit``, or ``tmr.region`` and ``tmr.iterate`` in a
custom loop), as a user's code would. An app sets ``KERAS_BACKEND`` and
``TF_CPP_MIN_LOG_LEVEL`` before it imports TensorFlow, and so before it imports this module.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from _harness import AppConfig, Progress

from maeltrace import Timer

__all__ = ["batched_dataset", "conv_pair", "progress_callback", "unet_features", "use_device"]


def use_device(config: AppConfig, tmr: Timer | None = None) -> None:
    """Keeps TensorFlow off the GPU for ``--device cpu``; insists on one for ``cuda``.

    Args:
        config: the run's configuration.
        tmr: with ``--device cuda``, has this timer's GPU regions timed on TensorFlow's clock.
            Apps with a custom loop pass theirs, as no framework has chosen the clock when
            their first GPU region opens; the Keras `TimerCallback` chooses it itself.

    Raises:
        RuntimeError: ``--device cuda`` where TensorFlow sees no GPU.
    """
    if config.gpu:
        if not tf.config.list_physical_devices("GPU"):
            raise RuntimeError("--device cuda needs a GPU that TensorFlow can see; it sees none")
        if tmr is not None:
            tmr.use_device(prefer="tensorflow")
    else:
        tf.config.set_visible_devices([], "GPU")


def progress_callback(progress: Progress) -> keras.callbacks.Callback:
    """A Keras callback counting each train batch on the app's `Progress`."""
    return keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: progress())


def conv_pair(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    """Two 3 x 3 ReLU convolutions, the U-Net's unit at each level."""
    for _ in range(2):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    return x


def unet_features(inputs: keras.KerasTensor, width: int = 16) -> keras.KerasTensor:
    """A two-level U-Net's features at full resolution, ``width`` channels: encoder (max
    pooling), bottleneck, decoder (transposed convolutions) with skip connections.

    The caller maps them to its outputs (a 1 x 1 convolution...); the input's side must be a
    multiple of 4.
    """
    skip1 = conv_pair(inputs, width)
    skip2 = conv_pair(keras.layers.MaxPooling2D()(skip1), 2 * width)
    x = conv_pair(keras.layers.MaxPooling2D()(skip2), 4 * width)
    x = keras.layers.Conv2DTranspose(2 * width, 2, strides=2)(x)
    x = conv_pair(keras.layers.Concatenate()([x, skip2]), 2 * width)
    x = keras.layers.Conv2DTranspose(width, 2, strides=2)(x)
    return conv_pair(keras.layers.Concatenate()([x, skip1]), width)


def batched_dataset(
    arrays: tuple[np.ndarray, ...],
    config: AppConfig,
    transform: Callable[..., tuple[tf.Tensor, ...]] | None = None,
) -> tf.data.Dataset:
    """A ``tf.data`` pipeline over in-memory samples, reshuffled every epoch.

    ``from_tensor_slices``, ``shuffle`` (seeded with ``--seed``), an optional ``map`` of
    ``transform`` on ``--workers`` threads (0: sequentially) keeping the order, ``batch``
    (``--batch-size``, dropping a partial last batch) and ``prefetch``.

    Args:
        arrays: the samples' parts, each with the samples along its first axis.
        config: the run's configuration.
        transform: maps one sample's parts to what the model reads.
    """
    dataset = tf.data.Dataset.from_tensor_slices(arrays).shuffle(len(arrays[0]), seed=config.seed)
    if transform is not None:
        dataset = dataset.map(
            transform, num_parallel_calls=config.workers or None, deterministic=True
        )
    return dataset.batch(config.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
