"""`maeltrace compare`: the bootstrap verdicts, every kind of source, the table, JSON and exit
statuses, against synthetic samples with known changes, real Timers and a real MLflow store."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maeltrace import Timer, TimeType
from maeltrace.report import Row, Summary
from maeltrace.stats import compute_stats
from maeltrace.tools.benchstore import BENCH_EXPERIMENT
from maeltrace.tools.compare import (
    CompareError,
    Verdict,
    _bootstrap_medians,
    compare_samples,
    compare_summaries,
    load_summaries,
    main,
)

MEDIAN_NS = 1_000_000
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME")


def lognormal(n: int, *, scale: float = 1.0, seed: int, sigma: float = 0.1) -> list[int]:
    """``n`` durations around 1 ms (median ``scale`` ms), as integer ns."""
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.lognormal(0.0, sigma, n) * MEDIAN_NS * scale]


def row(
    samples: Sequence[int], key: str = "batch", *, clock: str = "cpu", compiled: bool = False
) -> Row:
    return Row(key, clock, compute_stats(samples), None, 0, compiled, samples_ns=tuple(samples))


def summary(*rows: Row, warmup: int = 0) -> Summary:
    return Summary(rows=rows, warmup=warmup)


def write_run(folder: Path, stats: Summary, name: str | None = None) -> Path:
    """An app's run folder: stats.json, and app.json naming it if ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    stats.save(folder / "stats.json")
    if name is not None:
        (folder / "app.json").write_text(json.dumps({"name": name, "schema": "x"}))
    return folder


def write_bench(folder: Path, apps: Mapping[str, Summary], failed: Sequence[str] = ()) -> Path:
    """A bench folder with every app of ``apps`` ok, and those of ``failed`` failed."""
    entries = []
    for name, stats in apps.items():
        write_run(folder / "runs" / name, stats, name)
        entries.append({"name": name, "folder": f"runs/{name}", "status": "ok"})
    entries += [{"name": name, "folder": f"runs/{name}", "status": "failed"} for name in failed]
    bench = {"schema": "maeltrace.bench/1", "apps": entries, "id": folder.name}
    (folder / "bench.json").write_text(json.dumps(bench))
    return folder


def pair(tmp_path: Path, base: Summary, cand: Summary) -> tuple[str, str]:
    """Two stats.json files of one app, as the command line's arguments."""
    a = write_run(tmp_path / "base", base, "app")
    b = write_run(tmp_path / "cand", cand, "app")
    return str(a / "stats.json"), str(b / "stats.json")


@dataclass(frozen=True)
class Ran:
    status: int
    out: str
    err: str


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> Ran:
    status = main(argv)
    captured = capsys.readouterr()
    return Ran(status, captured.out, captured.err)


