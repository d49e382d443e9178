"""maeltrace: time the regions of a training loop on the CPU and GPU clocks, with almost no
overhead, and print the seed report's summary tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

from maeltrace._version import __version__
from maeltrace.errors import (
    DeviceClockWarning,
    ExportConfigError,
    ExportFailed,
    ExportWarning,
    FormatError,
    MaeltraceError,
    MaeltraceWarning,
    OutboxBusy,
    RegionError,
    SinkError,
    SinkWarning,
)
from maeltrace.keys import Key, TimeType
from maeltrace.records import Records
from maeltrace.stats import TimeStats
from maeltrace.timer import Region, Timer

if TYPE_CHECKING:
    # The lazy integration modules (`__getattr__`), for type checkers.
    from maeltrace import keras as keras
    from maeltrace import lightning as lightning
    from maeltrace import pytorch_lightning as pytorch_lightning
    from maeltrace import tf_keras as tf_keras
    from maeltrace import transformers as transformers
    from maeltrace.distributed import shared_run_id, time_collective
    from maeltrace.otel.spans import TraceBudget
    from maeltrace.report import Summary

__all__ = [
    "DeviceClockWarning",
    "ExportConfigError",
    "ExportFailed",
    "ExportWarning",
    "FormatError",
    "Key",
    "MaeltraceError",
    "MaeltraceWarning",
    "OutboxBusy",
    "Records",
    "Region",
    "RegionError",
    "SinkError",
    "SinkWarning",
    "Summary",
    "TimeStats",
    "TimeType",
    "Timer",
    "TraceBudget",
    "__version__",
    "shared_run_id",
    "time_collective",
]

# Names loaded when first read, not with the package: the reports (json, csv, tempfile...),
# the span model (protobuf) and the distributed helpers.
_LAZY = {
    "Summary": "maeltrace.report",
    "TraceBudget": "maeltrace.otel.spans",
    "shared_run_id": "maeltrace.distributed",
    "time_collective": "maeltrace.distributed",
}

# The integrations' short paths, reachable as ``maeltrace.keras`` after only ``import maeltrace``:
# each imports its framework, so only when first read (and never through ``__all__``).
_LAZY_MODULES = frozenset({"keras", "tf_keras", "lightning", "pytorch_lightning", "transformers"})


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(module), name)
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(f"maeltrace.{name}")
    raise AttributeError(f"module 'maeltrace' has no attribute {name!r}")
