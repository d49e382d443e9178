"""The cost of `maeltrace.distributed.gather_stats` across ranks, against gathering raw samples.

What it measures:
    4 ranks (processes spawned here, torch.distributed with gloo on loopback), each with a Timer
    holding 10 keys x 10,000 regions (``--quick``: 1,000). Per repetition, with a barrier before
    each timed section:

    * ``gather_stats``: read the records, summarise each key (101 quantiles, exact sums),
      ``all_gather_object`` the summaries, and reduce them (per-rank stats, slowest rank, ratio,
      pooled stats with merged percentiles);
    * baseline: read the records, ``all_gather_object`` every key's raw duration lists, and
      compute exact pooled and per-rank statistics (`maeltrace.stats.compute_stats`).

    Rank 0's wall time of each, median over ``--reps`` repetitions (default 5), their ratio, and
    the pickled bytes each rank sends for each. Figures move with the machine and its load; only
    same-run comparisons mean anything.

How to run::

    uv run python benchmarks/gather_stats.py            # 4 ranks x 10 keys x 10,000 samples
    uv run python benchmarks/gather_stats.py --quick    # 1,000 samples per key, 3 reps
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RANKS = 4
KEYS = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rank(rank: int, world: int, port: int, samples: int, reps: int, out: str) -> None:
    import torch.distributed as dist

    from maeltrace import Timer
    from maeltrace.distributed import gather_stats
    from maeltrace.stats import compute_stats

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), MAELTRACE_EXPORT="0")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    tmr = Timer(export=False)
    regions = [tmr.region(f"key{k}") for k in range(KEYS)]
    for _ in range(samples):
        for region in regions:
            with region:
                pass

    def baseline() -> int:
        records = tmr.records()
        cpu = records.samples().cpu
        raw = {str(key): cpu.get(i, []) for i, key in enumerate(records.keys)}
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, raw)
        for key in raw:
            lists = [g[key] for g in gathered]
            compute_stats([x for values in lists for x in values])
            for values in lists:
                compute_stats(values)
        return len(pickle.dumps(raw))

    summary_bytes = 0
    raw_bytes = 0
    figures: dict[str, list[float]] = {"gather_stats": [], "baseline": []}
    for _ in range(reps):
        dist.barrier()
        start = time.perf_counter_ns()
        result = gather_stats(tmr)
        figures["gather_stats"].append((time.perf_counter_ns() - start) / 1e6)
        summary_bytes = result.bytes_per_rank[rank]
        dist.barrier()
        start = time.perf_counter_ns()
        raw_bytes = baseline()
        figures["baseline"].append((time.perf_counter_ns() - start) / 1e6)
    if rank == 0:
        Path(out).write_text(
            json.dumps({"ms": figures, "bytes": [summary_bytes, raw_bytes], "n": samples})
        )
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 samples per key, 3 reps")
    parser.add_argument("--samples", type=int, default=None, help="samples per key and rank")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (median reported)")
    args = parser.parse_args(argv)
    samples = args.samples or (1_000 if args.quick else 10_000)
    reps = args.reps or (3 if args.quick else 5)
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder, "rank0.json"))
        spawn: Any = getattr(mp, "spawn")  # noqa: B009  # untyped in torch's stubs
        spawn(_rank, args=(RANKS, _free_port(), samples, reps, out), nprocs=RANKS, join=True)
        data = json.loads(Path(out).read_text())
    ms = {k: statistics.median(v) for k, v in data["ms"].items()}
    summary_bytes, raw_bytes = data["bytes"]
    print(f"maeltrace gather_stats: {RANKS} ranks x {KEYS} keys x {samples:,} samples per key")
    print(f"  python {sys.version.split()[0]}, load {os.getloadavg()[0]:.2f}, {reps} reps (median)")
    print(f"  {'':34} {'ms (rank 0)':>12} {'bytes sent/rank':>16}")
    print(f"  {'gather_stats (summaries)':34} {ms['gather_stats']:12.1f} {summary_bytes:16,}")
    print(f"  {'baseline (raw samples, exact)':34} {ms['baseline']:12.1f} {raw_bytes:16,}")
    print(
        f"  ratio baseline/gather_stats: time {ms['baseline'] / ms['gather_stats']:.1f}x, "
        f"bytes {raw_bytes / summary_bytes:.0f}x"
    )
    print(f"  all reps ms: {data['ms']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
