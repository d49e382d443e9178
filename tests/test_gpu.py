"""On a real NVIDIA GPU: the CUDA-event clock makes no host sync in a training loop, its times
agree with synchronised CPU time and the host clock, and its event pool stays small; the JAX
and TensorFlow clocks on their GPU paths.

Every test is marked ``gpu`` and deselected by default (``-m "not gpu"`` in pyproject.toml):
``scripts/gpu-check`` runs them with ``-m gpu``. Without a CUDA device each is skipped, at run
time (a module-level skip would be reported while collecting, even where the tests are
deselected, which fails a run under ``MAELTRACE_NO_SKIPS=1``).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns
from typing import Any, TextIO

import pytest

import maeltrace
from benchmarks.gpu import Cnn, TorchEnv, make_cnn
from maeltrace import Timer, TimeType
from maeltrace.records import FLAG_COMPILED, NO_DEVICE_TIME

try:
    import torch
except ImportError:  # pragma: no cover - the torch extra is part of the test environment
    torch = None  # type: ignore[assignment]

pytestmark = pytest.mark.gpu

MS = 1_000_000
STEPS = 100
SYNC_MESSAGE = "synchronizing CUDA operation"  # c10/cuda: "called a synchronizing CUDA operation"
MAELTRACE_DIR = str(Path(maeltrace.__file__).resolve().parent) + os.sep


@pytest.fixture(autouse=True, scope="module")
def _cuda() -> None:
    """Skips every test of the module where torch sees no CUDA device."""
    if torch is None:
        pytest.skip("torch is not installed: these tests need torch with a CUDA device")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA initialization: ..." with no driver
        available = torch.cuda.is_available()
    if not available:
        pytest.skip("no CUDA device: torch.cuda.is_available() is False (run on a GPU machine)")


# -- helpers ----------------------------------------------------------------------------------


def _cnn(batch: int = 64) -> Cnn:
    """The GPU benchmark's small CNN (``benchmarks/gpu.py``), narrower, on CUDA, its optimizer
    and one batch: ``step`` trains one step, ``timed_step`` the same in gpu=True regions
    batch/forward/backward. Nothing in it waits for the GPU."""
    assert torch is not None
    return make_cnn(TorchEnv(torch, True, "cuda", "cuda"), batch, channels=(16, 32))


@dataclass
class SyncLog:
    """Warnings of ``torch.cuda.set_sync_debug_mode("warn")``, and the maeltrace frames on
    the stack when each was raised (a warning from C++ names only the frame that called torch,
    so the stack is read as it is shown)."""

    total: int = 0
    by_maeltrace: list[str] = field(default_factory=list)


@contextlib.contextmanager
def sync_debug_warnings() -> Iterator[SyncLog]:
    assert torch is not None
    log = SyncLog()

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if SYNC_MESSAGE not in str(message):
            return
        log.total += 1
        ours = [f for f in traceback.extract_stack() if f.filename.startswith(MAELTRACE_DIR)]
        if ours:
            log.by_maeltrace.append(f"{ours[-1].filename}:{ours[-1].lineno}: {message}")

    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield log
        finally:
            torch.cuda.set_sync_debug_mode(previous)


@contextlib.contextmanager
def gpu_trace_syncs() -> Iterator[list[str]]:
    """Every event, stream and device synchronisation torch makes while open, by kind, seen
    through torch's GPU trace hooks (those of its CUDA sanitizer)."""
    from torch.cuda import _gpu_trace

    seen: list[str] = []
    hooks: list[tuple[Any, Callable[..., None]]] = [
        (_gpu_trace.EventSynchronizationCallbacks, lambda *_: seen.append("event")),
        (_gpu_trace.StreamSynchronizationCallbacks, lambda *_: seen.append("stream")),
        (_gpu_trace.DeviceSynchronizationCallbacks, lambda *_: seen.append("device")),
    ]
    torch._C._activate_gpu_trace()  # stays on for the process; the hooks are ours to remove
    for registry, hook in hooks:
        registry.add_callback(hook)
    try:
        yield seen
    finally:
        for registry, hook in hooks:
            registry.callback_list.remove(hook)


def _trained(steps: int, tmr: Timer | None, cnn: Cnn) -> None:
    for _ in range(steps):
        if tmr is None:
            cnn.step()
        else:
            cnn.timed_step(tmr)


# -- the CUDA-event clock ---------------------------------------------------------------------


