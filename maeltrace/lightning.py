"""Short path of the Lightning callback, which lives in `maeltrace.integrations.lightning`."""

from __future__ import annotations

from maeltrace.integrations.lightning import TimerCallback

__all__ = ["TimerCallback"]
