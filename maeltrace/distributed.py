"""Many processes, one run: rank awareness, a shared run id, statistics gathered across ranks,
and honest timing of collectives.

Nothing here imports a framework at import time: torch and JAX are looked up in
``sys.modules`` (so only a framework the program already uses is asked), and imported inside
the functions that talk.

`gather_stats` exchanges fixed-size summaries, not raw samples: per key and clock one
`KeySummary` (count, exact sum and sum of squares, min, max, and 101 quantiles), whatever the
number of samples. Everything but the pooled percentiles is exact; the pooled percentiles are
merged from the ranks' quantile grids, with the bound stated in `PERCENTILE_NOTE`.
"""

from __future__ import annotations

import bisect
import math
import pickle
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, TypeVar

from maeltrace._runinfo import (
    RankInfo,
    jax_multiprocess,
    rank_info,
    run_id_from_environment,
    torch_distributed,
)
from maeltrace.keys import Key
from maeltrace.stats import NS_PER_S, TimeStats, percentile_ns

if TYPE_CHECKING:
    from maeltrace.timer import Timer

# RankInfo and rank_info live in maeltrace._runinfo; re-exported for old imports.
__all__ = [
    "GRID_POINTS",
    "PERCENTILE_NOTE",
    "GatheredStats",
    "KeyGathered",
    "KeySummary",
    "RankInfo",
    "format_gathered",
    "gather_stats",
    "merge_percentile",
    "percentile_error_bound",
    "rank_info",
    "shared_run_id",
    "summarise",
    "time_collective",
]

R = TypeVar("R")

GRID_POINTS = 101
"""Quantiles per summary: 0, 1, ..., 100 percent."""

PERCENTILE_NOTE = (
    "pooled percentiles are merged from each rank's 101-point quantile grid: the estimate of "
    "the p-th pooled percentile lies between the exact pooled percentiles at p - e and p + e "
    "(clamped to [0, 100]), e = 1 + 100/(n_min - 1) + 100/(N - 1) percentage points, where "
    "n_min is the smallest rank's sample count and N the pooled count (e = 1 for large "
    "counts); count, total, mean, min, max and stdev are exact"
)
"""The accuracy of `KeyGathered.pooled` and where it comes from (see `merge_percentile`)."""


# -- one run id for all ranks ---------------------------------------------------------------


