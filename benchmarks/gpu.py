"""The GPU check's benchmark: what gpu=True regions measure on an NVIDIA GPU, and what they cost.

What it measures:
    (a) Matmul. ``torch.mm`` of two n x n matrices (n = 4096; 1024 with ``--quick``), in
        float32 and float16, each inside ``tmr.region(key, gpu=True)``, repeated ``iters``
        times under ``torch.profiler`` (CPU and CUDA activity). The median of maeltrace's
        event-timed device durations is set against the median of the kernel time that the
        profiler attributes to each ``aten::mm`` call (``FunctionEvent.device_time_total``:
        the sum of the kernels it launched, in µs; ``cuda_time*`` is deprecated in torch
        2.15). The same matmuls give both figures. Before the timed loop a few untimed
        matmuls are queued so that the GPU is already busy when the first region opens, as
        in a training loop; otherwise the first event pair would also span the launch latency.
        Target: within 2%.
    (b) Step time. A small CNN (two 3x3 conv layers with ReLU and 2x2 max-pooling, then a
        linear layer; 32x32x3 images, batch 128, SGD with momentum) trains untimed, and with
        ``gpu=True`` regions ``batch`` around the step and ``forward`` and ``backward``
        inside it. The two run in alternating blocks of ``block`` steps, for ``rounds``
        rounds, the order swapped each round so drift cancels out; each block ends with one
        ``torch.cuda.synchronize()`` inside its time, and a garbage collection before it.
        The figure is the median over rounds of the ratio of the two blocks' step times
        within a round. Target: at most 1% slower.
    (c) Host synchronisations. A fresh timer times 100 steps of the same loop. Counted: the
        clock's own ``host_syncs`` before anything is read, and, with
        ``torch.cuda.set_sync_debug_mode("warn")``, the synchronizing-call warnings raised
        while a maeltrace frame was on the stack (the untimed loop's own count is printed
        beside it). The sync-debug mode flags stream and device syncs and blocking copies,
        not ``Event.synchronize``, which is why the clock's counter is read too. Target: 0.
    (d) JAX, where its backend is a GPU: a jitted MLP training step timed with
        ``region.block`` (the ``jax-block`` clock), untimed vs timed step time, and the
        region's device time against its CPU time. The first call, which compiles, is
        flagged by the clock and counted apart.
    (e) TensorFlow, where it sees a GPU: a ``tf.function`` CNN step, untimed vs a ``gpu=True``
        region per step on the ``tf-sync`` clock with ``sync_every`` 1 and 10, and the host
        syncs that clock makes per step (two per measured region, by design).

    (d) and (e) run in child processes of this script (``--section jax`` / ``--section tf``):
    TensorFlow and torch in one process can abort the interpreter when torch later loads
    triton, and each framework takes GPU memory of its own. JAX is started with
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` and TensorFlow with memory growth, so that
    neither takes most of the GPU's memory.

    On a machine without CUDA the script runs end to end on the CPU (torch device ``cpu``,
    the ``cpu-sync`` clock, which records no device times, so CPU times stand in for them; no
    CUDA profiler activity, no sync-debug mode, smaller sizes) and
    prints the same tables, marked "no CUDA device: CPU figures, the targets apply to a GPU";
    there the JAX and TensorFlow children start first and run beside the torch sections, to
    keep the run short, so its step times are noise.
    The timers are built with ``MAELTRACE_EXPORT=0``: they export no spans and write no files.
    Nothing here asserts a figure: the targets section prints verdicts. The exit status is 1
    only where a section raised (or a child process failed), else 0.

How to run::

    uv run python benchmarks/gpu.py            # on a GPU machine: about a minute
    uv run python benchmarks/gpu.py --quick    # smaller sizes
    scripts/gpu-check                          # the gpu-marked tests, then this
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns
from typing import Any, TextIO

import maeltrace
from maeltrace import Timer
from maeltrace.records import FLAG_COMPILED

try:
    from benchmarks import _common as common
except ModuleNotFoundError:  # run as a script: benchmarks/ is first on sys.path
    import _common as common  # type: ignore[no-redef]

HEADING = "maeltrace GPU check"
CPU_BANNER = "no CUDA device: CPU figures, the targets apply to a GPU"
SECTION_A = "(a) matmul: event-timed region vs the kernel time torch.profiler reports"
SECTION_B = "(b) small CNN training step: gpu=True regions vs untimed"
SECTION_C = "(c) host synchronisations in 100 training steps"
SECTION_D = "(d) JAX: jitted step timed with region.block"
SECTION_E = "(e) TensorFlow: tf.function step on the tf-sync clock"

MATMUL_TARGET = 0.02
"""Largest relative difference of event-timed and profiler kernel time."""
STEP_TARGET = 0.01
"""Largest slowdown of a training step with gpu=True regions."""
SYNC_STEPS = 100
"""Steps over which host synchronisations are counted."""
SYNC_MESSAGE = "synchronizing CUDA operation"
"""What torch's sync-debug warnings say (c10/cuda: "called a synchronizing CUDA operation")."""
QUEUED = 3
"""Untimed matmuls queued ahead of the timed ones, so the GPU is busy when regions open."""
CHILD_TIMEOUT_S = 120

