"""Short path of the ``pytorch_lightning`` callback (`maeltrace.integrations.pytorch_lightning`)."""

from __future__ import annotations

from maeltrace.integrations.pytorch_lightning import TimerCallback

__all__ = ["TimerCallback"]