def shared_run_id(local_id: str) -> str:
    """The run id every rank agrees on.

    The launcher's id (``MAELTRACE_RUN_ID``, ``TORCHELASTIC_RUN_ID``, ``SLURM_JOB_ID`` with the
    step) when set, without talking; else, when ``torch.distributed`` is initialised, rank 0's
    ``local_id`` broadcast once (every rank must call this, as for any collective); else
    ``local_id``. Pass the result as ``Timer(run_id=...)``, so that trace ids from
    (run id, epoch) put one epoch of all ranks into one trace.
    """
    found = run_id_from_environment()
    if found:
        return found
    dist = torch_distributed()
    if dist is not None and int(dist.get_world_size()) > 1:
        box: list[object] = [local_id if int(dist.get_rank()) == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return str(box[0])
    return local_id


# -- fixed-size summaries --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeySummary:
    """A fixed-size summary of one key's durations on one rank.

    Attributes:
        count: number of durations.
        total_ns: their exact sum.
        square_sum: the exact sum of their squares (ns², a Python int).
        min_ns: shortest.
        max_ns: longest.
        grid_centi_ns: the 0th, 1st, ..., 100th percentile (linear interpolation, as
            `maeltrace.stats.percentile_ns`) times 100: exact integers, since the interpolation
            weights are multiples of 1/100.
    """

    count: int
    total_ns: int
    square_sum: int
    min_ns: int
    max_ns: int
    grid_centi_ns: tuple[int, ...]

    def quantile_ns(self, percent: int) -> Fraction:
        """The rank's own ``percent``-th percentile (whole percents), exactly."""
        return Fraction(self.grid_centi_ns[percent], 100)

    def stats(self) -> TimeStats:
        """The rank's `TimeStats`, equal to `maeltrace.stats.compute_stats` of its samples."""
        return _stats(
            self.count,
            self.total_ns,
            self.square_sum,
            self.min_ns,
            self.max_ns,
            [self.quantile_ns(p) for p in (50, 90, 95, 99)],
        )


def summarise(durations_ns: Sequence[int]) -> KeySummary:
    """The fixed-size `KeySummary` of integer nanosecond durations.

    Raises:
        ValueError: no durations were given.
    """
    if not durations_ns:
        raise ValueError("cannot summarise zero samples")
    ordered = sorted(durations_ns)
    grid = tuple(int(percentile_ns(ordered, p) * 100) for p in range(GRID_POINTS))
    return KeySummary(
        count=len(ordered),
        total_ns=sum(ordered),
        square_sum=sum(x * x for x in ordered),
        min_ns=ordered[0],
        max_ns=ordered[-1],
        grid_centi_ns=grid,
    )


def _seconds(ns: int | Fraction | float) -> float:
    if isinstance(ns, float):
        return ns / NS_PER_S
    return float(Fraction(ns) / NS_PER_S)


def _stats(
    n: int, total: int, square_sum: int, low: int, high: int, quantiles: Sequence[Fraction | float]
) -> TimeStats:
    if n > 1:
        stdev = math.sqrt(Fraction(n * square_sum - total * total, n * (n - 1))) / NS_PER_S
    else:
        stdev = 0.0
    median, p90, p95, p99 = (_seconds(q) for q in quantiles)
    return TimeStats(
        min=_seconds(low),
        mean=_seconds(Fraction(total, n)),
        median=median,
        max=_seconds(high),
        stdev=stdev,
        count=n,
        total=_seconds(total),
        p90=p90,
        p95=p95,
        p99=p99,
    )


def _cdf(grid: Sequence[int], x: float, *, left: bool) -> float:
    """A rank's CDF, linear between its grid points (right-continuous; its left limit with
    ``left``), as a fraction in [0, 1]."""
    if x < grid[0] or (left and x == grid[0]):
        return 0.0
    if x > grid[-1] or (not left and x == grid[-1]):
        return 1.0
    j = (bisect.bisect_left(grid, x) if left else bisect.bisect_right(grid, x)) - 1
    return (j + (x - grid[j]) / (grid[j + 1] - grid[j])) / (GRID_POINTS - 1)


def merge_percentile(summaries: Sequence[KeySummary], percent: float) -> float:
    """The ``percent``-th percentile (ns) of the pooled samples, from the ranks' grids.

    Each rank's CDF is taken as linear between its 101 quantiles; the pooled CDF is their mean
    weighted by count, and the estimate is where it reaches ``percent``/100 (by bisection over
    the grids' points, then linear interpolation).

    Accuracy: a rank's linear CDF differs from the CDF that its own interpolated percentiles
    invert by at most 1/100 (both pass through the grid points and are monotone between them);
    that CDF differs from its sample's empirical CDF by at most 1/(n_r - 1), and the pooled
    sample's by at most 1/(N - 1). So the estimate lies between the exact pooled percentiles at
    ``percent`` ∓ `percentile_error_bound` percentage points.

    Raises:
        ValueError: no summaries, or ``percent`` outside [0, 100].
    """
    if not summaries:
        raise ValueError("percentile of no summaries")
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must lie in [0, 100], not {percent}")
    total = sum(s.count for s in summaries)
    target = percent / 100
    grids = [s.grid_centi_ns for s in summaries]

    def cdf(x: float, left: bool = False) -> float:
        return (
            sum(s.count * _cdf(g, x, left=left) for s, g in zip(summaries, grids, strict=True))
            / total
        )

    points = sorted({v for g in grids for v in g})
    if cdf(points[0]) >= target:
        return points[0] / 100
    if percent == 100 or cdf(points[-1]) < target:  # rounding of the float sum
        return points[-1] / 100
    # The first point where the pooled CDF reaches the target: cdf is monotone.
    lo, hi = 0, len(points) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cdf(points[mid]) >= target:
            hi = mid
        else:
            lo = mid
    a, b = points[lo], points[hi]
    fa, fb = cdf(a), cdf(b, left=True)
    if fb < target:  # the pooled CDF jumps at b (a rank with repeated grid values)
        return b / 100
    return (a + (b - a) * (target - fa) / (fb - fa)) / 100


def percentile_error_bound(counts: Sequence[int]) -> float:
    """Percentage points within which `merge_percentile` is exact, for the ranks' counts."""
    n_min, n = min(counts), sum(counts)
    e = 1.0
    e += 100 / (n_min - 1) if n_min > 1 else 100.0
    e += 100 / (n - 1) if n > 1 else 100.0
    return min(e, 100.0)


# -- gathering -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyGathered:
    """One key and clock across ranks.

    Attributes:
        key: the key's name.
        clock: ``cpu`` or ``gpu`` (device durations).
        per_rank: each rank's exact `TimeStats` (its median and p90/p95/p99 are read off its
            101-point grid, exact at whole percents), None where the rank has no sample.
        slowest_rank: the rank with the largest mean.
        ratio: largest mean / smallest mean over the ranks with samples.
        pooled: every rank's samples as one: count, total, mean, min, max and stdev exact;
            median and p90/p95/p99 merged (`merge_percentile`), within ``percentile_error``.
        percentile_error: percentage points of the pooled percentiles' bound
            (`percentile_error_bound`).
    """

    key: str
    clock: str
    per_rank: list[TimeStats | None]
    slowest_rank: int
    ratio: float
    pooled: TimeStats
    percentile_error: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "clock": self.clock,
            "per_rank": [None if s is None else s.to_dict() for s in self.per_rank],
            "slowest_rank": self.slowest_rank,
            "ratio": self.ratio,
            "pooled": self.pooled.to_dict(),
            "percentile_error": self.percentile_error,
        }


