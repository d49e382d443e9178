"""The PyTorch example apps (AP2, AP4's PyTorch and Lightning variants, AP6) run as
``maeltrace bench`` runs them, at ``--size tiny``, and what they recorded."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    APPS,
    ROOT,
    AppRun,
    app_run_fixture,
    assert_ran_on_the_cpu_and_wrote_its_files,
    assert_times_a_step_per_batch,
    step_parents,
)

EPOCHS = 2
BATCHES = 3

# One run of each app, shared by its tests.
ap2 = app_run_fixture("ap2", "ap2_rain_transformer.py", epochs=EPOCHS, batches=BATCHES)
ap4 = app_run_fixture("ap4", "ap4_postprocessing_torch.py", epochs=EPOCHS, batches=BATCHES)
ap4_lightning = app_run_fixture(
    "ap4_lightning", "ap4_postprocessing_lightning.py", epochs=EPOCHS, batches=BATCHES
)
# One worker keeps the run short; the worker processes are what AP6 is about.
ap6 = app_run_fixture(
    "ap6", "ap6_swav_clustering.py", "--workers", "1", epochs=EPOCHS, batches=BATCHES
)


def _assert_ran_on_the_cpu_and_wrote_its_files(
    run: AppRun, name: str, seed_app: str, framework: str = "torch"
) -> None:
    assert_ran_on_the_cpu_and_wrote_its_files(
        run, name=name, framework=framework, seed_app=seed_app, epochs=EPOCHS, batches=BATCHES
    )


AP2_STEP = ("forward", "backward", "optimizer")
AP4_STEP = ("forward", "backward", "optimizer")
AP6_STEP = ("forward", "sinkhorn", "backward", "optimizer")


@pytest.mark.slow
class TestAp2RainTransformer:
    def test_the_trainer_callback_times_each_batch_exactly_once(self, ap2: AppRun) -> None:
        # maeltrace.transformers.TimerCallback's regions, one per batch (no gradient
        # accumulation: one io and one optimizer step per batch), and the app's all-reduce.
        steps = EPOCHS * BATCHES
        assert ap2.counts() == {
            "epoch": EPOCHS,
            "io": steps,
            "batch": steps,
            "forward": steps,
            "backward": steps,
            "comm": steps,
            "optimizer": steps,
        }
        assert ap2.info["regions"] == [
            "epoch",
            "io",
            "batch",
            "forward",
            "backward",
            "comm",
            "optimizer",
        ]

    def test_each_batch_is_a_data_parallel_step_with_its_all_reduce(self, ap2: AppRun) -> None:
        # The Trainer fetches each batch before its step; the all-reduce ends the backward pass,
        # where DDP's reducer runs it, before the optimizer steps.
        assert ap2.parent_keys() == step_parents(*AP2_STEP) | {"comm": {"backward"}}
        assert ap2.children_in_order("epoch") == [["io", "batch"] * BATCHES] * EPOCHS
        assert ap2.children_in_order("batch") == [list(AP2_STEP)] * (EPOCHS * BATCHES)
        assert ap2.children_in_order("backward") == [["comm"]] * (EPOCHS * BATCHES)

    def test_ran_on_the_cpu_wrote_its_files_and_classified(self, ap2: AppRun) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(ap2, "ap2-rain-transformer", "AP2")
        result = ap2.info["result"]
        assert set(result) == {"loss", "accuracy"}
        assert 0 < result["loss"] < 2
        assert 0 <= result["accuracy"] <= 1


@pytest.mark.slow
class TestAp4PostprocessingTorch:
    def test_times_io_and_forward_backward_and_optimizer_in_each_batch(self, ap4: AppRun) -> None:
        assert_times_a_step_per_batch(ap4, *AP4_STEP, epochs=EPOCHS, batches=BATCHES)

    def test_ran_on_the_cpu_wrote_its_files_and_scored_both_forecasts(self, ap4: AppRun) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(ap4, "ap4-postprocessing-torch", "AP4")
        result = ap4.info["result"]
        assert set(result) == {"loss", "crps_k", "raw_ensemble_crps_k"}
        # CRPS of 2 m temperature forecasts whose error is about 2 K: positive, a few kelvin.
        assert 0 < result["crps_k"] < 10
        assert 0 < result["raw_ensemble_crps_k"] < 10


@pytest.mark.slow
class TestAp4Lightning:
    def test_the_callback_times_what_the_pytorch_loop_times_by_hand(
        self, ap4_lightning: AppRun
    ) -> None:
        assert_times_a_step_per_batch(ap4_lightning, *AP4_STEP, epochs=EPOCHS, batches=BATCHES)

    def test_ran_on_the_cpu_wrote_its_files_and_scored_both_forecasts(
        self, ap4_lightning: AppRun
    ) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(
            ap4_lightning, "ap4-postprocessing-lightning", "AP4", framework="lightning"
        )
        result = ap4_lightning.info["result"]
        assert set(result) == {"loss", "crps_k", "raw_ensemble_crps_k"}
        assert result["loss"] > 0
        assert min(result["crps_k"], result["raw_ensemble_crps_k"]) > 0


@pytest.mark.slow
class TestAp6SwavClustering:
    def test_times_io_and_the_sinkhorn_codes_in_each_batch(self, ap6: AppRun) -> None:
        assert_times_a_step_per_batch(ap6, *AP6_STEP, epochs=EPOCHS, batches=BATCHES)

    def test_ran_on_the_cpu_with_one_worker_and_wrote_its_files(self, ap6: AppRun) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(ap6, "ap6-swav-clustering", "AP6")
        assert ap6.info["config"]["workers"] == 1
        result = ap6.info["result"]
        assert set(result) == {"loss", "prototypes_used"}
        # Cross-entropy against soft codes over 32 prototypes: at most about log(32) + margin.
        assert 0 < result["loss"] < 10
        assert 1 <= result["prototypes_used"] <= 32

    def test_waiting_for_augmented_views_is_a_large_share_of_the_epoch(self, ap6: AppRun) -> None:
        # The worker takes about four times as long to augment a batch as the step takes to
        # train on it: the loop waits for 40-50 % of the epoch here, on a busy machine too
        # (starting and stopping the worker takes most of the rest). A fifth leaves room and
        # still fails if the augmentation moves out of the loader.
        assert ap6.total_s("io") >= 0.2 * ap6.total_s("epoch")


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_ap6_stops_its_workers_and_exits_without_warnings(tmp_path: Path, workers: str) -> None:
    env = dict(os.environ)
    env.pop("MAELTRACE_EXPORT", None)
    command = [sys.executable, "-X", "dev", str(APPS / "ap6_swav_clustering.py")]
    command += ["--output-dir", str(tmp_path / "run"), "--size", "tiny", "--epochs", "2"]
    command += ["--batches", "1", "--workers", workers]
    # Development mode shows the warnings a clean exit must not give (ResourceWarning...). The
    # app leads a process group of its own, which its workers join: whatever is left in it
    # when the app has exited outlived the app.
    with subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as app:
        try:
            _, stderr = app.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(app.pid, signal.SIGKILL)
            raise
    try:
        os.killpg(app.pid, 0)
    except ProcessLookupError:
        left_behind = False
    else:
        left_behind = True
        os.killpg(app.pid, signal.SIGKILL)
    assert app.returncode == 0, stderr[-6000:]
    assert not left_behind, "processes of the app outlived it"
    assert "Warning" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    info = json.loads((tmp_path / "run" / "app.json").read_text())
    assert info["config"]["workers"] == int(workers)
    assert math.isfinite(info["result"]["loss"])
