"""The Keras and TensorFlow example apps (AP1, AP3, AP4's TensorFlow variant, AP5) run as
``maeltrace bench`` runs them, at ``--size tiny``, and what they recorded."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from maeltrace.report import Summary
from tests.helpers import APPS, ROOT, AppRun, run_app

EPOCHS = 2
BATCHES = 3
STEPS = EPOCHS * BATCHES
N_CRITIC = 4  # AP5's critic updates per batch
FILES = {"stats.json", "stats.md", "stats.csv", "trace.json", "traces.otlp.jsonl", "app.json"}


def _run(tmp_path_factory: pytest.TempPathFactory, script: str) -> Iterator[AppRun]:
    folder = tmp_path_factory.mktemp(script.removesuffix(".py")) / "run"
    with pytest.MonkeyPatch.context() as env:
        # As the autouse fixture does per test: no OTLP settings of the machine apply.
        for name in [n for n in os.environ if n.startswith("OTEL_")]:
            env.delenv(name)
        env.setenv("MAELTRACE_OUTPUT_DIR", str(folder.parent / "maeltrace-out"))
        yield run_app(
            script, folder, "--size", "tiny", "--epochs", str(EPOCHS), "--batches", str(BATCHES)
        )


@pytest.fixture(scope="module")
def ap1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppRun]:
    yield from _run(tmp_path_factory, "ap1_unet_downscaling.py")


@pytest.fixture(scope="module")
def ap3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppRun]:
    yield from _run(tmp_path_factory, "ap3_radiation_lstm.py")


@pytest.fixture(scope="module")
def ap4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppRun]:
    yield from _run(tmp_path_factory, "ap4_postprocessing_tf.py")


@pytest.fixture(scope="module")
def ap5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppRun]:
    yield from _run(tmp_path_factory, "ap5_wgan_downscaling.py")


def _children_in_order(run: AppRun, parent: str) -> list[list[str]]:
    """For each CPU region of key ``parent``, its children's keys in start order."""
    cpu = [e for e in run.events if e["cat"] == "cpu"]
    parents = sorted((e for e in cpu if e["args"]["key"] == parent), key=lambda e: float(e["ts"]))
    children: dict[int, list[tuple[float, str]]] = {e["args"]["seq"]: [] for e in parents}
    for event in cpu:
        parent_seq = event["args"].get("parent_seq")
        if parent_seq in children:
            children[parent_seq].append((float(event["ts"]), event["args"]["key"]))
    return [[key for _, key in sorted(children[e["args"]["seq"]])] for e in parents]


def _assert_ran_on_the_cpu_and_wrote_its_files(run: AppRun, name: str, framework: str) -> None:
    assert run.info["name"] == name
    assert run.info["framework"] == framework
    assert run.info["framework_version"]
    assert run.info["config"]["device"] == "cpu"
    assert run.info["config"]["epochs"] == EPOCHS
    assert run.info["expected"] == {"epoch": EPOCHS, "batch": STEPS}
    assert run.counts("gpu") == {}
    assert not any(row.device for row in run.summary.rows)
    assert {p.name for p in run.folder.iterdir()} >= FILES
    assert all((run.folder / file).stat().st_size > 0 for file in FILES)
    # Every key the app lists is recorded, and every key recorded is listed.
    assert set(run.info["regions"]) == set(run.counts())
    result = run.info["result"]
    assert result
    assert all(math.isfinite(value) for value in result.values())


KERAS_COUNTS = {"fit": 1, "epoch": EPOCHS, "io": STEPS, "batch": STEPS}
KERAS_PARENTS = {"fit": {None}, "epoch": {"fit"}, "io": {"epoch"}, "batch": {"epoch"}}


@pytest.mark.slow
class TestAp1UnetDownscaling:
    def test_the_timer_callback_records_fit_epochs_and_an_io_gap_per_batch(
        self, ap1: AppRun
    ) -> None:
        assert ap1.counts() == KERAS_COUNTS
        assert ap1.parent_keys() == KERAS_PARENTS
        # The IO gap precedes each batch: io and batch alternate in every epoch.
        assert _children_in_order(ap1, "epoch") == [["io", "batch"] * BATCHES] * EPOCHS
        assert ap1.info["regions"] == ["fit", "epoch", "io", "batch"]

    def test_ran_on_the_cpu_wrote_its_files_and_learned_something(self, ap1: AppRun) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(ap1, "ap1-unet-downscaling", "keras")
        assert ap1.info["seed_app"] == "AP1"
        assert set(ap1.info["result"]) == {"loss", "mae_k"}
        assert 0 < ap1.info["result"]["loss"] < 10