@dataclass(frozen=True, slots=True)
class GatheredStats:
    """`gather_stats`' result: the same on every rank.

    Attributes:
        ranks: each rank's `RankInfo`, by rank.
        keys: per key (first-use order of the ranks, rank 0 first) and clock.
        percentile_note: how accurate the pooled percentiles are (`PERCENTILE_NOTE`).
        bytes_per_rank: size of one rank's pickled summaries, what it sent.
    """

    ranks: list[RankInfo]
    keys: list[KeyGathered]
    percentile_note: str = PERCENTILE_NOTE
    bytes_per_rank: list[int] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def get(self, key: Key, clock: str = "cpu") -> KeyGathered:
        """The entry of one key and clock.

        Raises:
            KeyError: no rank timed it.
        """
        for entry in self.keys:
            if entry.key == str(key) and entry.clock == clock:
                return entry
        raise KeyError(f"no rank timed {str(key)!r} on the {clock} clock")

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranks": [asdict(r) for r in self.ranks],
            "keys": [k.to_dict() for k in self.keys],
            "percentile_note": self.percentile_note,
            "bytes_per_rank": self.bytes_per_rank,
        }


_Payload = tuple[RankInfo, list[tuple[str, str, KeySummary]]]


def local_summaries(
    timer: Timer, *, warmup: int | None = None
) -> list[tuple[str, str, KeySummary]]:
    """(key, clock, summary) of each key of ``timer`` with samples after the warmup skip."""
    skip = timer.warmup if warmup is None else warmup
    if skip < 0:
        raise ValueError(f"warmup must be non-negative, not {skip}")
    records = timer.records()
    samples = records.samples()
    out: list[tuple[str, str, KeySummary]] = []
    for key_id, key in enumerate(records.keys):
        for clock, by_key in (("cpu", samples.cpu), ("gpu", samples.gpu)):
            durations = by_key.get(key_id, [])[skip:]
            if durations:
                out.append((str(key), clock, summarise(durations)))
    return out


def _all_gather(payload: _Payload, group: Any) -> list[_Payload]:
    dist = torch_distributed()
    if dist is not None:
        gathered: list[Any] = [None] * int(dist.get_world_size(group))
        dist.all_gather_object(gathered, payload, group=group)
        return gathered
    jax = jax_multiprocess()
    if jax is not None:
        return _jax_all_gather(payload)
    return [payload]


def _jax_all_gather(payload: _Payload) -> list[_Payload]:
    import numpy as np
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(payload), dtype=np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    everything = np.asarray(multihost_utils.process_allgather(padded))
    return [
        pickle.loads(everything[i, : int(sizes[i].reshape(-1)[0])].tobytes())
        for i in range(everything.shape[0])
    ]


def combine(payloads: Sequence[_Payload]) -> GatheredStats:
    """Reduces every rank's summaries into a `GatheredStats` (what `gather_stats` returns)."""
    ranks = sorted((p for p in payloads), key=lambda p: p[0].rank)
    order: dict[tuple[str, str], None] = {}
    tables: list[dict[tuple[str, str], KeySummary]] = []
    for _, sent in ranks:
        table = {}
        for key, clock, summary in sent:
            order.setdefault((key, clock), None)
            table[(key, clock)] = summary
        tables.append(table)
    entries = []
    for key, clock in order:
        found = [t.get((key, clock)) for t in tables]
        present = [(i, s) for i, s in enumerate(found) if s is not None]
        means = {i: Fraction(s.total_ns, s.count) for i, s in present}
        slowest = max(means, key=lambda i: means[i])
        fastest = min(means.values())
        ratio = float(means[slowest] / fastest) if fastest > 0 else math.inf
        summaries = [s for _, s in present]
        n = sum(s.count for s in summaries)
        pooled = _stats(
            n,
            sum(s.total_ns for s in summaries),
            sum(s.square_sum for s in summaries),
            min(s.min_ns for s in summaries),
            max(s.max_ns for s in summaries),
            [merge_percentile(summaries, p) for p in (50, 90, 95, 99)],
        )
        entries.append(
            KeyGathered(
                key=key,
                clock=clock,
                per_rank=[None if s is None else s.stats() for s in found],
                slowest_rank=ranks[slowest][0].rank,
                ratio=ratio,
                pooled=pooled,
                percentile_error=percentile_error_bound([s.count for s in summaries]),
            )
        )
    return GatheredStats(ranks=[r for r, _ in ranks], keys=entries)


