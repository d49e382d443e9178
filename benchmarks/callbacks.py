"""What each trainer callback of maeltrace costs a training step, against the same training
without it.

What it measures:
    For each trainer, the wall-clock microseconds per training step of one ``fit`` of a tiny
    model (so that the callback's cost is visible next to the step's), without the callback
    (the baseline) and with it, recording into a fresh ``Timer(export=False)``:

    * ``keras``: Keras 3 on the TensorFlow backend, ``model.fit`` of one dense layer, with
      `maeltrace.keras.TimerCallback`. Its cost includes what Keras itself does differently
      for a callback that overrides a batch's end: it turns the logs into Python numbers at
      every batch, and dispatches the batch-end hooks on the training thread;
    * ``lightning``: ``Trainer.fit`` of one linear layer, with `maeltrace.lightning.TimerCallback`
      (the Trainer is built outside the timed section, ``fit`` is timed whole);
    * ``transformers``: the Hugging Face ``Trainer`` on a tiny randomly initialised GPT-2 built
      from a config (random tokens), with ``maeltrace.transformers.TimerCallback``; measured
      only where that module exists (it is reported as such otherwise).

How it measures:
    Each trainer runs in its own process (TensorFlow and torch each bring an LLVM, which clash
    in one process; Keras chooses its backend once per process). Each arm (trainer without,
    trainer with) runs one fit of ``--steps`` steps per round; the arms of one trainer run back
    to back, in an order that alternates each round, for ``--rounds`` rounds after one untimed
    warm-up round (Keras compiles its step then). A round's figure is the fit's time over its
    steps; the table reports the medians over rounds, their difference in microseconds, and
    the ratio: the median over rounds of the two arms' ratio within a round, so that load that
    comes and goes between rounds cancels. The fits' own setup (Keras' and Lightning's per-fit
    work) is in both arms, spread over the steps: more steps give a truer per-step figure.
    Nothing here asserts a timing.

How to run::

    uv run --group bench python benchmarks/callbacks.py            # full, a few minutes
    uv run --group bench python benchmarks/callbacks.py --quick    # small sizes
    uv run --group bench python benchmarks/callbacks.py --trainers keras lightning
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import maeltrace

try:
    from benchmarks import _common as common
except ModuleNotFoundError:  # run as a script: benchmarks/ is first on sys.path
    import _common as common  # type: ignore[no-redef]

DEFAULT_STEPS = 200
DEFAULT_ROUNDS = 7
QUICK_STEPS = 16
QUICK_ROUNDS = 2

Fit = Callable[[bool], int]
"""One fit of the trainer's steps, without (False) or with (True) the callback; returns its
nanoseconds (the fit alone, not building the trainer)."""


def _keras(steps: int, stack: ExitStack) -> Fit:
    """Keras 3, on TensorFlow unless the process already chose a backend."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from maeltrace.keras import TimerCallback

    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((steps, 4), dtype="float32")
    y = np.zeros((steps, 1), dtype="float32")

    def fit(callback: bool) -> int:
        callbacks = [TimerCallback(maeltrace.Timer(export=False))] if callback else []
        started = perf_counter_ns()
        model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=callbacks)
        return perf_counter_ns() - started

    return fit


def _lightning(steps: int, stack: ExitStack) -> Fit:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from maeltrace.lightning import TimerCallback

    # Lightning's per-Trainer banners and its "few workers" advice, at every fit.
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, index: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = DataLoader(TensorDataset(torch.zeros(steps, 4), torch.zeros(steps, 1)), batch_size=1)
    module = Tiny()

    def fit(callback: bool) -> int:
        callbacks = [TimerCallback(maeltrace.Timer(export=False))] if callback else []
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=1,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        started = perf_counter_ns()
        trainer.fit(module, loader)
        return perf_counter_ns() - started

    return fit


