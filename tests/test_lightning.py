"""Lightning on this CPU machine: real ``Trainer.fit``, ``test`` and ``predict`` with the
TimerCallback, under both import names (``lightning.pytorch`` and ``pytorch_lightning``), plain
and with gradient accumulation; counts per key and the nesting of the exported spans."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("lightning", reason="lightning is not installed")
pytest.importorskip("pytorch_lightning", reason="pytorch_lightning is not installed")

from maeltrace import Timer  # noqa: E402
from maeltrace.environment import MAELTRACE_EXPORT, MAELTRACE_OUTPUT_DIR  # noqa: E402
from maeltrace.errors import DeviceClockWarning, MaeltraceWarning  # noqa: E402
from maeltrace.integrations.vocabulary import (  # noqa: E402
    BACKWARD,
    BATCH,
    EPOCH,
    FORWARD,
    IO,
    OPTIMIZER,
    PREDICT,
    PREDICT_BATCH,
    TEST,
    TEST_BATCH,
    VALIDATION,
    VALIDATION_BATCH,
)
from tests.helpers import (  # noqa: E402
    counts,
    exported_spans,
    orphan_names,
    parent_keys,
    work_counts,
)
from tests.lightning_ddp_child import BATCHES_PER_RANK  # noqa: E402
from tests.lightning_ddp_child import EPOCHS as DDP_EPOCHS  # noqa: E402

EPOCHS, BATCHES, VAL_BATCHES, BATCH_SIZE = 2, 4, 2, 8
CALLBACKS = {
    "lightning.pytorch": "maeltrace.lightning",
    "pytorch_lightning": "maeltrace.pytorch_lightning",
}
"""Each Lightning import name and the maeltrace module of its callback."""


def _loader(batches: int, seed: int) -> Any:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * BATCH_SIZE, 4, generator=generator)
    dataset = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE)


def _module(pl: Any) -> Any:
    """A tiny regression LightningModule of the import name ``pl``."""

    class Regression(pl.LightningModule):  # type: ignore[misc]  # untyped base
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def _loss(self, batch: Any) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self._loss(batch)

        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            return self._loss(batch)

        def test_step(self, batch: Any, batch_idx: int) -> Any:
            return self._loss(batch)

        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
            return self.layer(batch[0])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Regression()


def _trainer(pl: Any, folder: Path, callback: Any, **options: Any) -> Any:
    """A quiet Lightning Trainer of the import name ``pl`` on one CPU: `EPOCHS` epochs, no
    logger, checkpoints, progress bar or model summary unless ``options`` say otherwise."""
    settings: dict[str, Any] = {
        "max_epochs": EPOCHS,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": folder,
        "callbacks": [callback],
    }
    return pl.Trainer(**(settings | options))


@dataclass
class Run:
    """What one Lightning run recorded."""

    timer: Timer
    callback: Any
    accumulate: int
    warnings: list[warnings.WarningMessage]

    def spans(self) -> list[Any]:
        """Every span of the embedded OTLP file."""
        return exported_spans(self.timer.traces_path)


def _run(name: str, folder: Path, *, accumulate: int, own_timer: bool, gpu: bool = False) -> Run:
    """Fits for `EPOCHS` epochs of `BATCHES` batches, validating each, then tests and predicts
    once; closes the timer so the spans are on disk."""
    pl = importlib.import_module(name)
    callback_class = importlib.import_module(CALLBACKS[name]).TimerCallback
    env = {MAELTRACE_OUTPUT_DIR: str(folder / "maeltrace-out"), MAELTRACE_EXPORT: "1"}
    with mock.patch.dict(os.environ, env), warnings.catch_warnings(record=True) as caught:
        # Lightning's advice (workers, logging...) is not under test; maeltrace's warnings are.
        warnings.simplefilter("always")
        timer = None if own_timer else Timer(export=True)
        callback = callback_class(timer, gpu=gpu)
        trainer = _trainer(pl, folder, callback, accumulate_grad_batches=accumulate)
        model = _module(pl)
        trainer.fit(model, _loader(BATCHES, 0), _loader(VAL_BATCHES, 1))
        trainer.test(model, _loader(VAL_BATCHES, 2), verbose=False)
        trainer.predict(model, _loader(VAL_BATCHES, 3))
        callback.timer.close()
    return Run(callback.timer, callback, accumulate, list(caught))


RUNS = [(name, accumulate) for name in CALLBACKS for accumulate in (1, 2)]
"""Each import name, plain (with a timer given) and accumulating gradients over two batches
(with the callback's own timer)."""


@pytest.fixture(scope="module", params=RUNS, ids=[f"{n}-accumulate{a}" for n, a in RUNS])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    name, accumulate = request.param
    folder = tmp_path_factory.mktemp(f"{name}-{accumulate}")
    return _run(name, folder, accumulate=accumulate, own_timer=accumulate > 1)


def _expected_counts(optimizer_steps: int) -> dict[str, int]:
    n = EPOCHS * BATCHES
    return {
        EPOCH: EPOCHS,
        IO: n,
        BATCH: n,
        FORWARD: n,
        BACKWARD: n,
        OPTIMIZER: optimizer_steps,
        # The sanity check's validation before the first epoch is not timed.
        VALIDATION: EPOCHS,
        VALIDATION_BATCH: EPOCHS * VAL_BATCHES,
        TEST: 1,
        TEST_BATCH: VAL_BATCHES,
        PREDICT: 1,
        PREDICT_BATCH: VAL_BATCHES,
    }


EXPECTED_PARENTS: dict[str, set[str | None]] = {
    EPOCH: {None},
    IO: {EPOCH},
    BATCH: {EPOCH},
    FORWARD: {BATCH},
    BACKWARD: {BATCH},
    OPTIMIZER: {BATCH},
    VALIDATION: {EPOCH},
    VALIDATION_BATCH: {VALIDATION},
    TEST: {None},
    TEST_BATCH: {TEST},
    PREDICT: {None},
    PREDICT_BATCH: {PREDICT},
}


class TestFit:
    def test_each_key_is_recorded_once_per_batch_epoch_pass_and_optimizer_step(
        self, run: Run
    ) -> None:
        # With accumulate_grad_batches=2, one optimizer step per two batches.
        assert counts(run.timer.records()) == _expected_counts(EPOCHS * BATCHES // run.accumulate)

    def test_regions_nest_as_the_trainer_runs_them(self, run: Run) -> None:
        assert parent_keys(run.timer.records()) == EXPECTED_PARENTS

    def test_every_exported_span_has_its_parent_exported(self, run: Run) -> None:
        spans = run.spans()
        assert {EPOCH, IO, OPTIMIZER, VALIDATION, VALIDATION_BATCH} <= {s.name for s in spans}
        assert orphan_names(spans) == []

    def test_maeltrace_warns_nothing(self, run: Run) -> None:
        assert [w for w in run.warnings if issubclass(w.category, MaeltraceWarning)] == []

    def test_without_a_timer_the_callback_records_into_one_of_its_own(self, run: Run) -> None:
        assert isinstance(run.callback.timer, Timer)
        assert run.timer.traces_path.is_file()

    def test_every_batch_region_counts_the_samples_of_its_batch(self, run: Run) -> None:
        expected = _expected_counts(EPOCHS * BATCHES // run.accumulate)
        batch_keys = (BATCH, VALIDATION_BATCH, TEST_BATCH, PREDICT_BATCH)
        assert work_counts(run.timer.records()) == {
            key: [(BATCH_SIZE, 0)] * expected[key] for key in batch_keys
        }


TOKEN_SAMPLES, SEQUENCE, TOKEN_BATCH = 10, 6, 4


class _Tokens(torch.utils.data.Dataset[dict[str, Any]]):
    """`TOKEN_SAMPLES` padded sequences of `SEQUENCE` token ids, as a tokenizer's dicts."""

    def __len__(self) -> int:
        return TOKEN_SAMPLES

    def __getitem__(self, index: int) -> dict[str, Any]:
        ids = torch.arange(SEQUENCE) % 7
        return {"input_ids": ids, "attention_mask": ids > 2, "labels": torch.tensor(1.0)}


def test_dict_batches_count_samples_a_last_smaller_batch_and_padded_tokens(
    tmp_path: Path,
) -> None:
    pl = importlib.import_module("lightning.pytorch")
    from maeltrace.lightning import TimerCallback

    class Tokens(pl.LightningModule):  # type: ignore[misc]  # untyped base
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.EmbeddingBag(7, 1)

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
            out = self.embed(batch["input_ids"]).squeeze(1)
            return torch.nn.functional.mse_loss(out, batch["labels"])

        def predict_step(self, batch: Any, batch_idx: int) -> Any:
            return len(batch)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    timer = Timer()
    trainer = _trainer(pl, tmp_path, TimerCallback(timer, tokens="input_ids"), max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice is not under test
        trainer.fit(Tokens(), torch.utils.data.DataLoader(_Tokens(), batch_size=TOKEN_BATCH))
        # Batches of plain Python lists: no tensor, so no count, never a guess.
        words = torch.utils.data.DataLoader(["a", "b", "c"], batch_size=2, collate_fn=list)
        trainer.predict(Tokens(), words)
    # 10 samples in batches of 4: 4, 4 and 2; each of 6 (padded) tokens.
    assert work_counts(timer.records()) == {
        BATCH: [(4, 4 * SEQUENCE), (4, 4 * SEQUENCE), (2, 2 * SEQUENCE)]
    }
    assert counts(timer.records())[PREDICT_BATCH] == 2


def test_with_gpu_every_batch_region_has_a_device_time(tmp_path: Path) -> None:
    run = _run("lightning.pytorch", tmp_path, accumulate=2, own_timer=False, gpu=True)
    expected = _expected_counts(EPOCHS * BATCHES // 2)
    device_keys = (BATCH, FORWARD, BACKWARD, OPTIMIZER, VALIDATION_BATCH, TEST_BATCH, PREDICT_BATCH)
    for key in device_keys:
        if torch.cuda.is_available():
            assert run.timer.get_time_stats(key, gpu=True).count == expected[key], key
        else:  # no GPU: CPU times only, no GPU rows
            assert run.timer.get_time_stats(key).count == expected[key], key
            with pytest.raises(KeyError, match="no GPU: torch sees no CUDA device"):
                run.timer.get_time(key, gpu=True)
    assert run.timer.device_clock is not None
    # Chosen once, in setup: at most one warning (on a machine without CUDA, the one saying so).
    clock_warnings = [w for w in run.warnings if issubclass(w.category, DeviceClockWarning)]
    assert len(clock_warnings) <= 1


def test_a_step_that_raises_leaves_no_region_open_and_no_orphan_span(tmp_path: Path) -> None:
    pl = importlib.import_module("lightning.pytorch")
    from maeltrace.lightning import TimerCallback

    class Failing(_module(pl).__class__):  # type: ignore[misc]  # untyped base
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.current_epoch == 1 and batch_idx == 2:
                raise ZeroDivisionError("the step under test fails")
            return super().training_step(batch, batch_idx)

    timer = Timer(export=True, output_dir=tmp_path / "out")
    trainer = _trainer(pl, tmp_path, TimerCallback(timer), num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice is not under test
        with pytest.raises(ZeroDivisionError, match="under test"):
            trainer.fit(Failing(), _loader(BATCHES, 0))
    assert not any(timer.is_open(key) for key in (EPOCH, IO, BATCH, FORWARD))
    # The failing batch's forward and batch are kept, inside the second epoch.
    assert counts(timer.records())[FORWARD] == BATCHES + 3
    assert counts(timer.records())[EPOCH] == EPOCHS
    timer.close()
    assert orphan_names(exported_spans(timer.traces_path)) == []


@pytest.mark.parametrize("name", list(CALLBACKS))
class TestCallback:
    def test_the_callback_needs_a_maeltrace_timer(self, name: str) -> None:
        callback_class = importlib.import_module(CALLBACKS[name]).TimerCallback
        with pytest.raises(TypeError, match="maeltrace Timer"):
            callback_class(object())
        with pytest.raises(TypeError, match="tokens must name a batch entry"):
            callback_class(Timer(), tokens=1)

    def test_the_callback_is_a_callback_of_its_import_name(self, name: str) -> None:
        callback_class = importlib.import_module(CALLBACKS[name]).TimerCallback
        assert issubclass(callback_class, importlib.import_module(name).Callback)


@pytest.mark.slow
def test_under_ddp_each_rank_records_into_the_run_all_ranks_share(tmp_path: Path) -> None:
    env = {
        **os.environ,
        MAELTRACE_OUTPUT_DIR: str(tmp_path / "maeltrace-out"),
        MAELTRACE_EXPORT: "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path]),
    }
    for name in ("MAELTRACE_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        env.pop(name, None)  # the run id must come from rank 0, not the launcher
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("lightning_ddp_child.py")), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    written = sorted(tmp_path.glob("rank*.json"))
    assert [p.name for p in written] == ["rank0.json", "rank1.json"], done.stderr[-4000:]
    lines = [json.loads(p.read_text(encoding="utf-8")) for p in written]
    assert [line["rank"] for line in lines] == [0, 1]
    assert len({line["run_id"] for line in lines}) == 1
    epoch_traces = []
    for line in lines:
        assert line["traces"].endswith(f"traces.rank{line['rank']}.otlp.jsonl")
        spans = exported_spans(Path(line["traces"]))
        names = [span.name for span in spans]
        assert names.count(BATCH) == names.count(OPTIMIZER) == DDP_EPOCHS * BATCHES_PER_RANK
        assert orphan_names(spans) == []
        epoch_traces.append({span.trace_id for span in spans if span.name == EPOCH})
    # One trace per epoch, shared by both ranks.
    assert epoch_traces[0] == epoch_traces[1] and len(epoch_traces[0]) == DDP_EPOCHS


# -- each epoch's statistics to the trainer's loggers --------------------------------------------


def _fit_with(loggers: list[Any], folder: Path) -> tuple[Timer, list[warnings.WarningMessage]]:
    """Fits `EPOCHS` epochs of `BATCHES` batches with ``loggers``, the module logging its own
    ``epoch_loss`` once per epoch."""
    pl = importlib.import_module("lightning.pytorch")
    from maeltrace.lightning import TimerCallback

    class Logging(_module(pl).__class__):  # type: ignore[misc]  # untyped base
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            self.log("epoch_loss", loss, on_step=False, on_epoch=True)
            return loss

    timer = Timer(export=None, output_dir=folder / "out")
    trainer = _trainer(
        pl,
        folder,
        TimerCallback(timer),
        logger=loggers,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Logging(), _loader(BATCHES, 0))
    timer.close()
    return timer, list(caught)


def test_mlflow_logger_gets_each_epochs_statistics_beside_lightnings_own(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLFlowLogger(experiment_name="lightning", tracking_uri=uri)
    _, caught = _fit_with([logger], tmp_path)
    assert [w for w in caught if issubclass(w.category, MaeltraceWarning)] == []
    client = MlflowClient(tracking_uri=uri)
    metrics = client.get_run(logger.run_id).data.metrics
    # Lightning's own epoch and the module's loss, next to maeltrace's names: no collision.
    assert metrics["epoch"] == EPOCHS - 1
    assert "epoch_loss" in metrics
    history = client.get_metric_history(logger.run_id, "maeltrace/batch/epoch/count")
    assert [m.value for m in history] == [float(BATCHES)] * EPOCHS
    assert [m.step for m in history] == [BATCHES * (e + 1) for e in range(EPOCHS)]
    means = client.get_metric_history(logger.run_id, "maeltrace/forward/epoch/mean")
    assert len(means) == EPOCHS and all(m.value > 0 for m in means)
    assert "maeltrace/io/epoch/count" in metrics


def test_csv_logger_gets_the_maeltrace_columns(tmp_path: Path) -> None:
    import csv

    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path / "csv", name="run")
    _fit_with([logger], tmp_path)
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert {"epoch", "epoch_loss", "maeltrace/batch/epoch/mean"} <= set(rows[0])
    counts_logged = [r["maeltrace/batch/epoch/count"] for r in rows]
    assert [float(c) for c in counts_logged if c] == [float(BATCHES)] * EPOCHS


def test_a_failing_logger_gives_one_warning_and_training_goes_on(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    from maeltrace import SinkWarning

    class Broken(CSVLogger):  # type: ignore[misc]  # untyped base
        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            if any(name.startswith("maeltrace/") for name in metrics):
                raise OSError("the disk under test is full")
            super().log_metrics(metrics, step)

    timer, caught = _fit_with([Broken(tmp_path / "csv")], tmp_path)
    sink_warnings = [w for w in caught if issubclass(w.category, SinkWarning)]
    assert len(sink_warnings) == 1
    assert "disk under test" in str(sink_warnings[0].message)
    assert counts(timer.records())[EPOCH] == EPOCHS
