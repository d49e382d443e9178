"""The work in a trainer's batch, for the callbacks' region counts (``Timer.add_items``): the
batch's items from its tensors' shapes, never from their values, so that counting never waits
for a device."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["leading_size", "numel_of", "positive_or_none"]

_MAX_VISITED = 32
"""Objects looked at in one batch: a batch is a tensor or a small structure of them, and a long
list of non-tensors (strings, say) is not walked to its end."""


def _torch_tensor_type() -> Any:
    """``torch.Tensor`` when torch is imported already (a batch holds none otherwise), or
    None."""
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None)


def leading_size(batch: Any) -> int | None:
    """The leading dimension of the first torch tensor in ``batch`` (a tensor, or lists, tuples
    and mappings of them, depth first in their order), or None where there is none.

    Every tensor of a batch has the batch's items as its leading dimension, the last, smaller
    batch of an epoch included; reading a shape never syncs with the device.
    """
    tensor_type = _torch_tensor_type()
    if tensor_type is None:
        return None
    stack: list[Any] = [batch]
    visited = 0
    while stack and visited < _MAX_VISITED:
        item = stack.pop()
        visited += 1
        if isinstance(item, tensor_type):
            if item.dim() > 0:
                return int(item.shape[0])
        elif isinstance(item, Mapping):
            stack.extend(reversed(list(item.values())[:_MAX_VISITED]))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item[:_MAX_VISITED]))
    return None


def numel_of(batch: Any, name: str) -> int | None:
    """The element count of the tensor ``batch[name]`` (``batch`` a mapping), or None.

    For ``input_ids`` this counts padded tokens: the attention mask's sum would count the
    real ones, but it waits for the device.
    """
    if not isinstance(batch, Mapping):
        return None
    tensor_type = _torch_tensor_type()
    value = batch.get(name)
    if tensor_type is None or not isinstance(value, tensor_type):
        return None
    return int(value.numel())


def positive_or_none(value: int | None, name: str) -> int | None:
    """``value`` checked as a positive whole number, or None.

    Raises:
        TypeError: ``value`` is not a whole number.
        ValueError: ``value`` is not positive.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value}")
    return value