@pytest.mark.slow
class TestAp3RadiationLstm:
    def test_the_timer_callback_records_fit_epochs_and_an_io_gap_per_batch(
        self, ap3: AppRun
    ) -> None:
        assert ap3.counts() == KERAS_COUNTS
        assert ap3.parent_keys() == KERAS_PARENTS
        assert _children_in_order(ap3, "epoch") == [["io", "batch"] * BATCHES] * EPOCHS
        assert ap3.info["regions"] == ["fit", "epoch", "io", "batch"]

    def test_ran_on_the_cpu_wrote_its_files_and_learned_something(self, ap3: AppRun) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(ap3, "ap3-radiation-lstm", "keras")
        assert ap3.info["seed_app"] == "AP3"
        # Standardised targets: a model no better than their mean scores about 1.
        assert 0 < ap3.info["result"]["loss"] < 2


@pytest.mark.slow
class TestAp4PostprocessingTf:
    def test_records_io_and_a_forward_backward_optimizer_step_per_batch(self, ap4: AppRun) -> None:
        assert ap4.counts() == {
            "epoch": EPOCHS,
            "io": STEPS,
            "batch": STEPS,
            "forward": STEPS,
            "backward": STEPS,
            "optimizer": STEPS,
        }
        assert ap4.parent_keys() == {
            "epoch": {None},
            "io": {"epoch"},
            "batch": {"epoch"},
            "forward": {"batch"},
            "backward": {"batch"},
            "optimizer": {"batch"},
        }
        assert _children_in_order(ap4, "epoch") == [["io", "batch"] * BATCHES] * EPOCHS
        assert _children_in_order(ap4, "batch") == [["forward", "backward", "optimizer"]] * STEPS
        assert ap4.info["regions"] == ["epoch", "io", "batch", "forward", "backward", "optimizer"]

    def test_ran_on_the_cpu_wrote_its_files_and_scores_crps(self, ap4: AppRun) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(ap4, "ap4-postprocessing-tf", "tensorflow")
        assert ap4.info["seed_app"] == "AP4"
        result = ap4.info["result"]
        assert set(result) == {"loss", "crps_k", "raw_ensemble_crps_k"}
        assert result["crps_k"] == pytest.approx(8 * result["loss"])
        assert result["loss"] > 0
        assert result["raw_ensemble_crps_k"] > 0


@pytest.mark.slow
class TestAp5WganDownscaling:
    def test_records_n_critic_updates_then_a_generator_update_per_batch(self, ap5: AppRun) -> None:
        assert ap5.counts() == {
            "epoch": EPOCHS,
            "io": STEPS,
            "batch": STEPS,
            "critic": STEPS,
            "critic_step": STEPS * N_CRITIC,
            "generator": STEPS,
        }
        assert ap5.parent_keys() == {
            "epoch": {None},
            "io": {"epoch"},
            "batch": {"epoch"},
            "critic": {"batch"},
            "critic_step": {"critic"},
            "generator": {"batch"},
        }
        assert _children_in_order(ap5, "batch") == [["critic", "generator"]] * STEPS
        assert _children_in_order(ap5, "critic") == [["critic_step"] * N_CRITIC] * STEPS
        assert ap5.info["regions"] == [
            "epoch",
            "io",
            "batch",
            "critic",
            "critic_step",
            "generator",
        ]

    def test_ran_on_the_cpu_wrote_its_files_and_reports_both_losses(self, ap5: AppRun) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(ap5, "ap5-wgan-downscaling", "tensorflow")
        assert ap5.info["seed_app"] == "AP5"
        assert set(ap5.info["result"]) == {"loss", "critic_loss", "mae_k"}
        assert ap5.info["result"]["mae_k"] > 0


@pytest.mark.slow
def test_ap4_on_cuda_times_on_the_gpu_or_fails_clearly_without_one(tmp_path: Path) -> None:
    args = ["--size", "tiny", "--epochs", "1", "--batches", "2", "--device", "cuda"]
    folder = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            str(APPS / "ap4_postprocessing_tf.py"),
            "--output-dir",
            str(folder),
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, "MAELTRACE_OUTPUT_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
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
