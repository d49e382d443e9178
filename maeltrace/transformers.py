"""Short path of the Hugging Face Trainer callback, in `maeltrace.integrations.transformers`."""

from __future__ import annotations

from maeltrace.integrations.transformers import TimerCallback

__all__ = ["TimerCallback"]