def assert_error(ran: Ran, *fragments: str) -> None:
    """Exit 2, one line on stderr naming the problem, no traceback."""
    assert ran.status == 2
    lines = ran.err.splitlines()
    assert len(lines) == 1, ran.err
    assert lines[0].startswith("maeltrace compare: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in ran.err


# -- the statistics ------------------------------------------------------------------------------


class TestCompareSamples:
    def test_a_ten_percent_slowdown_is_slower_with_an_interval_covering_1_10(self) -> None:
        c = compare_samples(lognormal(200, seed=1), lognormal(200, scale=1.10, seed=2))
        assert c.verdict is Verdict.SLOWER and c.regressed
        assert c.ratio == pytest.approx(1.10, abs=0.03)
        assert c.low is not None and c.high is not None
        assert c.low <= 1.10 <= c.high
        assert c.low > 1.0
        assert (c.baseline_count, c.candidate_count) == (200, 200)

    def test_no_change_is_same(self) -> None:
        c = compare_samples(lognormal(200, seed=1), lognormal(200, seed=2))
        assert c.verdict is Verdict.SAME
        assert not c.regressed
        assert c.low is not None and c.high is not None
        assert c.low <= 1.0 <= c.high

    def test_a_ten_percent_speedup_is_faster(self) -> None:
        c = compare_samples(lognormal(200, seed=1), lognormal(200, scale=1 / 1.10, seed=2))
        assert c.verdict is Verdict.FASTER
        assert c.ratio == pytest.approx(1 / 1.10, abs=0.03)
        assert c.high is not None and c.high < 1.0

    def test_a_three_percent_slowdown_is_not_flagged_at_a_five_percent_threshold(self) -> None:
        base, cand = lognormal(3000, seed=1), lognormal(3000, scale=1.03, seed=2)
        at_5 = compare_samples(base, cand, threshold=0.05)
        assert at_5.verdict is Verdict.SAME
        assert at_5.low is not None and at_5.low > 1.0  # real, but under the threshold
        assert compare_samples(base, cand, threshold=0.01).verdict is Verdict.SLOWER

    def test_a_change_over_the_threshold_with_a_wide_interval_is_unclear(self) -> None:
        c = compare_samples(lognormal(8, seed=1, sigma=0.5), lognormal(8, scale=1.1, seed=2))
        assert c.verdict is Verdict.UNCLEAR
        assert c.low is not None and c.high is not None
        assert c.low < 1.0 < 1.05 < c.high

    @pytest.mark.parametrize(("n_base", "n_cand"), [(2, 100), (100, 2), (0, 5), (1, 1)])
    def test_fewer_than_three_samples_a_side_are_too_few_and_never_flagged(
        self, n_base: int, n_cand: int
    ) -> None:
        c = compare_samples([MEDIAN_NS] * n_base, [MEDIAN_NS * 10] * n_cand)
        assert c.verdict is Verdict.TOO_FEW
        assert not c.regressed
        assert (c.low, c.high) == (None, None)
        assert c.ratio == (10.0 if n_base and n_cand else None)

    def test_the_same_seed_gives_the_same_interval(self) -> None:
        base, cand = lognormal(50, seed=1), lognormal(50, seed=2)
        first = compare_samples(base, cand, seed=7)
        assert compare_samples(base, cand, seed=7) == first
        assert compare_samples(base, cand, seed=8).low != first.low

    def test_the_interval_matches_a_brute_force_bootstrap(self) -> None:
        base, cand = lognormal(201, seed=1), lognormal(200, scale=1.05, seed=2)
        c = compare_samples(base, cand, resamples=4000)
        rng = np.random.default_rng(3)
        medians = [
            np.median(rng.choice(np.asarray(x), size=(4000, len(x)), replace=True), axis=1)
            for x in (cand, base)
        ]
        low, high = np.quantile(medians[0] / medians[1], [0.025, 0.975])
        assert c.low == pytest.approx(low, abs=0.005)
        assert c.high == pytest.approx(high, abs=0.005)

    @pytest.mark.parametrize("n", [3, 4, 5, 6])
    def test_resampled_medians_follow_the_exact_bootstrap_law(self, n: int) -> None:
        values = np.sort(np.random.default_rng(n).integers(1, 1000, size=n)).astype(np.float64)
        exact: dict[float, float] = {}
        for picks in itertools.product(range(n), repeat=n):
            median = float(np.median(values[list(picks)]))
            exact[median] = exact.get(median, 0.0) + n**-n
        draws = _bootstrap_medians(values, 100_000, np.random.default_rng(0))
        found, counts = np.unique(draws, return_counts=True)
        drawn = dict(zip(found.tolist(), (counts / draws.size).tolist(), strict=True))
        assert set(drawn) <= set(exact)
        for median, probability in exact.items():
            assert drawn.get(median, 0.0) == pytest.approx(probability, abs=0.005)

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.integers(1, 10**10), min_size=3, max_size=60),
        st.lists(st.integers(1, 10**10), min_size=3, max_size=60),
        st.integers(0, 2**32),
    )
    def test_the_interval_contains_the_ratio(
        self, base: list[int], cand: list[int], seed: int
    ) -> None:
        c = compare_samples(base, cand, resamples=500, seed=seed)
        assert c.ratio == pytest.approx(float(np.median(cand)) / float(np.median(base)))
        assert c.low is not None and c.high is not None
        assert c.low <= c.ratio <= c.high

    def test_the_interval_narrows_with_more_samples(self) -> None:
        widths = []
        for n in (25, 100, 400, 1600):
            c = compare_samples(lognormal(n, seed=n), lognormal(n, scale=1.1, seed=n + 1))
            assert c.low is not None and c.high is not None and c.ratio is not None
            assert c.low <= c.ratio <= c.high
            widths.append(c.high - c.low)
        assert widths == sorted(widths, reverse=True)
        assert widths[-1] < widths[0] / 4  # about 1/sqrt(n): 8 times narrower

    def test_ten_thousand_samples_a_side_take_well_under_a_second(self) -> None:
        base, cand = lognormal(10_000, seed=1), lognormal(10_000, seed=2)
        started = time.perf_counter()
        compare_samples(base, cand)
        assert time.perf_counter() - started < 0.5

    @pytest.mark.parametrize(
        "setting",
        [
            {"threshold": -0.1},
            {"threshold": float("inf")},
            {"confidence": 1.0},
            {"confidence": 0.0},
            {"resamples": 0},
            {"seed": -1},
        ],
    )
    def test_settings_out_of_range_raise(self, setting: dict[str, float]) -> None:
        with pytest.raises(CompareError):
            compare_samples([1, 2, 3], [1, 2, 3], **setting)  # type: ignore[arg-type]


