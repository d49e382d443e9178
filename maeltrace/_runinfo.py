"""Who and where this process is: run id, rank, host, framework versions, the framework list."""

from __future__ import annotations

import datetime as dt
import platform
import socket
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from maeltrace._version import __version__
from maeltrace.environment import (
    HOROVOD_LOCAL_RANK,
    HOROVOD_RANK,
    HOROVOD_SIZE,
    LOCAL_RANK,
    MAELTRACE_RUN_ID,
    MPI_LOCALRANKID,
    OMPI_COMM_WORLD_LOCAL_RANK,
    OMPI_COMM_WORLD_RANK,
    OMPI_COMM_WORLD_SIZE,
    PMI_RANK,
    PMI_SIZE,
    RANK,
    SLURM_JOB_ID,
    SLURM_LOCALID,
    SLURM_NTASKS,
    SLURM_PROCID,
    SLURM_STEP_ID,
    TORCHELASTIC_RUN_ID,
    WORLD_SIZE,
    env_str,
)

__all__ = [
    "FRAMEWORKS",
    "VERSIONED_MODULES",
    "RankInfo",
    "framework_versions",
    "hostname",
    "imported_frameworks",
    "jax_multiprocess",
    "known_rank",
    "new_run_id",
    "rank_from_environment",
    "rank_info",
    "rank_suffix",
    "run_id_from_environment",
    "torch_distributed",
    "versions",
]

FRAMEWORKS = ("torch", "jax", "tensorflow")
"""The frameworks maeltrace knows, in the order the device clock is chosen among them (see
`maeltrace.devices.registry`); device clocks and span resources use this one list."""

VERSIONED_MODULES = (*FRAMEWORKS, "keras", "jaxlib", "numpy")
"""Modules whose versions go into the stats files' metadata when they are imported."""

_RANK_VARIABLES = (
    # (rank, local rank, world size) of each launcher, first match wins.
    (RANK, LOCAL_RANK, WORLD_SIZE),  # torchrun
    (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_LOCAL_RANK, OMPI_COMM_WORLD_SIZE),  # Open MPI
    (PMI_RANK, MPI_LOCALRANKID, PMI_SIZE),  # MPICH, Intel MPI
    (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS),  # srun
    (HOROVOD_RANK, HOROVOD_LOCAL_RANK, HOROVOD_SIZE),
)


# -- run id ----------------------------------------------------------------------------------


def run_id_from_environment() -> str | None:
    """The run id that every process of one run agrees on without talking, if there is one.

    In order: ``MAELTRACE_RUN_ID``, torchrun's ``TORCHELASTIC_RUN_ID``, Slurm's
    ``SLURM_JOB_ID`` (with ``.SLURM_STEP_ID`` when set).
    """
    named = env_str(MAELTRACE_RUN_ID) or env_str(TORCHELASTIC_RUN_ID)
    if named:
        return named
    job = env_str(SLURM_JOB_ID)
    if job:
        step = env_str(SLURM_STEP_ID)
        return f"slurm-{job}" + (f".{step}" if step else "")
    return None


def new_run_id() -> str:
    """A fresh run id: UTC time to the second and 8 random hex digits, sortable by start."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


# -- host and versions -----------------------------------------------------------------------


def hostname() -> str:
    """The node this process runs on."""
    return socket.gethostname()


def imported_frameworks() -> list[str]:
    """The names in `FRAMEWORKS` that the program has imported (this imports none)."""
    return [name for name in FRAMEWORKS if name in sys.modules]


def framework_versions(names: tuple[str, ...] = FRAMEWORKS) -> dict[str, str]:
    """The versions of the modules in ``names`` that are imported; imports none."""
    found = {}
    for name in names:
        version = getattr(sys.modules.get(name), "__version__", None)
        if isinstance(version, str):
            found[name] = version
    return found


def versions() -> dict[str, str]:
    """maeltrace's, Python's and every imported `VERSIONED_MODULES` module's version."""
    return {
        "maeltrace": __version__,
        "python": platform.python_version(),
        **framework_versions(VERSIONED_MODULES),
    }


