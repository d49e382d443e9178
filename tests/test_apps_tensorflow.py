"""The Keras and TensorFlow example apps (AP1, AP3, AP4's TensorFlow variant, AP5) run as
``maeltrace bench`` runs them, at ``--size tiny``, and what they recorded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from maeltrace.report import Summary
from tests.helpers import (
    AppRun,
    app_process,
    app_run_fixture,
    assert_ran_on_the_cpu_and_wrote_its_files,
    assert_times_a_step_per_batch,
    step_counts,
    step_parents,
)

EPOCHS = 2
BATCHES = 3
STEPS = EPOCHS * BATCHES
N_CRITIC = 4  # AP5's critic updates per batch

# One run of each app, shared by its tests.
ap1 = app_run_fixture("ap1", "ap1_unet_downscaling.py", epochs=EPOCHS, batches=BATCHES)
ap3 = app_run_fixture("ap3", "ap3_radiation_lstm.py", epochs=EPOCHS, batches=BATCHES)
ap4 = app_run_fixture("ap4", "ap4_postprocessing_tf.py", epochs=EPOCHS, batches=BATCHES)
ap5 = app_run_fixture("ap5", "ap5_wgan_downscaling.py", epochs=EPOCHS, batches=BATCHES)


def _assert_ran_on_the_cpu_and_wrote_its_files(
    run: AppRun, name: str, framework: str, seed_app: str
) -> None:
    assert_ran_on_the_cpu_and_wrote_its_files(
        run, name=name, framework=framework, seed_app=seed_app, epochs=EPOCHS, batches=BATCHES
    )


def _assert_the_timer_callback_regions(run: AppRun) -> None:
    """Checks the regions `maeltrace.keras.TimerCallback` records around ``model.fit``."""
    assert run.counts() == {"fit": 1, "epoch": EPOCHS, "io": STEPS, "batch": STEPS}
    parents = {"fit": {None}, "epoch": {"fit"}, "io": {"epoch"}, "batch": {"epoch"}}
    assert run.parent_keys() == parents
    # The IO gap precedes each batch: io and batch alternate in every epoch.
    assert run.children_in_order("epoch") == [["io", "batch"] * BATCHES] * EPOCHS
    assert run.info["regions"] == ["fit", "epoch", "io", "batch"]


AP4_STEP = ("forward", "backward", "optimizer")
AP5_STEP = ("critic", "generator")


@pytest.mark.slow
class TestAp1UnetDownscaling:
    def test_the_timer_callback_records_fit_epochs_and_an_io_gap_per_batch(
        self, ap1: AppRun
    ) -> None:
        _assert_the_timer_callback_regions(ap1)

    def test_ran_on_the_cpu_wrote_its_files_and_learned_something(self, ap1: AppRun) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(ap1, "ap1-unet-downscaling", "keras", "AP1")
        assert set(ap1.info["result"]) == {"loss", "mae_k"}
        assert 0 < ap1.info["result"]["loss"] < 10


@pytest.mark.slow
class TestAp3RadiationLstm:
    def test_the_timer_callback_records_fit_epochs_and_an_io_gap_per_batch(
        self, ap3: AppRun
    ) -> None:
        _assert_the_timer_callback_regions(ap3)

    def test_ran_on_the_cpu_wrote_its_files_and_learned_something(self, ap3: AppRun) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(ap3, "ap3-radiation-lstm", "keras", "AP3")
        # Standardised targets: a model no better than their mean scores about 1.
        assert 0 < ap3.info["result"]["loss"] < 2


@pytest.mark.slow
class TestAp4PostprocessingTf:
    def test_records_io_and_a_forward_backward_optimizer_step_per_batch(self, ap4: AppRun) -> None:
        assert_times_a_step_per_batch(ap4, *AP4_STEP, epochs=EPOCHS, batches=BATCHES)

    def test_ran_on_the_cpu_wrote_its_files_and_scores_crps(self, ap4: AppRun) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(
            ap4, "ap4-postprocessing-tf", "tensorflow", "AP4"
        )
        result = ap4.info["result"]
        assert set(result) == {"loss", "crps_k", "raw_ensemble_crps_k"}
        assert result["crps_k"] == pytest.approx(8 * result["loss"])
        assert result["loss"] > 0
        assert result["raw_ensemble_crps_k"] > 0


@pytest.mark.slow
class TestAp5WganDownscaling:
    def test_records_n_critic_updates_then_a_generator_update_per_batch(self, ap5: AppRun) -> None:
        assert ap5.counts() == step_counts(EPOCHS, BATCHES, *AP5_STEP) | {
            "critic_step": STEPS * N_CRITIC
        }
        assert ap5.parent_keys() == step_parents(*AP5_STEP) | {"critic_step": {"critic"}}
        assert ap5.children_in_order("batch") == [list(AP5_STEP)] * STEPS
        assert ap5.children_in_order("critic") == [["critic_step"] * N_CRITIC] * STEPS
        assert ap5.info["regions"] == ["epoch", "io", "batch", "critic", "critic_step", "generator"]

    def test_ran_on_the_cpu_wrote_its_files_and_reports_both_losses(self, ap5: AppRun) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(ap5, "ap5-wgan-downscaling", "tensorflow", "AP5")
        assert set(ap5.info["result"]) == {"loss", "critic_loss", "mae_k"}
        assert ap5.info["result"]["mae_k"] > 0


@pytest.mark.slow
def test_ap4_on_cuda_times_on_the_gpu_or_fails_clearly_without_one(tmp_path: Path) -> None:
    args = ["--size", "tiny", "--epochs", "1", "--batches", "2", "--device", "cuda"]
    folder = tmp_path / "run"
    done = app_process(
        "ap4_postprocessing_tf.py",
        "--output-dir",
        str(folder),
        *args,
        env={**os.environ, "MAELTRACE_OUTPUT_DIR": str(tmp_path)},
    )
    message = "--device cuda needs a GPU that TensorFlow can see; it sees none"
    if message in done.stderr:
        assert done.returncode != 0
        assert "RuntimeError" in done.stderr
        assert not (folder / "app.json").exists()
        return
    assert done.returncode == 0, done.stderr[-3000:]
    summary = Summary.load(folder / "stats.json")
    gpu_counts = {str(row.key): row.stats.count for row in summary.rows if row.device}
    assert gpu_counts == {"batch": 2, "forward": 2, "backward": 2, "optimizer": 2}