class TestCompareSummaries:
    def test_a_slow_first_sample_in_the_warmup_does_not_change_the_verdict(self) -> None:
        base, cand = lognormal(200, seed=1), lognormal(200, seed=2)
        slow_start = [MEDIAN_NS * 1000, *cand[1:]]
        plain = compare_summaries({"a": summary(row(base))}, {"a": summary(row(cand[1:]))})
        report = compare_summaries(
            {"a": summary(row(base), warmup=1)}, {"a": summary(row(slow_start), warmup=1)}
        )
        (compared,) = report.rows
        assert compared.comparison.verdict is Verdict.SAME
        assert (compared.comparison.baseline_count, compared.comparison.candidate_count) == (
            199,
            199,
        )
        assert (
            compared.comparison.candidate_median_ns == plain.rows[0].comparison.candidate_median_ns
        )

    def test_include_warmup_keeps_the_warmup_samples(self) -> None:
        base = [MEDIAN_NS] * 6
        cand = [50 * MEDIAN_NS] * 3 + [MEDIAN_NS] * 3
        sides = ({"a": summary(row(base), warmup=3)}, {"a": summary(row(cand), warmup=3)})
        skipped = compare_summaries(*sides).rows[0].comparison
        kept = compare_summaries(*sides, include_warmup=True).rows[0].comparison
        assert (skipped.candidate_count, skipped.ratio, skipped.verdict) == (3, 1.0, Verdict.SAME)
        assert (kept.candidate_count, kept.ratio) == (6, 25.5)

    def test_apps_keys_and_clocks_on_one_side_only_are_listed_not_compared(self) -> None:
        s = lognormal(20, seed=1)
        baseline = {
            "a": summary(row(s), row(s, clock="gpu"), row(s, "forward")),
            "only-base": summary(row(s)),
        }
        candidate = {
            "a": summary(row(s), row(s, "forward", compiled=True), row(s, "forward")),
            "only-cand": summary(row(s)),
        }
        report = compare_summaries(baseline, candidate)
        assert [(r.app, r.key, r.clock, r.first_call) for r in report.rows] == [
            ("a", "batch", "cpu", False),
            ("a", "forward", "cpu", False),
        ]
        assert {(u.side, u.app, u.key, u.clock, u.first_call) for u in report.unmatched} == {
            ("baseline", "a", "batch", "gpu", False),
            ("baseline", "only-base", None, None, False),
            ("candidate", "a", "forward", "cpu", True),
            ("candidate", "only-cand", None, None, False),
        }
        text = report.to_text()
        assert "only in the baseline, not compared: a: Batch (gpu), only-base (whole app)" in text
        assert (
            "only in the candidate, not compared: a: Forward (cpu, first call), only-cand" in text
        )

    def test_one_summary_a_side_is_compared_whatever_the_names(self) -> None:
        s = lognormal(20, seed=1)
        report = compare_summaries({"x": summary(row(s))}, {"y": summary(row(s))})
        assert [r.app for r in report.rows] == ["x -> y"]
        assert report.unmatched == ()

    def test_nothing_in_common_raises(self) -> None:
        s = lognormal(20, seed=1)
        with pytest.raises(CompareError, match="nothing in common"):
            compare_summaries(
                {"a": summary(row(s)), "b": summary(row(s))},
                {"c": summary(row(s)), "d": summary(row(s))},
            )
        with pytest.raises(CompareError, match="no region of a is on both sides"):
            compare_summaries({"a": summary(row(s))}, {"a": summary(row(s, "forward"))})

    def test_a_row_held_twice_raises(self) -> None:
        s = lognormal(20, seed=1)
        with pytest.raises(CompareError, match="twice"):
            compare_summaries({"a": summary(row(s), row(s))}, {"a": summary(row(s))})

    def test_real_timers_compare_key_by_key(self, tmp_path: Path) -> None:
        paths = []
        for name in ("base", "cand"):
            tmr = Timer(warmup=1, run_id=name)
            for _ in range(3):
                with tmr.region(TimeType.EPOCH):
                    for _ in tmr.iterate(range(10)):
                        with tmr.region(TimeType.FORWARD):
                            pass
            (tmp_path / name).mkdir()
            paths.append(tmr.summary().save(tmp_path / name / "stats.json"))
        report = compare_summaries(load_summaries(paths[0]), load_summaries(paths[1]))
        assert {(r.key, r.comparison.candidate_count) for r in report.rows} == {
            ("epoch", 2),
            ("io", 29),
            ("forward", 29),
        }
        assert all(r.comparison.ratio is not None for r in report.rows)