REPO = Path(__file__).resolve().parent.parent
MAELTRACE_DIR = str(Path(maeltrace.__file__).resolve().parent) + os.sep


@dataclass(frozen=True)
class Sizes:
    """Problem sizes, per machine and ``--quick``."""

    matmul_n: int
    matmul_iters: int
    dtypes: tuple[str, ...]
    cnn_batch: int
    block: int
    rounds: int


def sizes_for(cuda: bool, quick: bool) -> Sizes:
    if cuda:
        if quick:
            return Sizes(1024, 20, ("float32", "float16"), 128, 20, 6)
        return Sizes(4096, 50, ("float32", "float16"), 128, 50, 20)
    if quick:
        return Sizes(256, 10, ("float32",), 16, 3, 3)
    return Sizes(512, 20, ("float32",), 32, 5, 5)


@dataclass
class Target:
    """One line of the closing targets table."""

    what: str
    figure: str
    met: bool | None  # None: not measured


@dataclass
class Run:
    """What the sections found: targets for the closing table, and whether any raised."""

    cpu_figures: bool
    targets: list[Target] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def verdict(self, met: bool | None) -> str:
        if met is None:
            return "not measured"
        if self.cpu_figures:
            return "(CPU figures; the target applies to a GPU)"
        return "met" if met else "MISSED"


# -- small helpers ----------------------------------------------------------------------------

EXPORT_ENV = "MAELTRACE_EXPORT"
"""Off while the benchmark's timers are built: they measure regions, they export nothing."""


def new_timer(**kwargs: Any) -> Timer:
    """A `Timer` that keeps its regions to itself (no spans, no files at exit)."""
    with common.env_var(EXPORT_ENV, "0"):
        return Timer(**kwargs)


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.3f} ms"


def _pct(x: float) -> str:
    return f"{x * 100:+.2f}%"


def _device_times(tmr: maeltrace.Timer, key: str) -> list[float]:
    """The device times of ``key``; without a GPU there are none, and its CPU times stand in."""
    try:
        return tmr.get_time(key, gpu=True)
    except KeyError:
        return tmr.get_time(key)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextmanager
