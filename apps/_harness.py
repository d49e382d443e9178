"""What every example application shares: its flags, its Timer, its output folder.

An app is a script ``apps/apN_<name>.py`` that defines an `App` and a ``train`` function and
ends with ``raise SystemExit(APP.main(train))``. ``train(tmr, config, progress)`` is the app's
own training loop, instrumented the way a user instruments theirs (``tmr.region``,
``tmr.iterate``, or a trainer's ``TimerCallback``: Keras's, Lightning's, the Hugging Face
Trainer's); it calls ``progress()`` after every batch and
returns a few result values (the final loss, ...). This module is free of any framework;
what several apps of one framework share is in ``_tf.py`` (TensorFlow and Keras) and
``_fields.py`` (synthetic fields in numpy), and never their instrumentation.

`App.main` parses the flags every app has, builds the `maeltrace.Timer` (run id, output
folder, warm-up), runs ``train`` under it, prints the seed's table, and writes, next to the
Timer's files (``stats.json``, ``stats.md``, ``trace.json``, ``traces.otlp.jsonl``),
``stats.csv`` and ``app.json``: what ran, with which configuration, what it should have
recorded and how long it took. ``maeltrace bench`` runs each app this way in its own process
and reads those files back.

Progress goes to standard output as lines ``@maeltrace-progress <done> <total>`` that
``maeltrace bench`` turns into its progress bar; run by hand they are left out unless
``--progress`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from maeltrace import Timer
from maeltrace._arguments import non_negative_int, positive_int
from maeltrace._files import atomic_write_text
from maeltrace._metadata import new_run_id, run_id_from_environment
from maeltrace._output import run_output_dir
from maeltrace.tools.benchfiles import APP_SCHEMA, PROGRESS_PREFIX

__all__ = ["SIZES", "App", "AppConfig", "Progress", "Size"]


SIZES = ("tiny", "small", "medium")
"""``--size`` choices: ``tiny`` for the test suite, ``small`` (the default) finishes in well
under a minute on two CPU cores, ``medium`` is a few times heavier."""


@dataclass(frozen=True, slots=True)
class Size:
    """An app's defaults at one ``--size``.

    Attributes:
        epochs: passes over the data.
        batches: mini-batches per epoch.
        batch_size: samples per mini-batch.
        scale: the app's own size knob (image side, sequence length, width...), meaning
            whatever the app's docstring says.
    """

    epochs: int
    batches: int
    batch_size: int
    scale: int


@dataclass(frozen=True, slots=True)
class AppConfig:
    """What one run of an app does.

    Attributes:
        size: the ``--size`` name.
        epochs: passes over the data.
        batches: mini-batches per epoch.
        batch_size: samples per mini-batch.
        scale: the app's size knob at this size (see `Size`).
        device: ``cpu`` or ``cuda``.
        seed: random seed of the synthetic data and the model.
        workers: data-loading worker processes, for apps that use them.
    """

    size: str
    epochs: int
    batches: int
    batch_size: int
    scale: int
    device: str
    seed: int
    workers: int

    @property
    def gpu(self) -> bool:
        """Whether regions should be timed on the GPU's clock as well."""
        return self.device == "cuda"


class Progress:
    """Counts batches done and, when asked, prints them for ``maeltrace bench``.

    Args:
        total: batches in the whole run.
        emit: print progress lines.
    """

    def __init__(self, total: int, emit: bool) -> None:
        self.total = total
        self.done = 0
        self._emit = emit
        self._last = 0.0

    def __call__(self, batches: int = 1) -> None:
        self.done += batches
        now = time.monotonic()
        # At most ten lines a second, and always the last one.
        if self._emit and (self.done >= self.total or now - self._last >= 0.1):
            self._last = now
            print(f"{PROGRESS_PREFIX} {self.done} {self.total}", flush=True)


Train = Callable[[Timer, AppConfig, Progress], Mapping[str, float]]


