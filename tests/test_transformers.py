"""The Hugging Face Trainer on this CPU machine: real ``train``, ``evaluate`` and ``predict`` of a
tiny random GPT-2 with the TimerCallback, plain and with gradient accumulation; counts per key,
the nesting of the exported spans, and the epoch statistics read back from MLflow."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

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
    VALIDATION,
    VALIDATION_BATCH,
)
from maeltrace.transformers import TimerCallback  # noqa: E402
from tests.fakes.cuda import fake_gpu_clock  # noqa: E402
from tests.helpers import (  # noqa: E402
    counts,
    exported_spans,
    orphan_names,
    parent_keys,
    work_counts,
)

EPOCHS, BATCHES, VAL_BATCHES, BATCH_SIZE, TOKENS = 2, 4, 2, 2, 16


class Tokens(torch.utils.data.Dataset):  # type: ignore[misc]  # untyped base
    """Random token ids, their own labels."""

    def __init__(self, samples: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 64, (samples, TOKENS), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def _model() -> Any:
    config = transformers.GPT2Config(
        vocab_size=64, n_positions=TOKENS, n_embd=16, n_layer=1, n_head=2
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def _trainer(folder: Path, callback: Any, *, accumulate: int = 1, **options: Any) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(folder / "hf"),
        use_cpu=True,
        report_to=options.pop("report_to", []),
        save_strategy="no",
        disable_tqdm=True,
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=BATCH_SIZE,
        gradient_accumulation_steps=accumulate,
        eval_strategy="epoch",
        logging_strategy="epoch",
        dataloader_num_workers=0,
        **options,
    )
    return transformers.Trainer(
        model=_model(),
        args=args,
        train_dataset=Tokens(BATCHES * BATCH_SIZE, 0),
        eval_dataset=Tokens(VAL_BATCHES * BATCH_SIZE, 1),
        callbacks=[callback],
    )


@dataclass
class Run:
    """What one Trainer run recorded."""

    timer: Timer
    callback: Any
    accumulate: int
    warnings: list[warnings.WarningMessage]


def _run(folder: Path, *, accumulate: int, own_timer: bool) -> Run:
    """Trains for `EPOCHS` epochs of `BATCHES` batches, evaluating after each, then evaluates
    and predicts once more; closes the timer so the spans are on disk."""
    env = {MAELTRACE_OUTPUT_DIR: str(folder / "maeltrace-out"), MAELTRACE_EXPORT: "1"}
    with mock.patch.dict(os.environ, env), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback = TimerCallback(None if own_timer else Timer(export=True))
        trainer = _trainer(folder, callback, accumulate=accumulate)
        trainer.train()
        trainer.evaluate()
        trainer.predict(Tokens(VAL_BATCHES * BATCH_SIZE, 2))
        callback.timer.close()
    return Run(callback.timer, callback, accumulate, list(caught))


RUNS = (1, 2)
"""Plain (with a timer given) and accumulating gradients over two batches (with the callback's
own timer)."""


@pytest.fixture(scope="module", params=RUNS, ids=[f"accumulate{a}" for a in RUNS])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    accumulate = request.param
    return _run(
        tmp_path_factory.mktemp(f"hf-{accumulate}"), accumulate=accumulate, own_timer=accumulate > 1
    )


def _expected_counts(accumulate: int) -> dict[str, int]:
    n, steps = EPOCHS * BATCHES, EPOCHS * BATCHES // accumulate
    return {
        EPOCH: EPOCHS,
        # The Trainer fetches a step's micro-batches together: one wait per optimizer step.
        IO: steps,
        BATCH: n,
        FORWARD: n,
        BACKWARD: n,
        OPTIMIZER: steps,
        VALIDATION: EPOCHS + 1,
        VALIDATION_BATCH: (EPOCHS + 1) * VAL_BATCHES,
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
    # The evaluation at an epoch's end is that epoch's; `evaluate` after training is a root.
    VALIDATION: {EPOCH, None},
    VALIDATION_BATCH: {VALIDATION},
    PREDICT: {None},
    PREDICT_BATCH: {PREDICT},
}


class TestTrain:
    def test_each_key_is_recorded_once_per_batch_epoch_pass_and_optimizer_step(
        self, run: Run
    ) -> None:
        assert counts(run.timer.records()) == _expected_counts(run.accumulate)

    def test_regions_nest_as_the_trainer_runs_them(self, run: Run) -> None:
        assert parent_keys(run.timer.records()) == EXPECTED_PARENTS

    def test_every_exported_span_has_its_parent_exported(self, run: Run) -> None:
        spans = exported_spans(run.timer.traces_path)
        assert set(EXPECTED_PARENTS) <= {s.name for s in spans}
        assert orphan_names(spans) == []

    def test_maeltrace_warns_nothing(self, run: Run) -> None:
        assert [w for w in run.warnings if issubclass(w.category, MaeltraceWarning)] == []

    def test_nothing_is_left_open(self, run: Run) -> None:
        assert not any(run.timer.is_open(key) for key in EXPECTED_PARENTS)

    def test_every_batch_region_counts_the_samples_of_its_batch(self, run: Run) -> None:
        expected = _expected_counts(run.accumulate)
        batch_keys = (BATCH, VALIDATION_BATCH, PREDICT_BATCH)
        # The Trainer counts no tokens unless told to (include_num_input_tokens_seen).
        assert work_counts(run.timer.records()) == {
            key: [(BATCH_SIZE, 0)] * expected[key] for key in batch_keys
        }


def test_a_last_smaller_batch_counts_its_samples_and_the_trainers_tokens(tmp_path: Path) -> None:
    timer = Timer()
    trainer = _trainer(
        tmp_path, TimerCallback(timer), accumulate=2, include_num_input_tokens_seen="all"
    )
    # 7 samples in micro-batches of 2: 2, 2, 2 and 1, in optimizer steps of two micro-batches.
    trainer.train_dataset = Tokens(7, 0)
    trainer.eval_dataset = Tokens(3, 1)
    trainer.train()
    per_epoch = [(size, size * TOKENS) for size in (2, 2, 2, 1)]
    assert work_counts(timer.records()) == {
        BATCH: per_epoch * EPOCHS,
        VALIDATION_BATCH: [(2, 0), (1, 0)] * EPOCHS,
    }
    assert trainer.state.num_input_tokens_seen == EPOCHS * 7 * TOKENS


def test_a_step_that_raises_leaves_no_region_open_and_no_orphan_span(tmp_path: Path) -> None:
    timer = Timer(export=True, output_dir=tmp_path / "out")
    trainer = _trainer(tmp_path, TimerCallback(timer))
    calls = 0

    def fail_on_the_second_epochs_third_batch(module: Any, inputs: Any) -> None:
        nonlocal calls
        calls += module.training
        if calls == BATCHES + 3:
            raise ZeroDivisionError("the step under test fails")

    # Inside the model's forward, as a failing layer would.
    trainer.model.transformer.register_forward_pre_hook(fail_on_the_second_epochs_third_batch)
    with pytest.raises(ZeroDivisionError, match="under test"):
        trainer.train()
    assert not any(timer.is_open(key) for key in EXPECTED_PARENTS)
    recorded = counts(timer.records())
    assert recorded[EPOCH] == EPOCHS
    # The failing batch and its forward are kept, inside the second epoch.
    assert recorded[BATCH] == recorded[FORWARD] == BATCHES + 3
    timer.close()
    assert orphan_names(exported_spans(timer.traces_path)) == []


def test_with_gpu_every_batch_region_has_a_device_time(tmp_path: Path) -> None:
    # A named fake GPU (no GPU here): which regions the callback opens on the device clock.
    timer = Timer(device=fake_gpu_clock)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, TimerCallback(timer, gpu=True), accumulate=2).train()
    expected = {**_expected_counts(2), VALIDATION_BATCH: EPOCHS * VAL_BATCHES}
    for key in (BATCH, FORWARD, BACKWARD, OPTIMIZER, VALIDATION_BATCH):
        assert timer.get_time_stats(key, gpu=True).count == expected[key], key
    for key in (EPOCH, IO):  # the loop's own regions stay on the CPU clock
        with pytest.raises(KeyError, match="device time"):
            timer.get_time(key, gpu=True)
    assert timer.device_clock is not None and timer.device_clock.name == "fake-gpu"
    assert not [w for w in caught if issubclass(w.category, DeviceClockWarning)]


def test_with_gpu_and_no_gpu_there_are_no_gpu_rows(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks a machine without a GPU; the GPU machine runs the test above for real")
    timer = Timer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, TimerCallback(timer, gpu=True)).train()
    assert timer.get_time_stats(BATCH).count == EPOCHS * BATCHES
    with pytest.raises(KeyError, match="no GPU: torch sees no CUDA device"):
        timer.get_time(BATCH, gpu=True)
    assert len([w for w in caught if issubclass(w.category, DeviceClockWarning)]) == 1


def test_the_epoch_statistics_sit_next_to_the_trainers_metrics_in_mlflow(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "hf"}
    with mock.patch.dict(os.environ, env), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own advice is not under test
        trainer = _trainer(tmp_path, TimerCallback(Timer()), report_to=["mlflow"])
        assert any(
            type(cb).__name__ == "MLflowCallback" for cb in trainer.callback_handler.callbacks
        )
        trainer.train()
        mlflow.set_tracking_uri(uri)
        (run,) = mlflow.search_runs(experiment_names=["hf"], output_format="list")
        client = mlflow.MlflowClient(uri)
        metrics = run.data.metrics
        # The Trainer's own epoch is untouched: maeltrace's names are under its namespace.
        assert metrics["epoch"] == EPOCHS
        assert metrics["maeltrace/batch/epoch/count"] == BATCHES
        assert metrics["maeltrace/batch/epoch/mean"] > 0
        history = client.get_metric_history(run.info.run_id, "maeltrace/forward/epoch/count")
        steps_per_epoch = BATCHES
        assert [(m.step, m.value) for m in history] == [
            (steps_per_epoch * (e + 1), BATCHES) for e in range(EPOCHS)
        ]


@pytest.mark.slow
def test_the_epoch_statistics_join_the_trainers_steps_in_wandb(tmp_path: Path) -> None:
    wandb = pytest.importorskip("wandb", reason="wandb is not installed")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    with mock.patch.dict(os.environ, env), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, TimerCallback(Timer()), report_to=["wandb"]).train()
        run = wandb.run
        assert run is not None
        try:
            summary = dict(run.summary)
        finally:
            run.finish()
    assert [w for w in caught if issubclass(w.category, MaeltraceWarning)] == []
    # The last epoch's figures, committed with the Trainer's next step, next to its own.
    assert summary["train/epoch"] == EPOCHS
    assert summary["maeltrace/batch/epoch/count"] == BATCHES
    assert summary["maeltrace/forward/epoch/mean"] > 0


class TestCallback:
    def test_the_callback_needs_a_maeltrace_timer(self) -> None:
        with pytest.raises(TypeError, match="maeltrace Timer"):
            TimerCallback(object())  # type: ignore[arg-type]  # the misuse under test

    def test_a_forward_outside_the_trainers_loops_records_nothing(self, tmp_path: Path) -> None:
        timer = Timer()
        trainer = _trainer(tmp_path, TimerCallback(timer))
        trainer.model.eval()
        with torch.no_grad():
            trainer.model(input_ids=Tokens(1, 3).ids)  # the user's own inference
        trainer.model.train()
        trainer.model(input_ids=Tokens(1, 3).ids)
        assert timer.keys() == []

    def test_the_callback_is_a_trainer_callback(self) -> None:
        assert issubclass(TimerCallback, transformers.TrainerCallback)