def test_the_torch_device_uses_cuda_events() -> None:
    from maeltrace.devices.torch_cuda import CudaEventClock

    tmr = Timer(device="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeviceClockWarning: this is the real clock
        clock = tmr.use_device()
    assert isinstance(clock, CudaEventClock)
    assert clock.name == "cuda-event"
    assert torch.cuda.get_device_name() in clock.description
    with tmr.region("work", gpu=True):
        torch.ones(1024, device="cuda").sum()
    assert "GPU rows: cuda-event" in tmr.summary().to_markdown()


def test_100_training_steps_make_no_host_sync_before_the_report() -> None:
    cnn = _cnn()
    _trained(5, None, cnn)  # warm-up: allocator, cuDNN, optimizer state
    torch.cuda.synchronize()
    with sync_debug_warnings() as untimed:
        _trained(STEPS, None, cnn)
    torch.cuda.synchronize()
    tmr = Timer(device="torch")
    clock = tmr.use_device()
    with sync_debug_warnings() as timed:
        _trained(STEPS, tmr, cnn)
    assert clock.host_syncs == 0  # read before anything asks for a time
    assert timed.by_maeltrace == []
    assert timed.total <= untimed.total  # the loop's own syncs, if any, and none more
    records = tmr.records()  # the report: one flush
    assert clock.host_syncs == 1
    samples = records.samples()
    for key in (TimeType.BATCH, TimeType.FORWARD, TimeType.BACKWARD):
        durations = samples.gpu[records.keys.index(key)]
        assert len(durations) == STEPS
        assert all(d > 0 for d in durations)


def test_nested_device_times_add_up_and_starts_are_monotonic() -> None:
    cnn = _cnn()
    _trained(5, None, cnn)
    tmr = Timer(device="torch")
    _trained(STEPS, tmr, cnn)
    records = tmr.records()
    gpu_rows = [i for i, d in enumerate(records.device_ns) if d != NO_DEVICE_TIME]
    assert len(gpu_rows) == 3 * STEPS
    starts = [records.device_start_ns[i] for i in gpu_rows]
    assert starts == sorted(starts)  # regions in start order, on one stream
    batch = tmr.get_time(TimeType.BATCH, gpu=True)
    forward = tmr.get_time(TimeType.FORWARD, gpu=True)
    backward = tmr.get_time(TimeType.BACKWARD, gpu=True)
    for b, f, w in zip(batch, forward, backward, strict=True):
        assert b >= f + w - 10e-6  # the batch's events enclose both; 10 µs for event resolution


def test_a_big_matmul_matches_cpu_time_with_an_explicit_synchronize() -> None:
    n = 4096
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    tmr = Timer(device="torch")
    cpu_ns = []
    for _ in range(10):
        torch.cuda.synchronize()
        start = perf_counter_ns()
        with tmr.region("matmul", gpu=True):
            for _ in range(4):
                a @ b
        torch.cuda.synchronize()
        cpu_ns.append(perf_counter_ns() - start)
    device = statistics.median(tmr.get_time("matmul", gpu=True))
    cpu = statistics.median(cpu_ns) / 1e9
    assert 0.8 * cpu <= device <= 1.02 * cpu, (device, cpu)


def test_device_starts_lie_inside_their_cpu_regions() -> None:
    x = torch.randn(1024, 1024, device="cuda")
    tmr = Timer(device="torch")
    for _ in range(50):
        with tmr.region("work", gpu=True):
            x @ x
        torch.cuda.synchronize()  # the GPU is idle when the next region opens
    records = tmr.records()  # flushes: places device starts on the host clock
    assert len(records) == 50
    starts = list(records.device_start_ns)
    assert starts == sorted(starts)
    for start, end, device_start in zip(
        records.start_ns, records.end_ns, records.device_start_ns, strict=True
    ):
        assert start - 1 * MS <= device_start <= end + 5 * MS, (start, end, device_start)


def test_the_event_pool_stays_small_when_the_loop_synchronizes_every_10_steps() -> None:
    from maeltrace.devices.torch_cuda import POLL_BATCH, CudaEventClock

    x = torch.randn(256, 256, device="cuda")
    tmr = Timer(device="torch")
    clock = tmr.use_device()
    assert isinstance(clock, CudaEventClock)
    for i in range(1000):
        with tmr.region("step", gpu=True):
            x @ x
        if i % 10 == 9:
            torch.cuda.synchronize()  # the loop's own wait, as .item() on a logged loss
    assert clock.host_syncs == 0
    assert clock.events_created <= 2 * POLL_BATCH + 4, clock.events_created
    assert clock.outstanding <= 2 * POLL_BATCH
    assert tmr.get_time_stats("step", gpu=True).count == 1000


def _peaks(tmr: Timer) -> dict[Any, list[int]]:
    """Peak allocated bytes of the timer's gpu regions, per key, in start order."""
    records = tmr.records()
    return {records.keys[k]: v for (k, _), v in records.samples().memory.items()}


def test_peak_memory_covers_the_tensors_of_a_region_and_of_its_inner_regions() -> None:
    tmr = Timer(device="torch", memory=True)
    clock = tmr.use_device()
    mb = 1 << 20
    torch.cuda.synchronize()
    with sync_debug_warnings() as log, tmr.region("outer", gpu=True):
        kept = torch.ones(64 * mb // 4, device="cuda")  # 64 MiB of float32, alive to the end
        with tmr.region("inner", gpu=True):
            freed = torch.ones(16 * mb // 4, device="cuda")
            freed.sum()
            del freed  # freed before the region ends: its peak stays
        with tmr.region("inner", gpu=True):
            pass
        kept.sum()
    assert clock.host_syncs == 0  # the peaks are read from the allocator, never waited for
    assert log.by_maeltrace == []
    peaks = _peaks(tmr)
    assert clock.host_syncs == 1  # the report's one flush, as without memory
    first, second = peaks["inner"]
    assert first >= 64 * mb + 16 * mb  # the kept tensor was alive while the inner one was
    assert 64 * mb <= second < first
    (outer,) = peaks["outer"]
    assert outer >= first  # the inner regions' resets lost none of the outer's peak


def test_peak_memory_in_a_training_loop_makes_no_host_sync() -> None:
    cnn = _cnn()
    _trained(5, None, cnn)
    torch.cuda.synchronize()
    tmr = Timer(device="torch", memory=True)
    clock = tmr.use_device()
    with sync_debug_warnings() as timed:
        _trained(STEPS, tmr, cnn)
    assert clock.host_syncs == 0
    assert timed.by_maeltrace == []
    peaks = _peaks(tmr)
    batch, forward, backward = (
        peaks[k] for k in (TimeType.BATCH, TimeType.FORWARD, TimeType.BACKWARD)
    )
    assert len(batch) == len(forward) == len(backward) == STEPS
    for b, f, w in zip(batch, forward, backward, strict=True):
        assert b >= max(f, w) > 0  # a batch encloses its forward and backward


def test_the_clock_makes_no_event_or_stream_sync_in_the_loop() -> None:
    """Counted by torch itself, not by the clock: Event.synchronize is outside the reach of
    the sync-debug mode. Last of the torch tests: the trace hooks stay active after it."""
    cnn = _cnn()
    _trained(5, None, cnn)
    torch.cuda.synchronize()
    with gpu_trace_syncs() as untimed:
        _trained(20, None, cnn)
    torch.cuda.synchronize()
    tmr = Timer(device="torch")
    with gpu_trace_syncs() as timed:
        _trained(20, tmr, cnn)
    assert sorted(timed) == sorted(untimed)
    with gpu_trace_syncs() as report:
        tmr.get_time(TimeType.BATCH, gpu=True)
    assert report == ["event"]  # the flush waits for its marker event, once


# -- JAX and TensorFlow on their GPU paths ----------------------------------------------------


def test_jax_times_a_jitted_step_on_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch holds memory too
    jax = pytest.importorskip("jax", reason="jax is not installed")
    if jax.default_backend() != "gpu":
        pytest.skip(f"jax.default_backend() is {jax.default_backend()!r}: no jax CUDA plugin")
    jnp = jax.numpy
    x = jax.random.normal(jax.random.PRNGKey(0), (2048, 2048))

    def work(x: Any) -> Any:
        return jnp.tanh(x @ x).sum()

    f = jax.jit(work)

    tmr = Timer(device="jax")
    assert tmr.use_device().name == "jax-block"
    for _ in range(20):
        with tmr.region("step", gpu=True) as region:
            region.block(f(x))
    records = tmr.records()
    assert sum(1 for flags in records.device_flags if flags & FLAG_COMPILED) == 1
    device = tmr.get_time("step", gpu=True)
    cpu = tmr.get_time("step")
    assert len(device) == len(cpu) == 19  # the compiling first call is reported apart
    assert all(d > 0 for d in device)
    # The device time runs to block()'s return, the CPU time to the region's end: about equal.
    assert statistics.median(device) == pytest.approx(statistics.median(cpu), rel=0.1, abs=1e-4)
    assert tmr.device_clock is not None and tmr.device_clock.host_syncs == 0


def test_tensorflow_times_regions_with_device_syncs_on_the_gpu() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed")
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        pytest.skip("TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') is empty)")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised
            tf.config.experimental.set_memory_growth(gpu, True)
    x = tf.random.normal((2048, 2048))
    tmr = Timer(device="tensorflow")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeviceClockWarning: TF sees its GPU
        clock = tmr.use_device()
    assert clock.name == "tf-sync"
    for _ in range(10):
        with tmr.region("matmul", gpu=True):
            tf.linalg.matmul(x, x)
    assert clock.host_syncs == 20  # one at each end of every region
    device = tmr.get_time("matmul", gpu=True)
    assert len(device) == 10
    assert all(d > 0 for d in device)
