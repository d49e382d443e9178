"""Deep500's ``deep500.utils.timer_tf``: `CPUGPUTimer` and the Keras `TimerCallback`.

``from deep500.utils import timer_tf as timer`` becomes
``from maeltrace.deep500 import timer_tf as timer`` (the seed's Figure 3). Device time comes
from device synchronisations at region boundaries (Deep500 synchronised at every region end
through CuPy); no CuPy is needed.
"""

from __future__ import annotations

from maeltrace.integrations.deep500._cpugpu import CPUGPUTimer as _CPUGPUTimer
from maeltrace.integrations.deep500.timer import Timer, TimeStats, TimeType
from maeltrace.integrations.keras import TimerCallback

__all__ = ["CPUGPUTimer", "TimeStats", "TimeType", "Timer", "TimerCallback"]


class CPUGPUTimer(_CPUGPUTimer):
    """Deep500's CPU+GPU timer for TensorFlow; see `_cpugpu.CPUGPUTimer`."""

    _framework = "tensorflow"
