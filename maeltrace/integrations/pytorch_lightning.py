"""``pytorch_lightning`` integration: `TimerCallback` as in `maeltrace.integrations.lightning`."""

from __future__ import annotations

import pytorch_lightning

from maeltrace.integrations._lightning_hooks import TimerHooks

__all__ = ["TimerCallback"]


class TimerCallback(TimerHooks, pytorch_lightning.Callback):
    """``pytorch_lightning`` callback recording what `maeltrace.integrations.lightning` does."""