def noted_warnings(indent: str = "  ") -> Iterator[None]:
    """Keeps the section's warnings (a stand-in clock's DeviceClockWarning, a framework's
    notices) from escaping, where pytest would turn them into errors; prints each distinct one
    once, after the section."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen: dict[tuple[str, str], int] = {}
    for w in caught:
        text = str(w.message).splitlines()[0] if str(w.message) else ""
        name = w.category.__name__
        seen[(name, text[:160])] = seen.get((name, text[:160]), 0) + 1
    for (name, text), count in seen.items():
        times = f" (x{count})" if count > 1 else ""
        print(f"{indent}note: {name}: {text}{times}")


@dataclass
class SyncLog:
    """Sync-debug warnings seen while it was active."""

    total: int = 0
    from_maeltrace: int = 0
    where: list[str] = field(default_factory=list)


@contextmanager
def sync_debug_log(torch: Any) -> Iterator[SyncLog]:
    """Turns on ``torch.cuda.set_sync_debug_mode("warn")`` and counts its warnings, noting
    those raised while a maeltrace frame was on the stack; restores the mode after.

    A warning from C++ names the Python frame that called into torch, not the caller's
    caller, so the stack is read when the warning is shown."""
    log = SyncLog()
    others: list[warnings.WarningMessage] = []

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if SYNC_MESSAGE not in str(message):
            others.append(warnings.WarningMessage(message, category, filename, lineno))
            return
        log.total += 1
        frames = traceback.extract_stack()[:-1]
        ours = [f for f in frames if f.filename.startswith(MAELTRACE_DIR)]
        if ours:
            log.from_maeltrace += 1
            log.where.append(f"{ours[-1].filename}:{ours[-1].lineno}")

    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield log
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    for w in others:  # re-issued outside, to the caller's filters
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# -- torch: the device and the model ----------------------------------------------------------


@dataclass
class TorchEnv:
    torch: Any
    cuda: bool
    device: str
    name: str

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


def torch_env() -> TorchEnv:
    import torch

    with warnings.catch_warnings():
        # "CUDA initialization: ..." where a CUDA build finds no driver.
        warnings.simplefilter("ignore")
        cuda = torch.cuda.is_available()
    if cuda:
        return TorchEnv(torch, True, "cuda", torch.cuda.get_device_name())
    return TorchEnv(torch, False, "cpu", platform.processor() or platform.machine())


@dataclass
class Cnn:
    """A small CNN with its optimizer and one batch, and its step with and without regions."""

    step: Callable[[], None]
    timed_step: Callable[[Timer], None]


def make_cnn(env: TorchEnv, batch: int, channels: tuple[int, int] = (32, 64)) -> Cnn:
    """Two 3x3 conv layers of ``channels`` with ReLU and 2x2 max-pooling, then a linear layer,
    on one batch of 32x32x3 images, with SGD and momentum (tests/test_gpu.py uses it too).
    Nothing in its steps waits for the device."""
    torch = env.torch
    nn = torch.nn
    c1, c2 = channels
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 8 * 8, 10),
    ).to(env.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=env.device)
    y = torch.randint(0, 10, (batch,), device=env.device)
    cross_entropy = nn.functional.cross_entropy

    def step() -> None:
        loss = cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed_step(tmr: Timer) -> None:
        with tmr.region("batch", gpu=True):
            with tmr.region("forward", gpu=True):
                loss = cross_entropy(model(x), y)
            with tmr.region("backward", gpu=True):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    return Cnn(step, timed_step)


def block_ns(step: Callable[[], None], steps: int, sync: Callable[[], None]) -> float:
    """Step time of a block of ``steps`` steps, the device waited for at its end."""
    gc.collect()
    start = perf_counter_ns()
    for _ in range(steps):
        step()
    sync()
    return (perf_counter_ns() - start) / steps


# -- (a) matmul -------------------------------------------------------------------------------


def section_matmul(env: TorchEnv, sizes: Sizes, run: Run) -> None:
    torch = env.torch
    from torch.profiler import ProfilerActivity, profile

    n, iters = sizes.matmul_n, sizes.matmul_iters
    activities = [ProfilerActivity.CPU]
    if env.cuda:
        activities.append(ProfilerActivity.CUDA)
        reference = "kernel time (profiler)"
    else:
        reference = "op CPU time (profiler)"
    print(f"  {n}x{n} @ {n}x{n}, {iters} regions per dtype, {QUEUED} untimed matmuls queued ahead")
    if env.cuda:
        tf32 = torch.backends.cuda.matmul.allow_tf32
        print(f"  float32 matmuls with TF32 {'allowed' if tf32 else 'off'} (torch's setting)")
    print(f"  {'dtype':<9} {'event-timed (median)':>21} {reference + ' (median)':>32} {'diff':>8}")
    tmr = new_timer(device="torch")
    clock = tmr.use_device()
    for dtype_name in sizes.dtypes:
        dtype = getattr(torch, dtype_name)
        a = torch.randn(n, n, device=env.device, dtype=dtype)
        b = torch.randn(n, n, device=env.device, dtype=dtype)
        for _ in range(3):  # cuBLAS handles and heuristics, outside the profile
            torch.mm(a, b)
        env.sync()
        key = f"matmul {dtype_name}"
        with profile(activities=activities) as prof:
            for _ in range(QUEUED):
                torch.mm(a, b)
            for _ in range(iters):
                with tmr.region(key, gpu=True):
                    torch.mm(a, b)
            env.sync()
        region_ns = [s * 1e9 for s in _device_times(tmr, key)]
        ops = sorted(
            (e for e in prof.events() if e.name == "aten::mm"), key=lambda e: e.time_range.start
        )[-iters:]
        if env.cuda:
            prof_ns = [e.device_time_total * 1e3 for e in ops]
        else:
            prof_ns = [e.cpu_time_total * 1e3 for e in ops]
        if len(ops) != iters or not any(prof_ns):
            kernels = sum(1 for e in prof.events() if str(e.device_type).endswith("CUDA"))
            missing = f"no figure: {len(ops)} aten::mm calls, {kernels} CUDA events"
            print(f"  {dtype_name:<9} {_ms(_median(region_ns)):>21}   ({missing})")
            run.targets.append(Target(f"(a) matmul {dtype_name} within 2%", "no figure", None))
            continue
        diff = _median(region_ns) / _median(prof_ns) - 1
        per_iter_us = _median([abs(r - p) / 1e3 for r, p in zip(region_ns, prof_ns, strict=True)])
        print(
            f"  {dtype_name:<9} {_ms(_median(region_ns)):>21} {_ms(_median(prof_ns)):>32} "
            f"{_pct(diff):>8}   (median |event - kernel| per call {per_iter_us:.1f} µs)"
        )
        met = abs(diff) <= MATMUL_TARGET
        run.targets.append(Target(f"(a) matmul {dtype_name}: within 2%", _pct(diff), met))
        del a, b
    print(f"  clock: {clock.name}: {clock.description}")


# -- (b) step time ----------------------------------------------------------------------------


def section_steps(env: TorchEnv, sizes: Sizes, run: Run) -> None:
    cnn = make_cnn(env, sizes.cnn_batch)
    tmr = new_timer(device="torch")
    clock = tmr.use_device()
    print(
        f"  2 conv + linear on 32x32x3, batch {sizes.cnn_batch}, SGD with momentum; "
        f"{sizes.rounds} rounds of 2 blocks x {sizes.block} steps, order alternating"
    )
    print(f"  recorder: {tmr.implementation} (the compiled one where maeltrace._hotpath is built)")
    for _ in range(max(3, sizes.block // 2)):  # warm-up: allocator, cuDNN, optimizer state
        cnn.step()
        cnn.timed_step(tmr)
    env.sync()
    tmr.reset()

    def timed() -> None:
        cnn.timed_step(tmr)

    untimed_ns: list[float] = []
    timed_ns: list[float] = []
    ratios: list[float] = []
    for r in range(sizes.rounds):
        order = ("untimed", "timed") if r % 2 == 0 else ("timed", "untimed")
        got = {}
        for which in order:
            got[which] = block_ns(cnn.step if which == "untimed" else timed, sizes.block, env.sync)
            tmr.flush()  # after the block's own synchronize: resolves, waits for nothing
        untimed_ns.append(got["untimed"])
        timed_ns.append(got["timed"])
        ratios.append(got["timed"] / got["untimed"])
    ratio = _median(ratios)
    print(f"  untimed step (median)           {_ms(_median(untimed_ns)):>12}")
    print(f"  with gpu=True regions (median)  {_ms(_median(timed_ns)):>12}")
    print(
        f"  ratio (median over rounds)      {ratio:>12.4f}   ({_pct(ratio - 1)}; "
        f"rounds from {min(ratios):.4f} to {max(ratios):.4f})"
    )
    print(f"  regions, median CPU / device time ({clock.name}):")
    for key in ("batch", "forward", "backward"):
        cpu = _median(tmr.get_time(key))
        dev = _median(_device_times(tmr, key))
        print(f"    {key:<9} {_ms(cpu * 1e9):>12} / {_ms(dev * 1e9):>12}")
    run.targets.append(
        Target(
            "(b) CNN step with gpu=True regions: at most 1% slower",
            _pct(ratio - 1),
            ratio - 1 <= STEP_TARGET,
        )
    )


# -- (c) host synchronisations ----------------------------------------------------------------


def section_syncs(env: TorchEnv, sizes: Sizes, run: Run) -> None:
    cnn = make_cnn(env, sizes.cnn_batch)
    for _ in range(5):
        cnn.step()
    env.sync()
    tmr = new_timer(device="torch")
    clock = tmr.use_device()
    before = clock.host_syncs
    untimed = timed = None
    if env.cuda:
        with sync_debug_log(env.torch) as untimed:
            for _ in range(SYNC_STEPS):
                cnn.step()
        env.sync()
        with sync_debug_log(env.torch) as timed:
            for _ in range(SYNC_STEPS):
                cnn.timed_step(tmr)
    else:
        for _ in range(SYNC_STEPS):
            cnn.timed_step(tmr)
    in_loop = clock.host_syncs - before
    created = getattr(clock, "events_created", None)
    outstanding = getattr(clock, "outstanding", None)
    count = len(_device_times(tmr, "batch"))  # the report: flushes
    after = clock.host_syncs - before
    print(f"  steps: {SYNC_STEPS}, each with gpu=True regions batch, forward and backward")
    print(f"  clock: {clock.name}: {clock.description}")
    print(f"  host syncs made by the clock during the loop    {in_loop:>6}   target 0")
    if timed is not None and untimed is not None:
        mine = timed.from_maeltrace
        print(f"  sync-debug warnings with a maeltrace frame      {mine:>6}   target 0")
        for where in sorted(set(timed.where)):
            print(f"    at {where}")
        print(
            f"  sync-debug warnings in the loop, timed/untimed  {timed.total:>3} / {untimed.total}"
            "   (the loop's own syncs)"
        )
    else:
        print("  sync-debug warnings                              n/a (needs CUDA)")
    print(f"  host syncs once the report was read             {after:>6}   (the flush, after it)")
    if created is not None:
        print(f"  CUDA events created / outstanding regions at the end  {created} / {outstanding}")
    print(f"  batch regions with a device time                {count:>6}")
    syncs = in_loop + (timed.from_maeltrace if timed is not None else 0)
    run.targets.append(Target(f"(c) host syncs in {SYNC_STEPS} steps: 0", str(syncs), syncs == 0))


# -- (d) JAX and (e) TensorFlow, in child processes -------------------------------------------


class Child:
    """One section in a child process of this script; its output goes to temporary files, so
    that two may run at once without filling a pipe."""

    def __init__(self, section: str, quick: bool, cpu_figures: bool) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--section", section]
        if quick:
            argv.append("--quick")
        if cpu_figures:
            argv.append("--cpu-figures")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env[EXPORT_ENV] = "0"
        env["PYTHONUNBUFFERED"] = "1"
        self.section = section
        # Closed in finish(), which every Child gets.
        self._stdout = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self._started = perf_counter_ns()
        self._process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=self._stdout, stderr=self._stderr, text=True
        )

    def finish(self, run: Run) -> None:
        """Waits for the child (`CHILD_TIMEOUT_S` from its start at most) and prints its
        report; a failure is printed with the end of its stderr, and noted in ``run``."""
        left = CHILD_TIMEOUT_S - (perf_counter_ns() - self._started) / 1e9
        try:
            code: int | str = self._process.wait(timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            code = f"a kill after {CHILD_TIMEOUT_S} s"
        seconds = (perf_counter_ns() - self._started) / 1e9
        with self._stdout, self._stderr:
            self._stdout.seek(0)
            self._stderr.seek(0)
            print(self._stdout.read(), end="")
            stderr = self._stderr.read()
        print(f"  ({seconds:.1f} s, in a child process)")
        if code != 0:
            print(f"  FAILED: the {self.section} section ended with {code}; its stderr ends:")
            for line in stderr.strip().splitlines()[-20:]:
                print(f"    {line}")
            run.errors.append(f"{self.section}: ended with {code}")


def _interleaved(
    variants: dict[str, Callable[[], None]], block: int, rounds: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Per-step times of each variant's blocks, the order rotated each round."""
    names = list(variants)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in common.rotated(names, r):
            out[name].append(block_ns(variants[name], block, sync))
    return out