# -- sources -------------------------------------------------------------------------------------


class TestFileSources:
    def test_a_bench_folder_gives_every_app_that_finished(self, tmp_path: Path) -> None:
        apps = {"ap1": summary(row([1, 2, 3])), "ap2": summary(row([4, 5, 6]), warmup=1)}
        bench = write_bench(tmp_path / "bench", apps, failed=["ap3"])
        assert load_summaries(bench) == apps
        assert load_summaries(str(bench / "bench.json")) == apps

    def test_a_run_folder_is_named_by_its_app_json(self, tmp_path: Path) -> None:
        stats = summary(row([1, 2, 3]))
        folder = write_run(tmp_path / "20260101T000000Z-1234abcd", stats, "ap1-unet")
        assert load_summaries(str(folder)) == {"ap1-unet": stats}

    def test_a_stats_json_file_is_named_by_app_json_else_by_its_folder(
        self, tmp_path: Path
    ) -> None:
        stats = summary(row([1, 2, 3]))
        named = write_run(tmp_path / "named", stats, "ap2")
        bare = write_run(tmp_path / "bare", stats)
        assert load_summaries(named / "stats.json") == {"ap2": stats}
        assert load_summaries(str(bare / "stats.json")) == {"bare": stats}
        assert load_summaries(str(bare)) == {"bare": stats}

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            ("{not json", "not a maeltrace summary|not JSON|Expecting"),
            ('{"schema": "other"}', "not a maeltrace summary"),
            ('{"schema": "maeltrace.stats/1", "regions": [{}]}', "malformed"),
        ],
    )
    def test_a_malformed_stats_file_raises_naming_it(
        self, tmp_path: Path, content: str, message: str
    ) -> None:
        path = tmp_path / "stats.json"
        path.write_text(content)
        with pytest.raises(CompareError, match=message) as caught:
            load_summaries(path)
        assert str(path) in str(caught.value)

    @pytest.mark.parametrize(
        ("bench", "message"),
        [
            ({"schema": "other"}, "not a maeltrace bench"),
            ({"schema": "maeltrace.bench/1", "apps": {}}, "apps: an array expected"),
            (
                {"schema": "maeltrace.bench/1", "apps": [{"name": "a"}]},
                r"apps\[0\]\.folder: missing",
            ),
            (
                {"schema": "maeltrace.bench/1", "apps": [{"name": "a", "folder": "a"}]},
                r"apps\[0\]\.status: missing",
            ),
            (
                {
                    "schema": "maeltrace.bench/1",
                    "apps": [{"name": "a", "folder": "a", "status": "timeout"}],
                },
                "no app of the bench finished",
            ),
            (
                {
                    "schema": "maeltrace.bench/1",
                    "apps": [{"name": "a", "folder": "missing", "status": "ok"}],
                },
                r"missing/stats\.json: missing",
            ),
        ],
    )
    def test_a_malformed_bench_raises(
        self, tmp_path: Path, bench: dict[str, object], message: str
    ) -> None:
        (tmp_path / "bench.json").write_text(json.dumps(bench))
        with pytest.raises(CompareError, match=message):
            load_summaries(tmp_path)

    def test_a_folder_without_stats_or_bench_raises(self, tmp_path: Path) -> None:
        with pytest.raises(CompareError, match="neither a bench folder"):
            load_summaries(str(tmp_path))

    def test_a_missing_path_raises_without_touching_mlflow(self, tmp_path: Path) -> None:
        with pytest.raises(CompareError, match="no such file or folder"):
            load_summaries(str(tmp_path / "missing" / "stats.json"))


