"""The JAX example app (AP7, diffusion-model data assimilation) run as ``maeltrace bench`` runs
it, at ``--size tiny``, and what it recorded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    AppRun,
    app_process,
    assert_ran_on_the_cpu_and_wrote_its_files,
    run_app,
    shared_app_run,
    step_counts,
    step_parents,
)

EPOCHS = 2
BATCHES = 3
TINY_SCALE = 16  # the tiny size's grid side; the sampler takes side // 2 steps
TRAIN_STEP = ("forward", "backward", "optimizer")


@pytest.fixture(scope="module")
def ap7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppRun]:
    """One tiny run of AP7, shared by the tests that read what it recorded."""
    yield from shared_app_run(
        tmp_path_factory, "ap7_diffusion_assimilation.py", epochs=EPOCHS, batches=BATCHES
    )


@pytest.mark.slow
class TestAp7DiffusionAssimilation:
    def test_records_each_batch_step_and_one_denoise_region_per_sampler_step(
        self, ap7: AppRun
    ) -> None:
        steps = TINY_SCALE // 2
        assert ap7.info["result"]["denoise_steps"] == steps
        assert ap7.counts() == step_counts(EPOCHS, BATCHES, *TRAIN_STEP) | {
            "assimilate": EPOCHS,
            "denoise": EPOCHS * steps,
        }
        assert ap7.info["config"]["scale"] == TINY_SCALE

    def test_nests_the_train_step_under_batch_and_denoise_under_assimilate(
        self, ap7: AppRun
    ) -> None:
        assert ap7.parent_keys() == step_parents(*TRAIN_STEP) | {
            "assimilate": {"epoch"},
            "denoise": {"assimilate"},
        }

    def test_lists_its_regions_in_report_order(self, ap7: AppRun) -> None:
        assert ap7.info["regions"] == ["epoch", "io", "batch", *TRAIN_STEP, "assimilate", "denoise"]

    def test_ran_on_the_cpu_names_jax_and_wrote_its_files(self, ap7: AppRun) -> None:
        assert_ran_on_the_cpu_and_wrote_its_files(
            ap7,
            name="ap7-diffusion-assimilation",
            framework="jax",
            seed_app="AP7",
            epochs=EPOCHS,
            batches=BATCHES,
        )
        # On the CPU no region is a first call kept apart for compiling.
        assert not any(row.compiled for row in ap7.summary.rows)
        assert "| denoise " in (ap7.folder / "stats.md").read_text()

    def test_results_are_the_analysis_scores(self, ap7: AppRun) -> None:
        result = ap7.info["result"]
        assert set(result) == {
            "loss",
            "rmse_analysis",
            "rmse_background",
            "rmse_observed",
            "rmse_unobserved",
            "rmse_background_unobserved",
            "denoise_steps",
        }
        assert result["loss"] > 0

    def test_the_analysis_takes_the_observations_in(self, ap7: AppRun) -> None:
        result = ap7.info["result"]
        # At the observed points the analysis is the observations (noise std 0.02), far
        # closer to the truth than the background or the analysis elsewhere.
        assert result["rmse_observed"] < 0.05
        assert result["rmse_observed"] < 0.2 * result["rmse_unobserved"]
        assert result["rmse_observed"] < 0.2 * result["rmse_background"]
        # Around them the soft mask spreads the observations, and the ensemble mean beats
        # the background even at the points that were not observed.
        assert result["rmse_unobserved"] < result["rmse_background_unobserved"]
        assert result["rmse_analysis"] < result["rmse_background"]


def _jax_has_gpu() -> bool:
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@pytest.mark.slow
def test_ap7_on_cuda_times_on_the_gpu_or_fails_clearly_without_one(tmp_path: Path) -> None:
    args = ["--size", "tiny", "--epochs", "2", "--batches", "2", "--device", "cuda"]
    if _jax_has_gpu():
        run = run_app("ap7_diffusion_assimilation.py", tmp_path / "run", *args)
        steps = int(run.info["result"]["denoise_steps"])
        device_counts: dict[str, int] = {}
        for row in run.summary.rows:
            if row.device:
                device_counts[str(row.key)] = device_counts.get(str(row.key), 0) + row.stats.count
        # Every compute region has a device time; first calls that compiled are kept apart.
        assert device_counts == {
            "batch": 4,
            "forward": 4,
            "backward": 4,
            "optimizer": 4,
            "assimilate": 2,
            "denoise": 2 * steps,
        }
        assert any(row.compiled for row in run.summary.rows)
        return
    done = app_process(
        "ap7_diffusion_assimilation.py",
        *args,
        env={**os.environ, "MAELTRACE_OUTPUT_DIR": str(tmp_path)},
        timeout_s=120,
    )
    assert done.returncode != 0
    assert "RuntimeError: --device cuda: JAX finds no GPU" in done.stderr