def _ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    return _median([t / b for t, b in zip(times[name], times[base], strict=True)])


def section_jax(quick: bool, cpu_figures: bool) -> int:
    print(SECTION_D)
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        print("  skipped: jax is not installed")
        return 0
    backend = jax.default_backend()
    if backend != "gpu" and not cpu_figures:
        print(f"  skipped: jax.default_backend() is {backend!r}, not 'gpu' (no jax CUDA plugin)")
        return 0
    if backend != "gpu":
        print(f"  {CPU_BANNER}")
    big = backend == "gpu"
    d, h, batch = (1024, 4096, 512) if big else (64, 128, 32)
    block, rounds = (20, 6) if quick else (50, 10)
    if not big:
        block, rounds = (5, 3) if quick else (10, 5)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    params = (jax.random.normal(k1, (d, h)) * 0.01, jax.random.normal(k2, (h, 10)) * 0.01)
    x = jax.random.normal(k3, (batch, d))
    y = jnp.zeros((batch, 10))

    def loss(p: Any, x: Any, y: Any) -> Any:
        return jnp.mean((jax.nn.relu(x @ p[0]) @ p[1] - y) ** 2)

    @jax.jit
    def step(p: Any, x: Any, y: Any) -> Any:
        grads = jax.grad(loss)(p, x, y)
        return tuple(w - 1e-3 * g for w, g in zip(p, grads, strict=True))

    state = {"p": params}
    with noted_warnings():
        tmr = new_timer(device="jax")
        clock = tmr.use_device()
        with tmr.region("step", gpu=True) as region:  # the first call compiles
            state["p"] = region.block(step(state["p"], x, y))

        def untimed() -> None:
            state["p"] = jax.block_until_ready(step(state["p"], x, y))  # type: ignore[no-untyped-call]

        def timed() -> None:
            with tmr.region("step", gpu=True) as region:
                state["p"] = region.block(step(state["p"], x, y))

        for _ in range(3):
            untimed()
            timed()
        times = _interleaved({"untimed": untimed, "timed": timed}, block, rounds, lambda: None)
        records = tmr.records()
    compiled = sum(1 for f in records.device_flags if f & FLAG_COMPILED)
    ratio = _ratio(times, "timed", "untimed")
    cpu = _median(tmr.get_time("step"))
    dev = _median(_device_times(tmr, "step"))
    print(f"  backend {backend}, jax {jax.__version__}; MLP {d}-{h}-10, batch {batch}")
    print(f"  clock: {clock.name}: {clock.description}")
    print(f"  untimed step, block_until_ready (median)  {_ms(_median(times['untimed'])):>12}")
    print(f"  step in a gpu=True region (median)        {_ms(_median(times['timed'])):>12}")
    print(f"  ratio (median over rounds)                {ratio:>12.4f}   ({_pct(ratio - 1)})")
    print(f"  region device / CPU time (median)         {_ms(dev * 1e9)} / {_ms(cpu * 1e9)}")
    print(f"  regions flagged as compiling              {compiled:>12}   (the first call)")
    print(f"  host syncs made by the clock              {clock.host_syncs:>12}")
    return 0


