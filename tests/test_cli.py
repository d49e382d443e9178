"""The ``maeltrace`` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import maeltrace
from maeltrace.cli import main


class TestDemo:
    def test_the_demo_prints_the_table_and_writes_the_stats_files(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["--epochs", "2", "--batches", "3", "--output-dir", str(tmp_path), "--run-id", "r1"]
        status = main(["demo", *args])
        assert status == 0
        out = capsys.readouterr().out
        assert out.startswith("| Metric")
        for label in ("Epoch", "IO", "Batch", "Forward", "Backward"):
            assert f"| {label} " in out
        folder = tmp_path / "r1"
        assert sorted(p.name for p in folder.iterdir()) == [
            "stats.csv",
            "stats.json",
            "stats.md",
            "trace.json",
            "traces.otlp.jsonl",
        ]
        data = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
        counts = {r["key"]: r["stats"]["count"] for r in data["regions"]}
        assert counts == {"epoch": 2, "io": 6, "batch": 6, "forward": 6, "backward": 6}
        assert data["metadata"]["run_id"] == "r1"

    def test_the_output_folder_comes_from_the_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("MAELTRACE_OUTPUT_DIR", str(tmp_path))
        monkeypatch.setenv("MAELTRACE_RUN_ID", "from-env")
        assert main(["demo", "--epochs", "1", "--batches", "1"]) == 0
        assert (tmp_path / "from-env" / "stats.json").is_file()
        assert "from-env" in capsys.readouterr().out

    @pytest.mark.parametrize("args", [["--epochs", "0"], ["--batches", "-1"], ["--warmup", "x"]])
    def test_bad_sizes_are_usage_errors(
        self, args: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", *args])
        assert exit_info.value.code == 2
        assert "error" in capsys.readouterr().err

    def test_a_run_id_that_would_leave_the_folder_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["demo", "--output-dir", str(tmp_path), "--run-id", "../x"]) == 2
        assert "cannot name a folder" in capsys.readouterr().err
        assert list(tmp_path.iterdir()) == []


def test_python_dash_m_runs_the_same_command_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "maeltrace", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"maeltrace {maeltrace.__version__}"
