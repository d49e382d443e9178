"""A small CPU-bound training loop timed by maeltrace, for fault-injection tests to run and kill.

Run as ``python tests/fault_child.py --epochs N --steps S --step-ms M [--gpu-fake cuda]``. It
builds ``maeltrace.Timer()`` with everything from the environment (``MAELTRACE_EXPORT``,
``MAELTRACE_OUTPUT_DIR``, ``MAELTRACE_RUN_ID``, ``OTEL_EXPORTER_OTLP_*``), prints
``started <run id> <pid>``, then runs N epochs, each one ``epoch`` region holding S steps::

    for step in tmr.iterate(range(S)):          # io
        with tmr.region("batch"):
            with tmr.region("forward"): ...     # 40 % of M ms of busy work
            with tmr.region("backward"): ...    # 60 %

It prints ``epoch-done K`` once the K-th epoch's region has closed (K counts from 1: K epochs
are finished) and ``finished`` after the last, each line flushed at once, and exits 0; the timer
is closed by maeltrace's own exit handling, not here, and no signal handler is installed here,
so SIGTERM and SIGKILL meet maeltrace as they would meet a user's script.

``--gpu-fake cuda`` (imports torch) times forward and backward with ``gpu=True`` on a fake GPU
(``tests.fakes.cuda.FakeCudaDevice``, whose events all complete after each step), so device
spans are exported too. ``--expected`` prints what one epoch should leave, as JSON
(`expected_counts`), and exits without timing anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script, only tests/ would be on the path
    sys.path.insert(0, str(ROOT))

__all__ = ["SCRIPT", "expected_counts", "main"]

SCRIPT = Path(__file__).resolve()
"""This file, to run as ``[sys.executable, str(SCRIPT), ...]``."""

# The default per-trace span budget (maeltrace.otel.spans.TraceBudget.max_spans); past it
# batches are sampled and an epoch's trace holds fewer spans than it has regions.
_SPAN_BUDGET = 5000
_FORWARD_SHARE = 0.4


def expected_counts(steps: int, gpu_fake: str = "no") -> dict[str, Any]:
    """What one epoch of ``steps`` steps records and exports.

    Returns:
        ``regions_per_epoch``: 1 epoch + per step io, batch, forward and backward (the final
        fetch that finds the loader exhausted is not a region); ``spans_per_epoch``: the same
        plus one device span per gpu region (forward and backward under ``--gpu-fake cuda``);
        ``within_budget``: whether that fits the default span budget of one trace, so that
        every region of an epoch becomes a span; ``run_spans``: spans outside the epochs' traces
        (the run's own span, exported when the timer closes, so a killed run lacks it).
    """
    regions = 1 + 4 * steps
    spans = regions + (2 * steps if gpu_fake == "cuda" else 0)
    return {
        "regions_per_epoch": regions,
        "spans_per_epoch": spans,
        "within_budget": spans <= _SPAN_BUDGET,
        "run_spans": 1,
    }


def _busy(seconds: float) -> None:
    """Keeps the CPU busy in Python for ``seconds``, like a step's host work."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs to run (default 3)")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch (default 20)")
    parser.add_argument(
        "--step-ms", type=float, default=2.0, help="busy work per step in ms (default 2)"
    )
    parser.add_argument(
        "--gpu-fake",
        choices=("no", "cuda"),
        default="no",
        help="time forward/backward on a fake CUDA GPU (imports torch); default no",
    )
    parser.add_argument(
        "--expected", action="store_true", help="print the expected counts per epoch as JSON"
    )
    args = parser.parse_args(argv)
    if args.epochs < 0 or args.steps < 0 or args.step_ms < 0:
        parser.error("--epochs, --steps and --step-ms must not be negative")
    return args


def _fake_gpu() -> tuple[Callable[..., Any], Callable[[], None]]:
    """A device clock factory on a fake CUDA GPU, and the call that lets the GPU catch up."""
    from maeltrace.devices.base import DeviceTimes
    from maeltrace.devices.torch_cuda import CudaEventClock
    from tests.fakes.cuda import FakeCudaDevice

    gpu = FakeCudaDevice()

    def factory(times: DeviceTimes) -> CudaEventClock:
        return CudaEventClock(times, cuda=gpu)

    return factory, gpu.run


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the loop; see the module docstring."""
    args = _arguments(argv)
    if args.expected:
        print(json.dumps(expected_counts(args.steps, args.gpu_fake)), flush=True)
        return 0

    import maeltrace

    gpu = args.gpu_fake == "cuda"
    device: Callable[..., Any] | None = None
    catch_up: Callable[[], None] = lambda: None  # noqa: E731  # the no-GPU case does nothing
    if gpu:
        device, catch_up = _fake_gpu()
    tmr = maeltrace.Timer(device=device)
    print(f"started {tmr.run_id} {os.getpid()}", flush=True)

    step_s = args.step_ms / 1000.0
    epoch_region = tmr.region("epoch")
    batch = tmr.region("batch")
    forward = tmr.region("forward", gpu=gpu)
    backward = tmr.region("backward", gpu=gpu)
    for epoch in range(args.epochs):
        with epoch_region:
            for _ in tmr.iterate(range(args.steps)):
                with batch:
                    with forward:
                        _busy(step_s * _FORWARD_SHARE)
                    with backward:
                        _busy(step_s * (1.0 - _FORWARD_SHARE))
                catch_up()
        print(f"epoch-done {epoch + 1}", flush=True)
    print("finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