def gather_stats(timer: Timer, group: Any = None, *, warmup: int | None = None) -> GatheredStats:
    """Every rank's statistics of every key, and across ranks the slowest rank, the max/min
    ratio of means and pooled statistics.

    A collective: with ``torch.distributed`` initialised (gloo, or NCCL with the rank's CUDA
    device set) every rank of ``group`` must call it, and each gets the same result; JAX
    multi-process runs use ``multihost_utils.process_allgather``; otherwise the result holds
    this process alone. Each rank sends one fixed-size `KeySummary` per key and clock (about
    1 KiB pickled), not its samples.

    Accuracy: per-rank statistics equal `Timer.get_time_stats` exactly; pooled count, total,
    mean, min, max and stdev are exact (from exact sums); pooled median and p90/p95/p99 are
    merged from the ranks' grids, within `KeyGathered.percentile_error` percentage points
    (`PERCENTILE_NOTE`, `merge_percentile`).

    Args:
        timer: the rank's timer.
        group: the ``torch.distributed`` process group; default the world.
        warmup: first samples of each key to skip; default the timer's ``warmup``.
    """
    payload: _Payload = (rank_info(), local_summaries(timer, warmup=warmup))
    sent = len(pickle.dumps(payload))
    payloads = _all_gather(payload, group)
    result = combine(payloads)
    sizes = [len(pickle.dumps(p)) for p in payloads] if len(payloads) > 1 else [sent]
    return GatheredStats(ranks=result.ranks, keys=result.keys, bytes_per_rank=sizes)


def format_gathered(result: GatheredStats) -> str:
    """A table: key, clock, each rank's mean, the slowest rank, max/min ratio, pooled mean and
    p95 (ms)."""
    world = result.world_size
    head = ["key", "clock", *(f"r{r.rank} mean" for r in result.ranks)]
    head += ["slowest", "max/min", "pooled mean", "pooled p95"]
    rows = [head]
    for e in result.keys:
        means = [("-" if s is None else f"{s.mean * 1e3:.3f}") for s in e.per_rank]
        rows.append(
            [
                e.key,
                e.clock,
                *means,
                str(e.slowest_rank),
                f"{e.ratio:.2f}",
                f"{e.pooled.mean * 1e3:.3f}",
                f"{e.pooled.p95 * 1e3:.3f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"statistics of {world} rank(s), times in ms"]
    lines += [
        "  ".join(
            c.rjust(w) if i >= 2 else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.append(f"note: {result.percentile_note}")
    return "\n".join(lines)


# -- collectives -----------------------------------------------------------------------------


def _on_cuda(values: Sequence[object]) -> Any:
    """The first CUDA tensor among ``values`` (and lists of them), else None."""
    if "torch" not in sys.modules:
        return None
    import torch

    for value in values:
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, torch.Tensor) and item.is_cuda:
                return item
    return None


def time_collective(
    timer: Timer,
    key: Key,
    fn: Callable[..., R],
    *args: Any,
    wait_key: Key | None = None,
    group: Any = None,
    **kwargs: Any,
) -> R:
    """Calls the collective ``fn(*args, **kwargs)`` in a region of ``key`` and returns its
    result.

    With CUDA tensors among the arguments the region is a gpu region (``gpu=True``): device
    events on the current stream, which the collective's stream joins, so the device time is
    the collective's; otherwise the host time, which for a blocking CPU collective (gloo)
    includes waiting for the other ranks.

    With ``wait_key``, a synchronisation runs first in a region of its own: ``barrier()`` on
    the host, or a one-element ``all_reduce`` on the device for CUDA tensors. A rank that
    arrives early waits there for the slowest, so a slow rank shows as the others' wait time
    and ``key`` holds the transfer alone. The barrier is optional: it adds one synchronisation
    (a latency-bound collective) per call and removes the overlap of the collective with work
    the rank did before it.

    Without ``torch.distributed`` initialised, ``wait_key`` is skipped and ``fn`` is timed.
    """
    cuda = _on_cuda([*args, *kwargs.values()])
    dist = torch_distributed()
    if wait_key is not None and dist is not None:
        with timer.region(wait_key, gpu=cuda is not None):
            if cuda is not None:
                import torch

                dist.all_reduce(torch.zeros(1, device=cuda.device), group=group)
            else:
                dist.barrier(group=group)
    with timer.region(key, gpu=cuda is not None):
        return fn(*args, **kwargs)