def _transformers(steps: int, stack: ExitStack) -> Fit:
    """The Hugging Face Trainer on a 2-layer GPT-2 of width 32, from a config."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=16, vocab_size=64)
    model = transformers.GPT2LMHeadModel(config)
    tokens = torch.randint(
        0, config.vocab_size, (steps, 16), generator=torch.Generator().manual_seed(0)
    )
    data = [{"input_ids": t, "labels": t} for t in tokens]
    folder = stack.enter_context(tempfile.TemporaryDirectory())

    def fit(callback: bool) -> int:
        args = transformers.TrainingArguments(
            output_dir=folder,
            max_steps=steps,
            per_device_train_batch_size=1,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
        )
        callbacks = []
        if callback:
            # By name: another change adds the module; this file must not depend on its arrival.
            hf = importlib.import_module("maeltrace.transformers")
            callbacks.append(hf.TimerCallback(maeltrace.Timer(export=False)))
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=data, callbacks=callbacks
        )
        started = perf_counter_ns()
        trainer.train()
        return perf_counter_ns() - started

    return fit


TRAINERS: dict[str, tuple[Callable[[int, ExitStack], Fit], str, str]] = {
    # name: (builder, module the trainer needs, maeltrace module of its callback)
    "keras": (_keras, "keras", "maeltrace.integrations.keras"),
    "lightning": (_lightning, "lightning", "maeltrace.integrations.lightning"),
    "transformers": (_transformers, "transformers", "maeltrace.transformers"),
}


def _missing(name: str) -> str | None:
    """Why trainer ``name`` cannot be measured here, or None."""
    _, framework, callback = TRAINERS[name]
    for module in (framework, callback):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{module} is not installed" if module == framework else f"no {module} yet"
    return None


def _time(fit: Fit, callback: bool, steps: int) -> float:
    """Microseconds per step of one fit."""
    return fit(callback) / 1e3 / steps


def measure(name: str, steps: int, rounds: int) -> dict[str, Any]:
    """The figures of trainer ``name``: per-step times of both arms per round, their medians,
    difference and same-round ratio."""
    with ExitStack() as stack:
        fit = TRAINERS[name][0](steps, stack)
        for callback in (False, True):  # warm-up: compiling, first imports, caches
            _time(fit, callback, steps)
        without: list[float] = []
        with_: list[float] = []
        for round_no in range(rounds):
            for callback in common.rotated([False, True], round_no):
                (with_ if callback else without).append(_time(fit, callback, steps))
    base, cost = statistics.median(without), statistics.median(with_)
    return {
        "trainer": name,
        "steps": steps,
        "without_us": without,
        "with_us": with_,
        "median_without_us": base,
        "median_with_us": cost,
        "difference_us": cost - base,
        "ratio": statistics.median(common.same_round_ratios(with_, without)),
    }


def measure_apart(name: str, steps: int, rounds: int) -> dict[str, Any]:
    """`measure` in a process of its own; its output goes to this one's standard error."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    command = [sys.executable, str(Path(__file__).resolve()), "--one", name]
    command += ["--steps", str(steps), "--rounds", str(rounds)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: the benchmark process failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints its table.

    Args:
        argv: command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status: 0.
    """
    parser = common.parser(__doc__, "few steps and rounds")
    parser.add_argument("--steps", type=int, help=f"steps per fit (default {DEFAULT_STEPS})")
    parser.add_argument("--rounds", type=int, help=f"timed rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument(
        "--trainers", nargs="+", choices=sorted(TRAINERS), help="default: every one installed"
    )
    parser.add_argument("--one", choices=sorted(TRAINERS), help=argparse.SUPPRESS)
    common.add_json(parser)
    args = parser.parse_args(argv)
    steps = common.pick(args.steps, args.quick, QUICK_STEPS, DEFAULT_STEPS)
    rounds = common.pick(args.rounds, args.quick, QUICK_ROUNDS, DEFAULT_ROUNDS)
    if steps < 1 or rounds < 1:
        parser.error("--steps and --rounds must be positive")
    if args.one:  # the child process of `measure_apart`
        print(json.dumps(measure(args.one, steps, rounds)))
        return 0
    env = common.environment("keras", "tensorflow", "lightning", "torch", "transformers")
    print("maeltrace callbacks: cost per training step, against the same fit without (baseline)")
    print(common.header_line(env))
    print(f"{steps} steps per fit x {rounds} rounds (+1 warm-up) per arm, arms alternating")
    print()
    started = perf_counter_ns()
    results: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    for name in args.trainers or TRAINERS:
        why = _missing(name)
        if why is not None:
            rows.append([name, "-", "-", "-", "-", f"not measured: {why}"])
            continue
        result = measure_apart(name, steps, rounds)
        results.append(result)
        rows.append(
            [
                name,
                f"{result['median_without_us']:,.1f}",
                f"{result['median_with_us']:,.1f}",
                f"{result['difference_us']:+,.1f}",
                f"{result['ratio']:.3f}",
                "",
            ]
        )
    headers = [
        "trainer",
        "without [us/step]",
        "with [us/step]",
        "difference [us]",
        "ratio",
        "note",
    ]
    print(common.table(headers, rows))
    print(f"\n{common.seconds_since(started):.1f} s")
    common.write_json(args.json, {"environment": env, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
