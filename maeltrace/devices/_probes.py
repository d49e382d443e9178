"""Cheap checks of whether an imported framework has a GPU in use, starting no GPU runtime."""

from __future__ import annotations

import sys

__all__ = ["jax_gpu_in_use", "tf_gpu_in_use", "torch_gpu_in_use"]


def torch_gpu_in_use() -> bool:
    """torch has initialised CUDA (``torch.cuda.is_initialized`` initialises nothing)."""
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.cuda.is_initialized())


def jax_gpu_in_use() -> bool:
    """JAX has started its backends and its default one is not the CPU."""
    if "jax" not in sys.modules:
        return False
    import jax
    from jax._src import xla_bridge  # private: asking jax.devices() would start the backends

    return bool(xla_bridge.backends_are_initialized()) and jax.default_backend() != "cpu"


def tf_gpu_in_use() -> bool:
    """TensorFlow has started its eager context and it holds a GPU device."""
    if "tensorflow" not in sys.modules:
        return False
    import tensorflow as tf
    from tensorflow.python.eager import context  # private: the public calls start the context

    if not context.context()._initialized:
        return False
    return bool(tf.config.list_logical_devices("GPU"))