# -- rank ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RankInfo:
    """One process's place in the run.

    Attributes:
        rank: global rank, 0 for a single process.
        local_rank: rank on this node.
        world_size: number of processes of the run.
        node: the host name.
        source: where it came from: ``torch.distributed``, ``jax``, ``environment`` (the
            launcher's variables) or ``single``.
    """

    rank: int
    local_rank: int
    world_size: int
    node: str
    source: str


def rank_from_environment(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Rank, local rank and world size from the launcher's environment, where it sets them."""
    for rank, local, size in _RANK_VARIABLES:
        # Not env_int: a value that is no whole number means this launcher did not set it,
        # which is no error (another tool may use the name).
        values = [env_str(name, "", environ=environ) for name in (rank, local, size)]
        if values[0].isdigit():
            found = {"rank": int(values[0])}
            if values[1].isdigit():
                found["local_rank"] = int(values[1])
            if values[2].isdigit():
                found["world_size"] = int(values[2])
            return found
    return {}


def torch_distributed() -> Any:
    """``torch.distributed`` when torch is already imported and a process group is up, else None.

    Imports ``torch.distributed`` only when the program has imported torch itself.
    """
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist
    return None


def jax_multiprocess() -> Any:
    """The ``jax`` module when it is already imported and runs more than one process, else None."""
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    try:
        if int(jax.process_count()) > 1:
            return jax
    except Exception:  # a JAX without a backend: not multi-process
        return None
    return None


def _lookup(environ: Mapping[str, str] | None) -> tuple[dict[str, int], str]:
    """What is known of rank, local rank and world size, and where it came from."""
    from_env = rank_from_environment(environ)
    local = {"local_rank": from_env["local_rank"]} if "local_rank" in from_env else {}
    dist = torch_distributed()
    if dist is not None:
        found = {"rank": int(dist.get_rank()), **local, "world_size": int(dist.get_world_size())}
        return found, "torch.distributed"
    jax = jax_multiprocess()
    if jax is not None:
        found = {"rank": int(jax.process_index()), **local, "world_size": int(jax.process_count())}
        return found, "jax"
    if from_env:
        return from_env, "environment"
    return {}, "single"


def known_rank(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Rank, local rank and world size as far as they are known, from the sources of `rank_info`.

    Empty for a single process; a value no source gives is left out rather than guessed.
    """
    return _lookup(environ)[0]


def rank_info(environ: Mapping[str, str] | None = None) -> RankInfo:
    """This process's rank, local rank, world size and node.

    In order: ``torch.distributed`` when torch is imported and its process group initialised;
    JAX's process index and count when JAX is imported and runs several processes; the
    launcher's environment (torchrun, Open MPI, MPICH/Intel MPI, Slurm, Horovod); else a
    single process. Imports no framework. The local rank comes from the launcher's
    environment (0 where it sets none).
    """
    found, source = _lookup(environ)
    rank = found.get("rank", 0)
    return RankInfo(
        rank,
        found.get("local_rank", 0),
        found.get("world_size", rank + 1),
        hostname(),
        source,
    )


def rank_suffix(environ: Mapping[str, str] | None = None) -> str:
    """``.rank<r>`` for this process's file names when its rank is known, else ``""``.

    The same sources as `rank_info`, so that ranks of one group that share a run id write
    their own files even when the launcher set no ``RANK``. A launcher's rank always names
    the files (as ``torchrun --nproc-per-node 1`` always did); a ``torch.distributed`` group of
    one process does not, since nothing can overwrite its files and a program that builds and
    destroys such a group around its loop would otherwise name some files with the suffix
    and some without.
    """
    found, source = _lookup(environ)
    if "rank" not in found or (source != "environment" and found["world_size"] <= 1):
        return ""
    return f".rank{found['rank']}"
