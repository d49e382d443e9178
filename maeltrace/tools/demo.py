"""A CPU training-like loop, instrumented as a user would instrument theirs.

It fits a small linear model with mini-batch SGD on synthetic data, in pure Python so it runs
anywhere maeltrace does: IO makes each batch, forward computes predictions and loss, backward
the gradients and the update. It stands in for the main job until the example applications
land.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from maeltrace.keys import TimeType
from maeltrace.timer import Timer

__all__ = ["DemoConfig", "run_demo"]

Batch = tuple[list[list[float]], list[float]]


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Size of the demo run.

    Attributes:
        epochs: passes over the data.
        batches: mini-batches per epoch.
        batch_size: samples per mini-batch.
        features: inputs per sample.
        learning_rate: SGD step size.
        seed: random seed of the synthetic data.
    """

    epochs: int = 3
    batches: int = 40
    batch_size: int = 64
    features: int = 32
    learning_rate: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batches", "batch_size", "features"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, not {self.learning_rate!r}")


def _loader(config: DemoConfig, rng: random.Random, truth: list[float]) -> Iterator[Batch]:
    """Makes each batch on demand, as a data loader would read it."""
    for _ in range(config.batches):
        xs = [
            [rng.gauss(0.0, 1.0) for _ in range(config.features)] for _ in range(config.batch_size)
        ]
        ys = [sum(w * x for w, x in zip(truth, row, strict=True)) + rng.gauss(0, 0.1) for row in xs]
        yield xs, ys


def run_demo(tmr: Timer, config: DemoConfig | None = None) -> float:
    """Trains the demo model, timing epoch, IO, batch, forward and backward regions.

    Returns:
        The mean squared error of the last batch.
    """
    config = config or DemoConfig()
    rng = random.Random(config.seed)
    truth = [rng.uniform(-1.0, 1.0) for _ in range(config.features)]
    weights = [0.0] * config.features
    loss = float("nan")
    for _ in range(config.epochs):
        with tmr.region(TimeType.EPOCH):
            for xs, ys in tmr.iterate(_loader(config, rng, truth), TimeType.IO):
                with tmr.region(TimeType.BATCH):
                    with tmr.region(TimeType.FORWARD):
                        preds = [
                            sum(w * x for w, x in zip(weights, row, strict=True)) for row in xs
                        ]
                        errors = [p - y for p, y in zip(preds, ys, strict=True)]
                        loss = sum(e * e for e in errors) / len(errors)
                    with tmr.region(TimeType.BACKWARD):
                        scale = 2.0 * config.learning_rate / len(errors)
                        for j in range(config.features):
                            grad = sum(e * row[j] for e, row in zip(errors, xs, strict=True))
                            weights[j] -= scale * grad
    return loss
