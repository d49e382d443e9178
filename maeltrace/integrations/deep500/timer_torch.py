"""Deep500's ``deep500.utils.timer_torch``: `CPUGPUTimer` with CUDA events.

``from deep500.utils import timer_torch as timer`` becomes
``from maeltrace.deep500 import timer_torch as timer``. Events come from a pool that grows as
needed (Deep500's held 200) and are resolved without stalling the loop.
"""

from __future__ import annotations

import torch  # noqa: F401  # this shim is for PyTorch code: fail here without torch

from maeltrace.integrations.deep500._cpugpu import CPUGPUTimer as _CPUGPUTimer
from maeltrace.integrations.deep500.timer import Timer, TimeStats, TimeType

__all__ = ["CPUGPUTimer", "TimeStats", "TimeType", "Timer"]


class CPUGPUTimer(_CPUGPUTimer):
    """Deep500's CPU+GPU timer for PyTorch; see `_cpugpu.CPUGPUTimer`."""

    _framework = "torch"