def section_tf(quick: bool, cpu_figures: bool) -> int:
    print(SECTION_E)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tensorflow as tf
    except ImportError:
        print("  skipped: tensorflow is not installed")
        return 0
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised
            tf.config.experimental.set_memory_growth(gpu, True)
    if not gpus and not cpu_figures:
        print("  skipped: TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') is empty)")
        return 0
    if not gpus:
        print(f"  {CPU_BANNER}")
    batch = 128 if gpus else 16
    block, rounds = (20, 6) if quick else (50, 10)
    if not gpus:
        block, rounds = (4, 3) if quick else (10, 5)
    tf.random.set_seed(0)
    k1 = tf.Variable(tf.random.normal((3, 3, 3, 32), stddev=0.1))
    k2 = tf.Variable(tf.random.normal((3, 3, 32, 64), stddev=0.1))
    w = tf.Variable(tf.random.normal((8 * 8 * 64, 10), stddev=0.01))
    variables = [k1, k2, w]
    x = tf.random.normal((batch, 32, 32, 3))
    y = tf.zeros((batch,), dtype=tf.int32)

    def train_step_eager() -> Any:
        with tf.GradientTape() as tape:
            h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(x, k1, 1, "SAME")), 2, 2, "VALID")
            h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(h, k2, 1, "SAME")), 2, 2, "VALID")
            logits = tf.reshape(h, (batch, -1)) @ w
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        for v, g in zip(variables, tape.gradient(loss, variables), strict=True):
            v.assign_sub(0.01 * g)
        return loss

    train_step = tf.function(train_step_eager)
    sync = tf.test.experimental.sync_devices
    with noted_warnings():
        timers = {
            "sync_every=1": new_timer(device="tensorflow"),
            "sync_every=10": new_timer(device="tensorflow", sync_every=10),
        }
        clocks = {name: t.use_device() for name, t in timers.items()}

        def make(tmr: Timer) -> Callable[[], None]:
            def timed() -> None:
                with tmr.region("batch", gpu=True):
                    train_step()

            return timed

        variants: dict[str, Callable[[], None]] = {"untimed": lambda: train_step()}
        variants.update({name: make(t) for name, t in timers.items()})
        for fn in variants.values():
            for _ in range(3):
                fn()
        sync()
        for t in timers.values():
            t.reset()
        syncs_before = {name: c.host_syncs for name, c in clocks.items()}
        times = _interleaved(variants, block, rounds, sync)
    print(f"  tensorflow {tf.__version__}; devices: {[d.name for d in gpus] or 'CPU only'}")
    print(f"  2 conv + linear on 32x32x3, batch {batch}; {rounds} rounds of {block}-step blocks")
    print(f"  {'variant':<15} {'step (median)':>14} {'vs untimed':>11} {'host syncs/step':>16}")
    print(f"  {'untimed':<15} {_ms(_median(times['untimed'])):>14}")
    for name, t in timers.items():
        steps = block * rounds
        per_step = (clocks[name].host_syncs - syncs_before[name]) / steps
        ratio = _ratio(times, name, "untimed")
        print(
            f"  {name:<15} {_ms(_median(times[name])):>14} {_pct(ratio - 1):>11} {per_step:>16.2f}"
        )
        dev = _median(_device_times(t, "batch"))
        cpu = _median(t.get_time("batch"))
        print(f"    region device / CPU time (median): {_ms(dev * 1e9)} / {_ms(cpu * 1e9)}")
    print(f"  clock: {clocks['sync_every=1'].name}: {clocks['sync_every=1'].description}")
    return 0


