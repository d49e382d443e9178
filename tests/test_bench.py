"""``maeltrace bench``: apps in their own processes, progress, failures, MLflow, the report.

Most tests run small pure-Python apps written into a temporary apps folder beside a copy of
``apps/_harness.py``, so they check the runner and not the frameworks; the last ones run the
real example apps at their smallest size through the command line.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
from pathlib import Path

import pytest

from maeltrace import cli
from maeltrace.report import Summary
from maeltrace.tools.bench import BenchOptions, _ProgressBar, discover_apps, run_bench, select_apps
from tests.helpers import APPS
from tests.services.jaeger import JaegerService

LOOP_APP = """
from _harness import App, Size
from maeltrace import TimeType

APP = App(
    name="{name}", title="A loop", framework="python", seed_app="AP0",
    sizes={{s: Size(2, 3, 4, 1) for s in ("tiny", "small", "medium")}},
    regions=["epoch", "io", "batch", "forward"],
)


def train(tmr, config, progress):
    {body}
    for _ in range(config.epochs):
        with tmr.region(TimeType.EPOCH):
            for _ in tmr.iterate(range(config.batches), TimeType.IO):
                with tmr.region(TimeType.BATCH):
                    with tmr.region(TimeType.FORWARD):
                        sum(range(2000))
                progress()
    return {{"loss": 0.5}}


if __name__ == "__main__":
    raise SystemExit(APP.main(train))