@dataclass(frozen=True)
class App:
    """One example application.

    Attributes:
        name: its name in ``maeltrace bench`` and its output folder, ``ap1-unet-downscaling``.
        title: one line saying what it is, for the report.
        framework: ``keras``, ``torch``, ``tensorflow`` or ``jax``.
        seed_app: the application of the seed report it stands in for (``AP1``...).
        sizes: its defaults per `SIZES` name.
        regions: the keys it times, in the order the report lists them.
        gpu_devices: the ``--device`` choices besides ``cpu`` that time on the GPU's clock.
    """

    name: str
    title: str
    framework: str
    seed_app: str
    sizes: Mapping[str, Size]
    regions: Sequence[str]
    gpu_devices: Sequence[str] = field(default=("cuda",))

    def __post_init__(self) -> None:
        missing = set(SIZES) - set(self.sizes)
        if missing:
            raise ValueError(f"{self.name}: no defaults for sizes {sorted(missing)}")

    def parser(self) -> argparse.ArgumentParser:
        """The flags every app takes."""
        parser = argparse.ArgumentParser(prog=self.name, description=self.title)
        parser.add_argument("--size", choices=SIZES, default="small", help="default small")
        parser.add_argument("--epochs", type=positive_int, help="default: the size's")
        parser.add_argument("--batches", type=positive_int, help="batches per epoch")
        parser.add_argument("--batch-size", type=positive_int)
        parser.add_argument(
            "--device",
            choices=("cpu", *self.gpu_devices),
            default="cpu",
            help="cuda also times regions on the GPU's clock",
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--workers", type=non_negative_int, default=2, help="data-loading worker processes"
        )
        parser.add_argument("--warmup", type=non_negative_int, default=1, help="samples skipped")
        parser.add_argument("--output-dir", help="the run's folder; default <output root>/<run id>")
        parser.add_argument("--run-id", help="default $MAELTRACE_RUN_ID, the launcher's, or new")
        parser.add_argument("--progress", action="store_true", help="print progress lines")
        return parser

    def config(self, args: argparse.Namespace) -> AppConfig:
        """The run's configuration: the flags over the size's defaults."""
        size = self.sizes[args.size]
        return AppConfig(
            size=args.size,
            epochs=args.epochs or size.epochs,
            batches=args.batches or size.batches,
            batch_size=args.batch_size or size.batch_size,
            scale=size.scale,
            device=args.device,
            seed=args.seed,
            workers=args.workers,
        )

    def main(self, train: Train, argv: Sequence[str] | None = None) -> int:
        """Runs the app from the command line; returns the exit status."""
        args = self.parser().parse_args(argv)
        config = self.config(args)
        run_id = args.run_id or run_id_from_environment() or new_run_id()
        folder = Path(args.output_dir) if args.output_dir else run_output_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        progress = Progress(config.epochs * config.batches, emit=args.progress)
        started = time.time()
        tmr = Timer(warmup=args.warmup, run_id=run_id, output_dir=folder)
        with tmr:
            result = dict(train(tmr, config, progress))
        wall_s = time.time() - started
        summary = tmr.summary()
        print(summary.to_markdown(), end="")
        if not tmr.export:
            # Closing wrote them only where it exported (MAELTRACE_EXPORT=0 turns that off).
            tmr.write_outputs(summary)
        summary.save(folder / "stats.csv")
        info: dict[str, Any] = {
            "schema": APP_SCHEMA,
            "name": self.name,
            "title": self.title,
            "framework": self.framework,
            "framework_version": _framework_version(self.framework),
            "seed_app": self.seed_app,
            "regions": list(self.regions),
            "config": asdict(config),
            "expected": {"epoch": config.epochs, "batch": config.epochs * config.batches},
            "result": result,
            "run_id": run_id,
            "started_unix_s": started,
            "wall_s": wall_s,
            "python": platform.python_version(),
            "argv": sys.argv[1:] if argv is None else list(argv),
        }
        atomic_write_text(folder / "app.json", json.dumps(info, indent=2) + "\n")
        print(f"\n{self.name}: {wall_s:.1f} s; files in {folder}{os.sep}")
        return 0


def _framework_version(framework: str) -> str | None:
    module = sys.modules.get("keras" if framework == "keras" else framework)
    version = getattr(module, "__version__", None)
    return str(version) if version is not None else None