# -- main -------------------------------------------------------------------------------------


def _section(run: Run, heading: str, body: Callable[[], None]) -> None:
    print(heading)
    if run.cpu_figures:
        print(f"  {CPU_BANNER}")
    started = perf_counter_ns()
    try:
        with noted_warnings():
            body()
    except Exception:
        print("  FAILED:")
        print("".join(f"    {line}\n" for line in traceback.format_exc().splitlines()), end="")
        run.errors.append(heading)
    print(f"  ({common.seconds_since(started):.1f} s)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the GPU check's benchmark and prints its tables.

    Args:
        argv: command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status: 0, or 1 where a section raised or a child process failed.
    """
    parser = common.parser(__doc__, "smaller sizes, fewer rounds")
    parser.add_argument("--no-jax", action="store_true", help="skip the JAX section")
    parser.add_argument("--no-tf", action="store_true", help="skip the TensorFlow section")
    parser.add_argument("--section", choices=("jax", "tf"), help=argparse.SUPPRESS)
    parser.add_argument("--cpu-figures", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section == "jax":
        return section_jax(args.quick, args.cpu_figures)
    if args.section == "tf":
        return section_tf(args.quick, args.cpu_figures)

    started = perf_counter_ns()
    env = torch_env()
    sizes = sizes_for(env.cuda, args.quick)
    run = Run(cpu_figures=not env.cuda)
    torch = env.torch
    print(f"{HEADING}{' (quick)' if args.quick else ''}")
    print(
        f"python {common.python_version()}, maeltrace {maeltrace.__version__}, torch "
        f"{torch.__version__} (CUDA {torch.version.cuda or 'none'}), device: {env.name}"
    )
    if run.cpu_figures:
        print(f"*** {CPU_BANNER} ***")
        print("*** (the JAX and TensorFlow sections run beside the torch ones: noisy times) ***")
    print()
    wanted = [name for name in ("jax", "tf") if not getattr(args, f"no_{name}")]
    children: dict[str, Child] = {}
    if run.cpu_figures:  # their figures are CPU figures anyway: run them beside the torch ones
        children = {name: Child(name, args.quick, True) for name in wanted}
    _section(run, SECTION_A, lambda: section_matmul(env, sizes, run))
    _section(run, SECTION_B, lambda: section_steps(env, sizes, run))
    _section(run, SECTION_C, lambda: section_syncs(env, sizes, run))
    if env.cuda:
        torch.cuda.empty_cache()  # leave the GPU's memory to JAX and TensorFlow
    for name, heading in (("jax", SECTION_D), ("tf", SECTION_E)):
        if name not in wanted:
            print(f"{heading}\n  skipped (--no-{name})\n")
            continue
        # On a GPU one at a time, after the torch sections, so that nothing runs beside them.
        child = children.get(name) or Child(name, args.quick, run.cpu_figures)
        child.finish(run)
        print()
    print("targets" + (f" ({CPU_BANNER})" if run.cpu_figures else ""))
    for t in run.targets:
        print(f"  {t.what:<55} {t.figure:>9}   {run.verdict(t.met)}")
    for error in run.errors:
        print(f"  section failed: {error}")
    print(f"\ntook {common.seconds_since(started):.1f} s")
    return 1 if run.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
