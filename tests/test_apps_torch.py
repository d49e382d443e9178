"""The PyTorch example apps (AP2, AP4's PyTorch variant, AP6) run as ``maeltrace bench`` runs
them, at ``--size tiny``, and what they recorded."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import APPS, ROOT, AppRun, run_app

EPOCHS = 2
BATCHES = 3
STEPS = EPOCHS * BATCHES
FILES = {"stats.json", "stats.md", "stats.csv", "trace.json", "traces.otlp.jsonl", "app.json"}


def _run(tmp_path_factory: pytest.TempPathFactory, script: str, *args: str) -> Iterator[AppRun]:
    folder = tmp_path_factory.mktemp(script.removesuffix(".py")) / "run"
    with pytest.MonkeyPatch.context() as env:
        # As the autouse fixture does per test: no OTLP settings of the machine apply.
        for name in [n for n in os.environ if n.startswith("OTEL_")]:
            env.delenv(name)
        env.setenv("MAELTRACE_OUTPUT_DIR", str(folder.parent / "maeltrace-out"))
        yield run_app(
            script,
            folder,
            "--size",
            "tiny",
            "--epochs",
            str(EPOCHS),
            "--batches",
            str(BATCHES),
            *args,
        )


@pytest.fixture(scope="module")
def ap2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppRun]:
    yield from _run(tmp_path_factory, "ap2_rain_transformer.py")


@pytest.fixture(scope="module")
def ap4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppRun]:
    yield from _run(tmp_path_factory, "ap4_postprocessing_torch.py")


@pytest.fixture(scope="module")
def ap6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppRun]:
    # One worker keeps the run short; the worker processes are what AP6 is about.
    yield from _run(tmp_path_factory, "ap6_swav_clustering.py", "--workers", "1")


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


def _total_s(run: AppRun, key: str) -> float:
    (row,) = (r for r in run.summary.rows if str(r.key) == key and not r.device)
    return row.stats.total


def _assert_ran_on_the_cpu_and_wrote_its_files(run: AppRun, name: str, seed_app: str) -> None:
    assert run.info["name"] == name
    assert run.info["seed_app"] == seed_app
    assert run.info["framework"] == "torch"
    assert run.info["framework_version"]
    assert run.info["config"]["device"] == "cpu"
    assert run.info["config"]["epochs"] == EPOCHS
    assert run.info["config"]["batches"] == BATCHES
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


def _step_counts(*step_keys: str) -> dict[str, int]:
    return {"epoch": EPOCHS, "io": STEPS, "batch": STEPS} | dict.fromkeys(step_keys, STEPS)


def _step_parents(*step_keys: str) -> dict[str, set[str | None]]:
    return {"epoch": {None}, "io": {"epoch"}, "batch": {"epoch"}} | {
        key: {"batch"} for key in step_keys
    }


AP2_STEP = ("forward", "backward", "comm", "optimizer")
AP4_STEP = ("forward", "backward", "optimizer")
AP6_STEP = ("forward", "sinkhorn", "backward", "optimizer")


@pytest.mark.slow
class TestAp2RainTransformer:
    def test_each_batch_is_a_data_parallel_step_with_its_all_reduce(self, ap2: AppRun) -> None:
        assert ap2.counts() == _step_counts(*AP2_STEP)
        assert ap2.parent_keys() == _step_parents(*AP2_STEP)
        # The loader's fetch precedes each step, and the all-reduce sits between the backward
        # pass and the optimizer, as in data-parallel training.
        assert _children_in_order(ap2, "epoch") == [["io", "batch"] * BATCHES] * EPOCHS
        assert _children_in_order(ap2, "batch") == [list(AP2_STEP)] * STEPS
        assert ap2.info["regions"] == ["epoch", "io", "batch", *AP2_STEP]

    def test_ran_on_the_cpu_wrote_its_files_and_classified(self, ap2: AppRun) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(ap2, "ap2-rain-transformer", "AP2")
        result = ap2.info["result"]
        assert set(result) == {"loss", "accuracy"}
        assert 0 < result["loss"] < 2
        assert 0 <= result["accuracy"] <= 1


@pytest.mark.slow
class TestAp4PostprocessingTorch:
    def test_times_io_and_forward_backward_and_optimizer_in_each_batch(self, ap4: AppRun) -> None:
        assert ap4.counts() == _step_counts(*AP4_STEP)
        assert ap4.parent_keys() == _step_parents(*AP4_STEP)
        assert _children_in_order(ap4, "epoch") == [["io", "batch"] * BATCHES] * EPOCHS
        assert _children_in_order(ap4, "batch") == [list(AP4_STEP)] * STEPS
        assert ap4.info["regions"] == ["epoch", "io", "batch", *AP4_STEP]

    def test_ran_on_the_cpu_wrote_its_files_and_scored_both_forecasts(self, ap4: AppRun) -> None:
        _assert_ran_on_the_cpu_and_wrote_its_files(ap4, "ap4-postprocessing-torch", "AP4")
        result = ap4.info["result"]
        assert set(result) == {"loss", "crps_k", "raw_ensemble_crps_k"}
        # CRPS of 2 m temperature forecasts whose error is about 2 K: positive, a few kelvin.
        assert 0 < result["crps_k"] < 10
        assert 0 < result["raw_ensemble_crps_k"] < 10


@pytest.mark.slow
class TestAp6SwavClustering:
    def test_times_io_and_the_sinkhorn_codes_in_each_batch(self, ap6: AppRun) -> None:
        assert ap6.counts() == _step_counts(*AP6_STEP)
        assert ap6.parent_keys() == _step_parents(*AP6_STEP)
        assert _children_in_order(ap6, "epoch") == [["io", "batch"] * BATCHES] * EPOCHS
        assert _children_in_order(ap6, "batch") == [list(AP6_STEP)] * STEPS
        assert ap6.info["regions"] == ["epoch", "io", "batch", *AP6_STEP]

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
        assert _total_s(ap6, "io") >= 0.2 * _total_s(ap6, "epoch")


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
