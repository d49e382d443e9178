"""The JAX example app (AP7, diffusion-model data assimilation) run as ``maeltrace bench`` runs
it, at ``--size tiny``, and what it recorded."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import APPS, ROOT, AppRun, run_app

EPOCHS = 2
BATCHES = 3
TINY_SCALE = 16  # the tiny size's grid side; the sampler takes side // 2 steps


@pytest.fixture(scope="module")
def ap7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppRun]:
    """One tiny run of AP7, shared by the tests that read what it recorded."""
    folder = tmp_path_factory.mktemp("ap7") / "run"
    with pytest.MonkeyPatch.context() as env:
        # As the autouse fixture does per test: no OTLP settings of the machine apply.
        for name in [n for n in os.environ if n.startswith("OTEL_")]:
            env.delenv(name)
        env.setenv("MAELTRACE_OUTPUT_DIR", str(folder.parent / "maeltrace-out"))
        yield run_app(
            "ap7_diffusion_assimilation.py",
            folder,
            "--size",
            "tiny",
            "--epochs",
            str(EPOCHS),
            "--batches",
            str(BATCHES),
        )


@pytest.mark.slow
class TestAp7DiffusionAssimilation:
    def test_records_each_batch_step_and_one_denoise_region_per_sampler_step(
        self, ap7: AppRun
    ) -> None:
        steps = TINY_SCALE // 2
        assert ap7.info["result"]["denoise_steps"] == steps
        per_batch = EPOCHS * BATCHES
        assert ap7.counts() == {
            "epoch": EPOCHS,
            "io": per_batch,
            "batch": per_batch,
            "forward": per_batch,
            "backward": per_batch,
            "optimizer": per_batch,
            "assimilate": EPOCHS,
            "denoise": EPOCHS * steps,
        }
        assert ap7.info["expected"] == {"epoch": EPOCHS, "batch": per_batch}
        assert ap7.info["config"]["epochs"] == EPOCHS
        assert ap7.info["config"]["scale"] == TINY_SCALE

    def test_nests_the_train_step_under_batch_and_denoise_under_assimilate(
        self, ap7: AppRun
    ) -> None:
        assert ap7.parent_keys() == {
            "epoch": {None},
            "io": {"epoch"},
            "batch": {"epoch"},
            "forward": {"batch"},
            "backward": {"batch"},
            "optimizer": {"batch"},
            "assimilate": {"epoch"},
            "denoise": {"assimilate"},
        }

    def test_lists_its_regions_in_report_order_and_names_jax(self, ap7: AppRun) -> None:
        assert ap7.info["name"] == "ap7-diffusion-assimilation"
        assert ap7.info["framework"] == "jax"
        assert ap7.info["framework_version"]
        assert ap7.info["seed_app"] == "AP7"
        assert ap7.info["regions"] == [
            "epoch",
            "io",
            "batch",
            "forward",
            "backward",
            "optimizer",
            "assimilate",
            "denoise",
        ]

    def test_has_no_gpu_rows_on_the_cpu(self, ap7: AppRun) -> None:
        assert ap7.info["config"]["device"] == "cpu"
        assert ap7.counts("gpu") == {}
        assert not any(row.device or row.compiled for row in ap7.summary.rows)

    def test_writes_the_stats_traces_and_app_files(self, ap7: AppRun) -> None:
        names = {
            "stats.json",
            "stats.md",
            "stats.csv",
            "trace.json",
            "traces.otlp.jsonl",
            "app.json",
        }
        assert names <= {p.name for p in ap7.folder.iterdir()}
        assert all((ap7.folder / name).stat().st_size > 0 for name in names)
        assert "| denoise " in (ap7.folder / "stats.md").read_text()

    def test_results_are_finite(self, ap7: AppRun) -> None:
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
        assert all(math.isfinite(value) for value in result.values())
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
    done = subprocess.run(
        [sys.executable, str(APPS / "ap7_diffusion_assimilation.py"), *args],
        cwd=ROOT,
        env={**os.environ, "MAELTRACE_OUTPUT_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "RuntimeError: --device cuda: JAX finds no GPU" in done.stderr
