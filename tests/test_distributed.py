"""Many ranks, one run: real torch.distributed (gloo) process groups of 2 and 4 processes on this
machine, one rank slow on purpose; launcher environments; spans of two ranks in one Jaeger
trace per epoch."""

from __future__ import annotations

import bisect
import json
import os
import random
import subprocess
import sys
import textwrap
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maeltrace import Timer
from maeltrace.distributed import (
    GRID_POINTS,
    format_gathered,
    gather_stats,
    merge_percentile,
    percentile_error_bound,
    rank_info,
    shared_run_id,
    summarise,
)
from maeltrace.stats import compute_stats, percentile_ns
from tests.services.jaeger import JaegerService, free_port

torch = pytest.importorskip("torch", reason="the torch extra is not installed")

KEYS = ("fast", "slow", "mixed")
SAMPLES = 40
SLOW_RANK = 1
COLLECTIVES = 4
SLOW_WAIT_S = 0.03
RUN_ID_VARIABLES = ("MAELTRACE_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: records regions (rank SLOW_RANK sleeps in ``slow``), times collectives, and
    writes what it saw; rank 0 also writes gather_stats' result."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), MAELTRACE_EXPORT="0")
    for name in RUN_ID_VARIABLES:
        os.environ.pop(name, None)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        info = rank_info()
        run_id = shared_run_id(f"local-{rank}-{uuid.uuid4().hex[:6]}")
        tmr = Timer(export=False, run_id=run_id)
        rng = random.Random(rank)
        for i in range(SAMPLES):
            with tmr.region("fast"):
                pass
            with tmr.region("slow"):
                time.sleep(0.002 if rank == SLOW_RANK else 0.0002)
            with tmr.region("mixed"):
                time.sleep(rng.uniform(0, 0.0005) * (1 + i % 3))
        value = torch.ones(4)
        for _ in range(COLLECTIVES):
            if rank == SLOW_RANK:
                time.sleep(SLOW_WAIT_S)
            from maeltrace.distributed import time_collective

            time_collective(tmr, "all_reduce", dist.all_reduce, value, wait_key="wait")
        result = gather_stats(tmr)
        records = tmr.records()
        cpu = records.samples().cpu
        raw_ns = {str(key): cpu.get(i, []) for i, key in enumerate(records.keys)}
        mine = {
            "rank_info": [info.rank, info.world_size, info.source],
            "run_id": run_id,
            "timer_run_id": tmr.run_id,
            "raw_ns": raw_ns,
            "gathered": result.to_dict(),
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(mine))
        if rank == 0:
            Path(out, "table.txt").write_text(format_gathered(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_gather_stats_names_the_slow_rank_and_pools_exactly(world: int, tmp_path: Path) -> None:
    torch.multiprocessing.spawn(
        _worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    gathered = ranks[0]["gathered"]
    # Every rank got the same result, and knows its place from torch.distributed.
    assert all(r["gathered"]["keys"] == gathered["keys"] for r in ranks)
    assert [r["rank_info"] for r in ranks] == [
        [i, world, "torch.distributed"] for i in range(world)
    ]
    # One run id on every rank: rank 0's, broadcast once.
    assert {r["run_id"] for r in ranks} == {ranks[0]["run_id"]}
    assert ranks[0]["run_id"].startswith("local-0-")
    by_key = {(k["key"], k["clock"]): k for k in gathered["keys"]}
    assert by_key["slow", "cpu"]["slowest_rank"] == SLOW_RANK
    assert by_key["slow", "cpu"]["ratio"] > 3
    for key in (*KEYS, "all_reduce", "wait"):
        entry = by_key[key, "cpu"]
        samples = [x for r in ranks for x in r["raw_ns"][key]]
        pooled = entry["pooled"]
        assert pooled["count"] == len(samples) == sum(len(r["raw_ns"][key]) for r in ranks)
        exact = compute_stats(samples)
        for name in ("count", "total", "mean", "min", "max"):
            assert pooled[name] == getattr(exact, name), (key, name)
        assert pooled["stdev"] == pytest.approx(exact.stdev, rel=1e-12)
        # Each rank's own statistics are exact (its grid holds its whole percents).
        for r, stats in zip(ranks, entry["per_rank"], strict=True):
            assert stats == compute_stats(r["raw_ns"][key]).to_dict()
        # Pooled percentiles lie within the stated bound.
        ordered = sorted(samples)
        bound = entry["percentile_error"]
        assert bound == percentile_error_bound([len(r["raw_ns"][key]) for r in ranks])
        for p, name in ((50, "median"), (90, "p90"), (95, "p95"), (99, "p99")):
            low = float(percentile_ns(ordered, max(0, p - bound))) / 1e9
            high = float(percentile_ns(ordered, min(100, p + bound))) / 1e9
            assert low - 1e-12 <= pooled[name] <= high + 1e-12, (key, name)
    # The slow rank arrives late at every barrier: the others wait, it does not.
    waits = [s["mean"] for s in by_key["wait", "cpu"]["per_rank"]]
    for r in range(world):
        if r != SLOW_RANK:
            assert waits[r] > waits[SLOW_RANK] + SLOW_WAIT_S / 2
    assert by_key["wait", "cpu"]["slowest_rank"] != SLOW_RANK
    table = (tmp_path / "table.txt").read_text()
    assert "slowest" in table and "pooled p95" in table and "note:" in table


def test_without_a_process_group_gather_stats_holds_this_process() -> None:
    tmr = Timer(export=False)
    for _ in range(5):
        with tmr.region("k"):
            pass
    result = gather_stats(tmr)
    assert result.world_size == 1 and result.ranks[0].rank == 0
    entry = result.get("k")
    assert entry.slowest_rank == 0 and entry.ratio == 1.0
    assert entry.per_rank == [tmr.get_time_stats("k")]
    assert entry.pooled.count == 5 and entry.pooled.mean == tmr.get_time_stats("k").mean
    assert "pooled mean" in format_gathered(result)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=300),
        min_size=1,
        max_size=5,
    ),
    st.integers(min_value=0, max_value=100),
)
def test_merged_percentiles_lie_within_the_stated_bound(data: list[list[int]], p: int) -> None:
    summaries = [summarise(d) for d in data]
    for d, s in zip(data, summaries, strict=True):
        assert len(s.grid_centi_ns) == GRID_POINTS
        assert s.stats() == compute_stats(d)
    ordered = sorted(x for d in data for x in d)
    bound = percentile_error_bound([len(d) for d in data])
    estimate = merge_percentile(summaries, p)
    low = percentile_ns(ordered, Fraction(max(0, p - bound)))
    high = percentile_ns(ordered, Fraction(min(100, p + bound)))
    assert float(low) - 1e-6 <= estimate <= float(high) + 1e-6


def test_with_many_samples_the_merged_percentiles_are_within_one_point() -> None:
    rng = random.Random(7)
    data = [
        [int(rng.lognormvariate(12 + r / 2, 0.3 + r / 5)) for _ in range(5000)] for r in range(4)
    ]
    summaries = [summarise(d) for d in data]
    ordered = sorted(x for d in data for x in d)
    assert percentile_error_bound([5000] * 4) < 1.03
    for p in (1, 10, 50, 90, 95, 99):
        rank = bisect.bisect_left(ordered, merge_percentile(summaries, p)) / len(ordered) * 100
        assert abs(rank - p) <= 1.03


# -- run ids and ranks from launcher environments, no talking --------------------------------

_PROBE = (
    "import json, sys; from maeltrace.distributed import rank_info, shared_run_id;"
    "i = rank_info(); print(json.dumps([shared_run_id('local'), i.rank, i.local_rank,"
    " i.world_size, i.source, 'torch' in sys.modules]))"
)


def _probe(env: dict[str, str]) -> list[Any]:
    clean = {k: v for k, v in os.environ.items() if k not in RUN_ID_VARIABLES}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_LOCALID"):
        clean.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: list[Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    ("launcher", "expected"),
    [
        (
            lambda r: {
                "SLURM_JOB_ID": "4242",
                "SLURM_STEP_ID": "3",
                "SLURM_PROCID": str(r),
                "SLURM_LOCALID": str(r % 2),
                "SLURM_NTASKS": "4",
            },
            "slurm-4242.3",
        ),
        (
            lambda r: {
                "TORCHELASTIC_RUN_ID": "elastic-7",
                "RANK": str(r),
                "LOCAL_RANK": str(r % 2),
                "WORLD_SIZE": "4",
            },
            "elastic-7",
        ),
        (lambda r: {"MAELTRACE_RUN_ID": "mine", "RANK": str(r), "WORLD_SIZE": "4"}, "mine"),
    ],
    ids=["slurm", "torchrun", "maeltrace"],
)
def test_launcher_environments_give_every_rank_the_same_run_id(
    launcher: Any, expected: str
) -> None:
    seen = [_probe(launcher(r)) for r in range(4)]
    assert [s[0] for s in seen] == [expected] * 4
    assert [s[1] for s in seen] == [0, 1, 2, 3]
    assert all(s[3] == 4 and s[4] == "environment" for s in seen)
    assert not any(s[5] for s in seen)  # imports no torch


def test_a_single_process_keeps_its_own_run_id(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in RUN_ID_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert shared_run_id("abc") == "abc"
    monkeypatch.setenv("SLURM_JOB_ID", "9")
    assert shared_run_id("abc") == "slurm-9"


# -- spans of all ranks in one trace per epoch -----------------------------------------------

_EXPORTER = textwrap.dedent(
    """
    import sys
    from maeltrace import Timer, TimeType
    with Timer(export=True, endpoint=sys.argv[1], output_dir=sys.argv[2]) as tmr:
        for epoch in range(2):
            with tmr.region(TimeType.EPOCH):
                for _ in range(3):
                    with tmr.region("batch"):
                        pass
    """
)


def test_the_ranks_spans_of_one_epoch_land_in_one_jaeger_trace(
    jaeger: JaegerService, tmp_path: Path
) -> None:
    service = f"maeltrace-ranks-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k not in RUN_ID_VARIABLES}
    env.update(OTEL_SERVICE_NAME=service, MAELTRACE_RUN_ID=f"run-{uuid.uuid4().hex[:8]}")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _EXPORTER, jaeger.otlp_http_endpoint, str(tmp_path / f"r{r}")],
            env={**env, "RANK": str(r), "WORLD_SIZE": "2"},
        )
        for r in range(2)
    ]
    assert [c.wait(timeout=60) for c in children] == [0, 0]
    # Per rank: 2 epochs of 1 + 3 spans, and a run span.
    traces = jaeger.wait_for_spans(service, 2 * (2 * 4 + 1))
    epochs = [t for t in traces if any(s["operationName"] == "epoch" for s in t["spans"])]
    assert len(epochs) == 2  # one trace per epoch, not per rank
    for trace in epochs:
        assert sum(s["operationName"] == "epoch" for s in trace["spans"]) == 2
        assert len(trace["spans"]) == 8
        assert len(trace["processes"]) == 2
        ranks = {
            t["value"]
            for p in trace["processes"].values()
            for t in p["tags"]
            if t["key"] == "maeltrace.rank"
        }
        assert ranks == {0, 1}
