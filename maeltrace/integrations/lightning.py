"""Lightning integration: `TimerCallback` times ``Trainer.fit``, ``validate``, ``test`` and
``predict`` of ``lightning.pytorch``.

For the ``pytorch_lightning`` import name, use
`maeltrace.integrations.pytorch_lightning.TimerCallback`.
"""

from __future__ import annotations

import lightning.pytorch

from maeltrace.integrations._lightning_hooks import TimerHooks

__all__ = ["TimerCallback"]


class TimerCallback(TimerHooks, lightning.pytorch.Callback):
    """``lightning.pytorch`` callback recording epochs, batches, their IO waits, forward,
    backward and optimizer steps, and validation, test and prediction into a `maeltrace.Timer`.

    Example: ``Trainer(callbacks=[TimerCallback(gpu=True)])``; see `TimerHooks` for what is
    timed and the arguments.
    """