# -- MLflow --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    """A SQLite MLflow store laid out as ``maeltrace bench`` logs: two benches."""

    root: Path
    uri: str
    base_parent: str
    cand_parent: str
    cand_children: dict[str, str]
    loose_run: str
    empty_run: str


def log_bench(
    client: Any, experiment_id: str, bench: str, apps: Mapping[str, Summary], folder: Path
) -> tuple[str, dict[str, str]]:
    """Logs a bench as ``maeltrace bench`` does: a parent run, a child run per app with its
    stats.json, and a child of a failed app without one; returns the parent's and children's
    ids."""
    parent = client.create_run(experiment_id, run_name=bench, tags={"maeltrace.bench": bench})
    children = {}
    for name, stats in apps.items():
        child = client.create_run(
            experiment_id,
            run_name=f"{bench}-{name}",
            tags={"mlflow.parentRunId": parent.info.run_id, "maeltrace.app": name},
        )
        (folder / bench / name).mkdir(parents=True)
        stats.save(folder / bench / name / "stats.json")
        client.log_artifact(
            child.info.run_id, str(folder / bench / name / "stats.json"), "maeltrace"
        )
        client.set_terminated(child.info.run_id)
        children[name] = child.info.run_id
    # An app that failed: a child run without stats.
    failed = client.create_run(
        experiment_id,
        run_name=f"{bench}-failed",
        tags={"mlflow.parentRunId": parent.info.run_id, "maeltrace.app": "failed"},
    )
    client.set_terminated(failed.info.run_id, "FAILED")
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id, children


BASE_APPS = {
    "ap1": summary(row(lognormal(200, seed=1)), row(lognormal(200, seed=3), "forward")),
    "ap2": summary(row(lognormal(200, seed=5))),
}
CAND_APPS = {
    "ap1": summary(row(lognormal(200, seed=2)), row(lognormal(200, seed=4), "forward")),
    "ap2": summary(row(lognormal(200, scale=1.1, seed=6))),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow-store")
    (root / "maeltrace-out").mkdir()
    uri = f"sqlite:///{root / 'maeltrace-out' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(
        BENCH_EXPERIMENT, artifact_location=(root / "mlartifacts").as_uri()
    )
    base_parent, _ = log_bench(client, experiment_id, "bench-1", BASE_APPS, root / "files")
    cand_parent, cand_children = log_bench(
        client, experiment_id, "bench-2", CAND_APPS, root / "files"
    )
    loose = client.create_run(experiment_id, run_name="by-hand")
    BASE_APPS["ap2"].save(root / "files" / "stats.json")
    client.log_artifact(loose.info.run_id, str(root / "files" / "stats.json"), "maeltrace")
    empty = client.create_run(experiment_id, run_name="empty")
    return Store(
        root, uri, base_parent, cand_parent, cand_children, loose.info.run_id, empty.info.run_id
    )


