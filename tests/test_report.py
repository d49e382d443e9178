"""The seed's tables and the stats files: layout, formats, atomic writes."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

import maeltrace
from maeltrace import Timer, TimeType
from maeltrace._files import atomic_write_bytes, atomic_write_text
from maeltrace.report import COLUMNS, FORMATS, format_seconds, table_cells


def _timer(warmup: int = 0) -> Timer:
    tmr = Timer(warmup=warmup, run_id="test-run")
    for _ in range(3):
        with tmr.region(TimeType.EPOCH):
            for _ in tmr.iterate(range(4)):
                with tmr.region(TimeType.BATCH):
                    pass
    return tmr


class TestTable:
    def test_the_header_is_the_seeds_plus_count(self) -> None:
        out = io.StringIO()
        _timer().print_all_time_stats(file=out)
        header = [c.strip() for c in out.getvalue().splitlines()[0].strip("|").split("|")]
        seed = ["Metric", "Min [s]", "Mean [s]", "Median [s]", "Max [s]", "Stdev [s]"]
        assert header == [*seed, "Count"]
        assert list(COLUMNS) == header

    def test_one_row_per_key_in_first_use_order_with_counts(self) -> None:
        out = io.StringIO()
        _timer().print_all_time_stats(file=out)
        rows = [line.strip("|").split("|") for line in out.getvalue().splitlines()[2:]]
        assert [(r[0].strip(), r[-1].strip()) for r in rows] == [
            ("Epoch", "3"),
            ("IO", "12"),
            ("Batch", "12"),
        ]

    def test_warmup_adds_a_steady_state_table(self) -> None:
        text = _timer(warmup=1).summary().to_markdown()
        assert "Steady state (first 1 samples of each key skipped)" in text
        steady = text.split("Steady state")[1]
        assert "| Epoch " in steady and steady.count("|     2 |") == 1

    def test_a_key_whose_samples_are_all_warmup_shows_dashes(self) -> None:
        tmr = Timer(warmup=5)
        with tmr.region("once"):
            pass
        steady = tmr.summary().to_markdown().split("Steady state")[1]
        assert "| once   |       - |" in steady

    def test_failed_regions_are_named_under_the_table(self) -> None:
        tmr = Timer()
        with tmr.region("a"):
            pass
        with pytest.raises(ZeroDivisionError), tmr.region("a"):
            _ = 1 / 0
        assert "Failed regions, not in the statistics: a: 1" in tmr.summary().to_markdown()

    def test_the_notes_are_what_the_markdown_prints_under_the_tables(self) -> None:
        tmr = Timer(warmup=1)
        with tmr.region("a"):
            pass
        with pytest.raises(ZeroDivisionError), tmr.region("a"):
            _ = 1 / 0
        summary = tmr.summary()
        assert summary.notes() == ["Failed regions, not in the statistics: a: 1"]
        assert summary.to_markdown().endswith("|\n\nFailed regions, not in the statistics: a: 1\n")

    def test_table_cells_are_the_rows_of_the_markdown_table(self) -> None:
        tmr = Timer(warmup=5)
        with tmr.region("once"):
            pass
        row = tmr.summary().rows[0]
        cells = table_cells([(row.label, row.stats), (row.label, row.steady)])
        assert cells[0] == [
            "once",
            *(format_seconds(t) for t in (row.stats.min, row.stats.mean, row.stats.median)),
            *(format_seconds(t) for t in (row.stats.max, row.stats.stdev)),
            "1",
        ]
        assert cells[1] == ["once", *["-"] * (len(COLUMNS) - 1)]
        lines = tmr.summary().to_markdown().splitlines()
        assert [c.strip() for c in lines[2].strip("|").split("|")] == cells[0]

    @pytest.mark.parametrize(
        ("value", "text"),
        [(0.0, "0.00000"), (1.234567, "1.23457"), (0.001, "0.00100"), (2.5e-7, "2.500e-07")],
    )
    def test_seconds_print_with_five_decimals_or_three_significant_digits(
        self, value: float, text: str
    ) -> None:
        assert format_seconds(value) == text


class TestFiles:
    @pytest.mark.parametrize("suffix", FORMATS)
    def test_each_format_is_written(self, tmp_path: Path, suffix: str) -> None:
        path = tmp_path / f"stats{suffix}"
        _timer().save_all_time_stats(path)
        assert path.read_text(encoding="utf-8")

    def test_json_holds_every_field_units_and_metadata(self, tmp_path: Path) -> None:
        tmr = _timer(warmup=1)
        tmr.save_all_time_stats(tmp_path / "s.json")
        data = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
        assert data["schema"] == "maeltrace.stats/1"
        assert data["units"]["time"] == "s"
        meta = data["metadata"]
        assert meta["run_id"] == "test-run"
        assert meta["pid"] == os.getpid()
        assert {"host", "start_time", "start_time_unix_nano", "versions", "clock"} <= set(meta)
        assert meta["versions"]["maeltrace"] == maeltrace.__version__
        assert meta["versions"]["python"]
        batch = next(r for r in data["regions"] if r["key"] == "batch")
        stats = tmr.get_time_stats("batch", warmup=0)
        assert batch["stats"]["count"] == 12
        assert batch["stats"]["median"] == stats.median
        assert set(batch["stats"]) == {
            "min", "mean", "median", "max", "stdev", "count", "total", "p90", "p95", "p99"
        }  # fmt: skip
        assert batch["steady"]["count"] == 11

    def test_csv_has_a_row_per_key_and_sample_set(self, tmp_path: Path) -> None:
        _timer(warmup=1).save_all_time_stats(tmp_path / "s.csv")
        with (tmp_path / "s.csv").open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(r["key"], r["samples"], r["count"]) for r in rows] == [
            ("epoch", "all", "3"),
            ("epoch", "steady", "2"),
            ("io", "all", "12"),
            ("io", "steady", "11"),
            ("batch", "all", "12"),
            ("batch", "steady", "11"),
        ]
        assert float(rows[0]["mean_s"]) > 0

    def test_an_unknown_suffix_is_refused_before_writing(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"\.txt, \.md, \.csv, \.json"):
            _timer().save_all_time_stats(tmp_path / "stats.xlsx")
        assert list(tmp_path.iterdir()) == []

    def test_overwriting_is_allowed_by_default(self, tmp_path: Path) -> None:
        path = tmp_path / "s.md"
        path.write_text("old", encoding="utf-8")
        _timer().save_all_time_stats(path)
        assert path.read_text(encoding="utf-8").startswith("| Metric")

    def test_exist_ok_false_refuses_an_existing_file_and_leaves_it(self, tmp_path: Path) -> None:
        path = tmp_path / "s.txt"
        path.write_text("old", encoding="utf-8")
        with pytest.raises(FileExistsError):
            _timer().save_all_time_stats(path, exist_ok=False)
        assert path.read_text(encoding="utf-8") == "old"
        assert [p.name for p in tmp_path.iterdir()] == ["s.txt"]

    def test_a_failed_write_leaves_the_old_file_whole_and_no_temp_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "s.txt"
        path.write_text("old", encoding="utf-8")

        def broken_replace(src: str, dst: str) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(os, "replace", broken_replace)
        with pytest.raises(OSError, match="disk full"):
            atomic_write_text(path, "new text")
        assert path.read_text(encoding="utf-8") == "old"
        assert [p.name for p in tmp_path.iterdir()] == ["s.txt"]

    @pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
    def test_files_get_the_permissions_of_the_umask_as_open_would_give(
        self, tmp_path: Path, umask: int, mode: int
    ) -> None:
        old = os.umask(umask)
        try:
            written = atomic_write_bytes(tmp_path / "flame.png", b"\x89PNG")
            replaced = atomic_write_text(tmp_path / "report.html", "<p>")
            atomic_write_text(replaced, "<p>again")
        finally:
            os.umask(old)
        assert written.stat().st_mode & 0o777 == mode
        assert replaced.stat().st_mode & 0o777 == mode
        assert written.read_bytes() == b"\x89PNG" and replaced.read_text() == "<p>again"


def test_the_rank_is_in_the_metadata_and_under_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    summary = _timer().summary()
    assert summary.metadata["rank"]["rank"] == 1
    assert summary.metadata["rank"]["world_size"] == 2
    assert "\nRank 1 of 2 on " in summary.to_markdown()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert "Rank " not in _timer().summary().to_markdown()
