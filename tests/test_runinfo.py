"""Run information from one place: the rank in file names, metadata and span resources agree,
also in a torch.distributed (gloo) group started without ``RANK`` in the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from maeltrace import Timer
from maeltrace._runinfo import (
    FRAMEWORKS,
    imported_frameworks,
    known_rank,
    rank_info,
    rank_suffix,
)
from maeltrace.otel._otlp_json import read_json_lines
from tests.services.jaeger import free_port

LAUNCHER_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NTASKS",
    "HOROVOD_RANK",
    "MAELTRACE_RUN_ID",
    "TORCHELASTIC_RUN_ID",
    "SLURM_JOB_ID",
)


class TestOneSource:
    def test_old_import_paths_give_the_same_objects(self) -> None:
        import maeltrace._metadata as metadata
        import maeltrace._runinfo as runinfo
        import maeltrace.distributed as distributed
        import maeltrace.otel._resource as resource

        assert distributed.rank_info is runinfo.rank_info
        assert distributed.RankInfo is runinfo.RankInfo
        assert resource.rank_from_environment is runinfo.rank_from_environment
        assert metadata.new_run_id is runinfo.new_run_id
        assert metadata.run_id_from_environment is runinfo.run_id_from_environment

    def test_metadata_no_longer_imports_distributed(self) -> None:
        # The cycle distributed <-> metadata is gone: both read maeltrace._runinfo.
        code = (
            "import json, sys, maeltrace._metadata as m, maeltrace._clock as c;"
            "m.run_metadata(c.ClockAnchor.take(), 'r');"
            "print(json.dumps('maeltrace.distributed' in sys.modules))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert json.loads(out.stdout) is False

    def test_a_launcher_rank_names_the_files(self) -> None:
        env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}
        assert rank_suffix(env) == ".rank3"
        assert known_rank(env) == {"rank": 3, "world_size": 4}
        info = rank_info(env)
        assert (info.rank, info.local_rank, info.world_size, info.source) == (
            3,
            0,
            4,
            "environment",
        )

    def test_a_single_process_has_no_suffix_and_no_known_rank(self) -> None:
        assert rank_suffix({}) == ""
        assert known_rank({}) == {}
        assert rank_info({}).source == "single"

    def test_the_device_clocks_and_the_framework_list_agree(self) -> None:
        from maeltrace.devices import CLOCK_NAMES

        assert CLOCK_NAMES[:-1] == FRAMEWORKS
        assert CLOCK_NAMES[-1] == "cpu"
        assert set(imported_frameworks()) <= set(FRAMEWORKS)


# -- the rank bug: a gloo group without RANK in the environment ---------------------------------

REGIONS_PER_RANK = (3, 5)


def _rank_worker(rank: int, world: int, port: int, folder: str) -> None:
    """One rank of a group whose rank and size are only init arguments: records a different
    number of regions per rank, exports, and closes (writing its files) while the group is up."""
    import torch.distributed as dist

    for name in LAUNCHER_VARIABLES:
        os.environ.pop(name, None)
    os.environ["MAELTRACE_EXPORT"] = "1"
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        assert "RANK" not in os.environ and "WORLD_SIZE" not in os.environ
        tmr = Timer(export=True, run_id="shared-run", output_dir=folder, handle_signals=False)
        for _ in range(REGIONS_PER_RANK[rank]):
            with tmr.region("step"):
                pass
        tmr.close()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _resource_ranks(path: Path) -> set[int]:
    ranks = set()
    for data in read_json_lines(path):
        for rs in data.resource_spans:
            for kv in rs.resource.attributes:
                if kv.key == "maeltrace.rank":
                    ranks.add(int(kv.value.int_value))
    return ranks


def test_ranks_of_a_group_without_rank_variables_write_their_own_files(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    world = len(REGIONS_PER_RANK)
    folder = tmp_path / "shared-run"
    torch.multiprocessing.spawn(
        _rank_worker, args=(world, free_port(), str(folder)), nprocs=world, join=True
    )
    assert not (folder / "stats.json").exists()
    for rank, regions in enumerate(REGIONS_PER_RANK):
        stats: dict[str, Any] = json.loads((folder / f"stats.rank{rank}.json").read_text())
        meta_rank = stats["metadata"]["rank"]
        assert (meta_rank["rank"], meta_rank["world_size"], meta_rank["source"]) == (
            rank,
            world,
            "torch.distributed",
        )
        counts = {row["key"]: row["stats"]["count"] for row in stats["regions"]}
        assert counts["step"] == regions
        assert (folder / f"stats.rank{rank}.md").exists()
        assert (folder / f"trace.rank{rank}.json").exists()
        traces = folder / f"traces.rank{rank}.otlp.jsonl"
        assert _resource_ranks(traces) == {rank}


def _one_process_group(_: int, folder: str, port: int) -> None:
    import torch.distributed as dist

    for name in LAUNCHER_VARIABLES:
        os.environ.pop(name, None)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        Path(folder, "suffix.json").write_text(json.dumps([rank_suffix(), known_rank()]))
    finally:
        dist.destroy_process_group()


def test_a_group_of_one_process_keeps_the_plain_file_names(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    torch.multiprocessing.spawn(
        _one_process_group, args=(str(tmp_path), free_port()), nprocs=1, join=True
    )
    suffix, known = json.loads((tmp_path / "suffix.json").read_text())
    assert suffix == ""
    assert known == {"rank": 0, "world_size": 1}