@pytest.fixture
def no_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.slow
@pytest.mark.usefixtures("no_mlflow_env")
@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SADeprecationWarning")
class TestMlflowSources:
    def test_a_parent_run_gives_its_children_by_app_tag(self, store: Store) -> None:
        assert load_summaries(store.cand_parent, store.uri) == CAND_APPS

    def test_a_child_run_gives_its_one_summary(self, store: Store) -> None:
        child = store.cand_children["ap2"]
        assert load_summaries(child, store.uri) == {"ap2": CAND_APPS["ap2"]}

    def test_any_run_with_the_artifact_is_named_by_its_run_name(self, store: Store) -> None:
        assert load_summaries(store.loose_run, store.uri) == {"by-hand": BASE_APPS["ap2"]}

    def test_two_bench_runs_compare_app_by_app(
        self, store: Store, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ran = run_main(capsys, store.base_parent, store.cand_parent, "--tracking-uri", store.uri)
        assert ran.status == 1
        assert ran.err == ""
        slower = [line for line in ran.out.splitlines() if line.startswith("!!")]
        assert len(slower) == 1 and "ap2" in slower[0] and "SLOWER" in slower[0]
        assert ran.out.splitlines()[-1].startswith("REGRESSION: 1 of 3 rows slower")

    def test_a_child_run_compares_with_a_run_folder(
        self, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        folder = write_run(tmp_path / "run", BASE_APPS["ap2"], "ap2")
        ran = run_main(capsys, str(folder), store.cand_children["ap2"], "--tracking-uri", store.uri)
        assert ran.status == 1

    def test_the_default_store_is_the_bench_store_of_the_working_folder(
        self, store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("MAELTRACE_OUTPUT_DIR")  # ./maeltrace-out/mlflow.db
        monkeypatch.chdir(store.root)
        assert load_summaries(store.cand_parent) == CAND_APPS

    def test_mlflow_tracking_uri_names_the_store(
        self, store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
        assert load_summaries(store.cand_parent) == CAND_APPS

    def test_an_unknown_run_id_is_an_error(
        self, store: Store, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ran = run_main(capsys, "0" * 32, store.cand_parent, "--tracking-uri", store.uri)
        assert_error(ran, f"no MLflow run {'0' * 32}", store.uri)

    def test_a_name_that_is_neither_a_path_nor_a_run_is_an_error(
        self, store: Store, capsys: pytest.CaptureFixture[str]
    ) -> None:
        ran = run_main(capsys, "baseline-out", store.cand_parent, "--tracking-uri", store.uri)
        assert_error(ran, "baseline-out: no such file or folder, nor an MLflow run")

    def test_a_run_without_stats_or_children_is_an_error(self, store: Store) -> None:
        with pytest.raises(CompareError, match=r"no maeltrace/stats\.json artifact"):
            load_summaries(store.empty_run, store.uri)

    def test_a_missing_default_store_is_an_error_and_is_not_created(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.delenv("MAELTRACE_OUTPUT_DIR")
        monkeypatch.chdir(tmp_path)
        ran = run_main(capsys, "a" * 32, "b" * 32)
        assert_error(ran, f"there is no store at {tmp_path.resolve()}/maeltrace-out/mlflow.db")
        assert list(tmp_path.iterdir()) == []


# -- the command line ----------------------------------------------------------------------------


class TestMain:
    def test_a_ten_percent_slowdown_exits_1_with_the_row_marked(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        base = summary(row(lognormal(200, seed=1)), row(lognormal(200, seed=3), clock="gpu"))
        cand = summary(
            row(lognormal(200, scale=1.1, seed=2)), row(lognormal(200, seed=4), clock="gpu")
        )
        ran = run_main(capsys, *pair(tmp_path, base, cand))
        assert ran.status == 1
        lines = ran.out.splitlines()
        header = lines[0].split()
        assert header == [
            "app",
            "region",
            "clock",
            "baseline",
            "candidate",
            "ratio",
            "95%",
            "CI",
            "verdict",
        ]
        (flagged,) = (line for line in lines if line.startswith("!!"))
        assert flagged.split()[1:4] == ["app", "Batch", "cpu"]
        assert "SLOWER" in flagged and "(+9.7%)" in flagged
        assert "same" in next(line for line in lines if " gpu " in line)
        assert lines[-1] == (
            "REGRESSION: 1 of 2 rows slower by more than 5% (95% confidence); 1 same"
        )

    def test_no_change_exits_0(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        base, cand = summary(row(lognormal(200, seed=1))), summary(row(lognormal(200, seed=2)))
        ran = run_main(capsys, *pair(tmp_path, base, cand))
        assert ran.status == 0
        assert ran.out.splitlines()[-1].startswith("no regression: 0 of 1 rows slower")

    def test_a_speedup_exits_0_as_faster(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        base = summary(row(lognormal(200, seed=1)))
        cand = summary(row(lognormal(200, scale=1 / 1.1, seed=2)))
        ran = run_main(capsys, *pair(tmp_path, base, cand))
        assert ran.status == 0
        assert ran.out.splitlines()[-1].endswith("; 1 faster")

    @pytest.mark.parametrize(
        ("threshold", "status"), [("5%", 0), ("0.05", 0), ("3%", 1), ("0.03", 1)]
    )
    def test_the_threshold_is_a_fraction_or_a_percentage(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], threshold: str, status: int
    ) -> None:
        base = summary(row(lognormal(3000, seed=1)))
        cand = summary(row(lognormal(3000, scale=1.04, seed=2)))
        ran = run_main(capsys, *pair(tmp_path, base, cand), "--threshold", threshold)
        assert ran.status == status

    def test_json_to_a_file_holds_every_row(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        base = summary(row(lognormal(50, seed=1)), row([1, 2], "io"))
        cand = summary(row(lognormal(50, scale=1.2, seed=2)), row([1, 2], "io"))
        a, b = pair(tmp_path, base, cand)
        ran = run_main(capsys, a, b, "--json", str(tmp_path / "out.json"), "--seed", "3")
        assert ran.status == 1 and "SLOWER" in ran.out
        doc = json.loads((tmp_path / "out.json").read_text())
        assert (doc["schema"], doc["baseline"], doc["seed"], doc["regressed"]) == (
            "maeltrace.compare/1",
            a,
            3,
            True,
        )
        assert [(r["key"], r["verdict"]) for r in doc["rows"]] == [
            ("batch", "slower"),
            ("io", "too few samples"),
        ]
        assert doc["rows"][1]["ci_low"] is None
        assert doc["rows"][0]["ci_low"] <= doc["rows"][0]["ratio"] <= doc["rows"][0]["ci_high"]

    def test_json_to_stdout_replaces_the_table(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        base, cand = summary(row(lognormal(50, seed=1))), summary(row(lognormal(50, seed=2)))
        ran = run_main(capsys, *pair(tmp_path, base, cand), "--json", "-")
        assert ran.status == 0
        assert json.loads(ran.out)["rows"][0]["app"] == "app"

    def test_include_warmup_is_an_option(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        base = summary(row([MEDIAN_NS] * 6), warmup=3)
        cand = summary(row([50 * MEDIAN_NS] * 3 + [MEDIAN_NS] * 3), warmup=3)
        args = (*pair(tmp_path, base, cand), "--json", "-")
        assert json.loads(run_main(capsys, *args).out)["rows"][0]["candidate_count"] == 3
        with_warmup = json.loads(run_main(capsys, *args, "--include-warmup").out)
        assert with_warmup["rows"][0]["candidate_count"] == 6

    def test_the_command_compares_two_bench_folders(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        base = write_bench(tmp_path / "b1", BASE_APPS)
        cand = write_bench(tmp_path / "b2", {"ap2": CAND_APPS["ap2"], "ap3": CAND_APPS["ap1"]})
        ran = run_main(capsys, str(base), str(cand))
        assert ran.status == 1
        assert "only in the baseline, not compared: ap1 (whole app)" in ran.out
        assert "only in the candidate, not compared: ap3 (whole app)" in ran.out

    @pytest.mark.parametrize(
        ("setup", "fragment"),
        [
            ("missing", "no such file or folder"),
            ("not-json", "stats.json"),
            ("no-common", "nothing in common"),
            ("unwritable-json", "cannot write"),
        ],
    )
    def test_bad_input_exits_2_with_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, fragment: str
    ) -> None:
        good = write_run(tmp_path / "good", summary(row([1, 2, 3])), "app")
        args = [str(good), str(good)]
        if setup == "missing":
            args[1] = str(tmp_path / "nowhere" / "stats.json")
        elif setup == "not-json":
            bad = tmp_path / "bad" / "stats.json"
            bad.parent.mkdir()
            bad.write_text("{")
            args[1] = str(bad)
        elif setup == "no-common":
            other = write_run(tmp_path / "other", summary(row([1, 2, 3], "io")), "app")
            args[1] = str(other)
        else:
            args += ["--json", str(tmp_path / "no-folder" / "out.json")]
        assert_error(run_main(capsys, *args), fragment)

    @pytest.mark.parametrize(
        "option",
        [
            ["--threshold", "abc"],
            ["--threshold", "-1%"],
            ["--confidence", "100%"],
            ["--resamples", "0"],
        ],
    )
    def test_bad_options_exit_2(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str]
    ) -> None:
        good = write_run(tmp_path / "good", summary(row([1, 2, 3])), "app")
        ran = run_main(capsys, str(good), str(good), *option)
        assert ran.status == 2
        assert f"maeltrace compare: error: argument {option[0]}" in ran.err

    def test_help_exits_0(self, capsys: pytest.CaptureFixture[str]) -> None:
        ran = run_main(capsys, "--help")
        assert ran.status == 0
        assert "usage: maeltrace compare" in ran.out


def test_importing_the_module_loads_neither_numpy_nor_mlflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys, maeltrace.tools.compare; "
        "print(sorted(m for m in ('numpy', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