"""


def write_app(folder: Path, script: str, body: str = "pass") -> None:
    name = script.removesuffix(".py").replace("_", "-")
    (folder / script).write_text(LOOP_APP.format(name=name, body=body))


@pytest.fixture
def apps_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "apps"
    folder.mkdir()
    shutil.copy(APPS / "_harness.py", folder / "_harness.py")
    write_app(folder, "ap1_first.py")
    write_app(folder, "ap2_second.py")
    write_app(folder, "ap10_tenth.py")
    return folder


def options(apps_dir: Path, tmp_path: Path, **changes: object) -> BenchOptions:
    base: dict[str, object] = {
        "apps_dir": apps_dir,
        "output_root": tmp_path / "out",
        "size": "tiny",
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    base.update(changes)
    return BenchOptions(**base)  # type: ignore[arg-type]  # checked by the dataclass


class TestChoosingApps:
    def test_apps_are_found_in_number_order_and_named_by_their_file(self, apps_dir: Path) -> None:
        assert list(discover_apps(apps_dir)) == ["ap1-first", "ap2-second", "ap10-tenth"]

    def test_a_prefix_selects_every_variant_and_order_is_kept(self, apps_dir: Path) -> None:
        write_app(apps_dir, "ap2_second_variant.py")
        chosen = select_apps(["ap2", "ap1"], discover_apps(apps_dir))
        assert list(chosen) == ["ap1-first", "ap2-second", "ap2-second-variant"]

    def test_an_unknown_app_is_a_value_error_listing_the_apps(self, apps_dir: Path) -> None:
        with pytest.raises(ValueError, match=r"no app 'ap7'.*ap1-first, ap2-second"):
            select_apps(["ap7"], discover_apps(apps_dir))

    def test_a_folder_without_apps_is_a_value_error(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="no example apps"):
            discover_apps(tmp_path)

    def test_the_repository_has_the_seven_applications(self) -> None:
        names = list(discover_apps(APPS))
        assert {name.split("-")[0] for name in names} == {f"ap{i}" for i in range(1, 8)}
        assert len([n for n in names if n.startswith("ap4-")]) == 3  # torch, Lightning, tf


class TestRunning:
    def test_each_app_runs_in_its_own_folder_and_bench_json_says_how_it_ended(
        self, apps_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("MAELTRACE_EXPORT")  # the embedded default writes the spans
        stream = io.StringIO()
        result = run_bench(options(apps_dir, tmp_path, mlflow=False, report=False), stream=stream)
        assert result.ok
        manifest = json.loads((result.folder / "bench.json").read_text())
        assert manifest["schema"] == "maeltrace.bench/1"
        assert [a["name"] for a in manifest["apps"]] == ["ap1-first", "ap2-second", "ap10-tenth"]
        pids = set()
        for app in manifest["apps"]:
            assert app["status"] == "ok" and app["returncode"] == 0 and app["wall_s"] > 0
            folder = result.folder / app["folder"]
            summary = Summary.load(folder / "stats.json")
            counts = {str(row.key): row.stats.count for row in summary.rows}
            assert counts == {"epoch": 2, "io": 6, "batch": 6, "forward": 6}
            pids.add(summary.metadata["pid"])
            log = (result.folder / app["log"]).read_text()
            assert "| Batch" in log  # the app's own table, in its log
            assert "@maeltrace-progress" not in log  # progress lines drive the bar instead
            assert (folder / "traces.otlp.jsonl").is_file()
        assert len(pids) == 3  # one process each
        assert manifest["wall_s"] > 0 and manifest["mlflow"] is None

    def test_without_a_terminal_the_progress_is_one_line_per_start_and_end(
        self, apps_dir: Path, tmp_path: Path
    ) -> None:
        stream = io.StringIO()
        run_bench(options(apps_dir, tmp_path, apps=["ap1"], mlflow=False), stream=stream)
        lines = stream.getvalue().splitlines()
        assert any(line.startswith("[1/1] ap1-first") and "running" in line for line in lines)
        assert any(line.startswith("[1/1] ap1-first") and "done in" in line for line in lines)

    def test_on_a_terminal_the_bar_counts_batches(self, apps_dir: Path, tmp_path: Path) -> None:
        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        write_app(apps_dir, "ap3_slow.py", body="import time; time.sleep(1.0)")
        stream = Terminal()
        run_bench(options(apps_dir, tmp_path, apps=["ap3"], mlflow=False), stream=stream)
        drawn = stream.getvalue()
        assert "\r[1/1] ap3-slow" in drawn and "starting" in drawn  # redrawn in place
        assert "done in" in drawn

    def test_the_bar_fills_with_the_batches_done(self) -> None:
        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        stream = Terminal()
        bar = _ProgressBar(stream, 8).for_app(3, "ap3-radiation-lstm")
        bar.update(6, 24)
        bar.draw(4.25)
        assert stream.getvalue().startswith("\r[3/8] ap3-radiation-lstm")
        assert "[######------------------] 6/24 batches    4.2 s" in stream.getvalue()

    def test_a_failing_app_is_recorded_and_the_others_still_run(
        self, apps_dir: Path, tmp_path: Path
    ) -> None:
        write_app(apps_dir, "ap1_first.py", body="raise RuntimeError('out of memory, say')")
        stream = io.StringIO()
        result = run_bench(options(apps_dir, tmp_path, mlflow=False), stream=stream)
        assert not result.ok
        assert [o.status for o in result.outcomes] == ["failed", "ok", "ok"]
        assert result.outcomes[0].returncode == 1
        log = (result.folder / "ap1-first" / "log.txt").read_text()
        assert "RuntimeError: out of memory, say" in log
        assert "FAILED in" in stream.getvalue() and "out of memory, say (see" in stream.getvalue()
        assert cli.main(["report", str(result.folder)]) == 0  # the report still builds

    def test_a_missing_framework_gets_the_install_hint(
        self, apps_dir: Path, tmp_path: Path
    ) -> None:
        write_app(apps_dir, "ap1_first.py", body="import tensorflow_that_is_not_installed")
        stream = io.StringIO()
        run_bench(options(apps_dir, tmp_path, apps=["ap1"], mlflow=False), stream=stream)
        assert "tensorflow_that_is_not_installed is not installed" in stream.getvalue()
        assert "maeltrace[apps]" in stream.getvalue()

    def test_an_app_past_the_timeout_is_killed(self, apps_dir: Path, tmp_path: Path) -> None:
        write_app(apps_dir, "ap1_first.py", body="import time; time.sleep(60)")
        result = run_bench(
            options(apps_dir, tmp_path, apps=["ap1"], timeout_s=2.0, mlflow=False, report=False),
            stream=io.StringIO(),
        )
        outcome = result.outcomes[0]
        assert outcome.status == "timeout" and outcome.returncode is None
        assert 2.0 <= outcome.wall_s < 30
        assert "killed after 2 s" in (result.folder / "ap1-first" / "log.txt").read_text()


class TestMlflow:
    def test_a_bench_is_a_parent_run_with_a_nested_run_per_app(
        self, apps_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from mlflow.tracking import MlflowClient

        (tmp_path / "cwd").mkdir()
        monkeypatch.chdir(tmp_path / "cwd")
        result = run_bench(options(apps_dir, tmp_path, apps=["ap1", "ap2"]), stream=io.StringIO())
        assert result.mlflow is not None
        manifest = json.loads((result.folder / "bench.json").read_text())
        assert manifest["mlflow"] == result.mlflow
        client = MlflowClient(tracking_uri=result.mlflow["tracking_uri"])
        parent = client.get_run(result.mlflow["parent_run_id"])
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["maeltrace.bench"] == result.folder.name
        assert set(result.mlflow["runs"]) == {"ap1-first", "ap2-second"}
        for app, run_id in result.mlflow["runs"].items():
            run = client.get_run(run_id)
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert run.data.tags["maeltrace.app"] == app
            assert run.data.params["epochs"] == "2" and run.data.params["framework"] == "python"
            summary = Summary.load(result.folder / app / "stats.json")
            steady = next(r for r in summary.rows if r.key == "batch").steady
            assert steady is not None
            assert run.data.metrics["maeltrace/batch/steady/median"] == pytest.approx(steady.median)
            assert run.data.metrics["maeltrace/batch/steady/count"] == 5  # warm-up left out
            artifacts = {a.path for a in client.list_artifacts(run_id, "maeltrace")}
            assert "maeltrace/stats.json" in artifacts
            assert "maeltrace/flame.png" in artifacts
        report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
        assert {"report/report.html", "report/report.md"} <= report
        # Artifacts sit beside the SQLite file, not in MLflow's default ./mlruns.
        assert (tmp_path / "mlartifacts").is_dir()
        assert list((tmp_path / "cwd").iterdir()) == []

    def test_a_tracking_server_that_is_down_leaves_the_results_on_disk(
        self, apps_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from tests.services.process import free_port

        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        down = f"http://127.0.0.1:{free_port()}"
        stream = io.StringIO()
        result = run_bench(
            options(apps_dir, tmp_path, apps=["ap1"], tracking_uri=down), stream=stream
        )
        assert result.ok and result.mlflow is None and result.report is not None
        assert "MLflow logging failed" in stream.getvalue()
        assert (result.folder / "ap1-first" / "stats.json").is_file()


def test_with_an_otlp_endpoint_each_app_sends_its_spans_under_its_own_name(
    apps_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jaeger: JaegerService
) -> None:
    script = f"ap1_jaeger_{uuid.uuid4().hex[:8]}.py"
    write_app(apps_dir, script)
    service = script.removesuffix(".py").replace("_", "-")
    monkeypatch.delenv("MAELTRACE_EXPORT")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp_http_endpoint)
    result = run_bench(
        options(apps_dir, tmp_path, apps=[service], mlflow=False), stream=io.StringIO()
    )
    sent_to = jaeger.otlp_http_endpoint + "/v1/traces"  # as the timers resolve it
    assert result.ok and result.otlp_endpoint == sent_to
    manifest = json.loads((result.folder / "bench.json").read_text())
    assert manifest["otlp_endpoint"] == sent_to
    # Two epochs of 3 io, 3 batch and 3 forward spans under the epoch, and the run span.
    traces = jaeger.wait_for_spans(service, 2 * 10 + 1)
    epochs = [t for t in traces if any(s["operationName"] == "epoch" for s in t["spans"])]
    assert len(epochs) == 2 and all(len(t["spans"]) == 10 for t in epochs)
    assert not (result.folder / service / "traces.otlp.jsonl").exists()  # sent, not written
    assert (result.folder / service / "trace.json").is_file()  # the report's flame chart


@pytest.mark.slow
class TestTheExampleApps:
    """The real apps through the command line, as the README's main command runs them."""

    def test_bench_runs_real_apps_logs_them_and_compares_against_itself(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        argv = ["bench", "ap2", "ap7", "--size", "tiny", "--epochs", "2", "--batches", "2"]
        argv += ["--output-dir", str(tmp_path / "out"), "--tracking-uri", uri]
        assert cli.main(argv) == 0
        out = capsys.readouterr().out
        assert "2 of 2 apps finished" in out and "report.html" in out and "mlflow ui" in out
        (folder,) = (tmp_path / "out").glob("bench-*")
        manifest = json.loads((folder / "bench.json").read_text())
        assert [a["status"] for a in manifest["apps"]] == ["ok", "ok"]
        for app in manifest["apps"]:
            info = json.loads((folder / app["folder"] / "app.json").read_text())
            summary = Summary.load(folder / app["folder"] / "stats.json")
            counts = {str(r.key): r.stats.count for r in summary.rows if not r.device}
            assert counts["epoch"] == 2 and counts["batch"] == 4 == info["expected"]["batch"]
        html = (folder / "report.html").read_text()
        assert "ap2-rain-transformer" in html and "ap7-diffusion-assimilation" in html
        assert cli.main(["compare", str(folder), str(folder)]) == 0
        parent = manifest["mlflow"]["parent_run_id"]
        assert cli.main(["compare", parent, str(folder), "--tracking-uri", uri]) == 0


def test_the_list_flag_names_the_apps(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "ap1-unet-downscaling" in listed and "ap7-diffusion-assimilation" in listed


def test_an_unknown_app_on_the_command_line_is_exit_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["bench", "ap99"]) == 2
    assert "no app 'ap99'" in capsys.readouterr().err
