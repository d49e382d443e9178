"""Every environment variable maeltrace reads, with what it means, and the readers for them."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Final, overload

__all__ = [
    "HOROVOD_LOCAL_RANK",
    "HOROVOD_RANK",
    "HOROVOD_SIZE",
    "LOCAL_RANK",
    "MAELTRACE_APPS_DIR",
    "MAELTRACE_COLLECT_TOKEN",
    "MAELTRACE_DEVICE",
    "MAELTRACE_DISABLED",
    "MAELTRACE_EXPORT",
    "MAELTRACE_LIVE",
    "MAELTRACE_MAX_REQUEST_BYTES",
    "MAELTRACE_MEMORY",
    "MAELTRACE_OUTPUT_DIR",
    "MAELTRACE_PEAK_FLOPS",
    "MAELTRACE_PURE_PYTHON",
    "MAELTRACE_RECORD_ARGV",
    "MAELTRACE_RUN_ID",
    "MAELTRACE_SIGNALS",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_RUN_ID",
    "MLFLOW_TRACKING_URI",
    "MPI_LOCALRANKID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_METRICS_EXPORTER",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "PMI_RANK",
    "PMI_SIZE",
    "RANK",
    "SLURM_JOB_ID",
    "SLURM_LOCALID",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_STEP_ID",
    "TORCHELASTIC_RUN_ID",
    "VARIABLES",
    "WANDB_DIR",
    "WANDB_PROJECT",
    "WORLD_SIZE",
    "env_flag",
    "env_int",
    "env_is_set",
    "env_str",
]

# -- maeltrace's own ---------------------------------------------------------------------------

MAELTRACE_APPS_DIR: Final = "MAELTRACE_APPS_DIR"
"""Folder of the example apps that ``maeltrace bench`` runs; default ``apps/`` of the source tree
maeltrace runs from, else of the working folder. Read when ``maeltrace bench`` starts."""

MAELTRACE_COLLECT_TOKEN: Final = "MAELTRACE_COLLECT_TOKEN"
"""The bearer token clients of ``maeltrace collect`` must send, when set (safer than
``--token``, which ``ps`` shows); default none, every client accepted. Read when the service
starts."""

MAELTRACE_DEVICE: Final = "MAELTRACE_DEVICE"
"""The device clock of ``gpu=True`` regions for timers built afterwards that name none, as
``Timer(device=...)`` takes it (``torch``, ``jax``, ``tensorflow``, ``cpu``...). Default unset:
the timer chooses at its first gpu region. A name no clock has fails when the timer is built.
Read when a timer is built."""

MAELTRACE_DISABLED: Final = "MAELTRACE_DISABLED"
"""``1``, ``true``, ``yes`` or ``on`` makes every `Timer` built afterwards a no-op, as if it were
built with ``enabled=False``. Default off. Read when a timer is built, never on the hot path."""

MAELTRACE_EXPORT: Final = "MAELTRACE_EXPORT"
"""``0``, ``false``, ``no`` or ``off`` makes timers built afterwards keep their regions to
themselves: no spans, no files at exit. Default on. Read when a timer is built and when
``maeltrace bench`` starts."""

MAELTRACE_MAX_REQUEST_BYTES: Final = "MAELTRACE_MAX_REQUEST_BYTES"
"""The most bytes of one export request, outbox record or traces file line (at least 4096);
default 4 MiB, gRPC's limit. Read when a timer is built."""

MAELTRACE_OUTPUT_DIR: Final = "MAELTRACE_OUTPUT_DIR"
"""Folder that runs write their files into; default ``./maeltrace-out``. Each run writes into a
subfolder named by its run id. Read when a run's folder is chosen."""

MAELTRACE_PURE_PYTHON: Final = "MAELTRACE_PURE_PYTHON"
"""``1`` makes timers built afterwards use the pure-Python recorder and span encoder even where
the compiled ones (``maeltrace._hotpath``, ``maeltrace._spanenc``) are installed; they record and
encode the same things, more slowly. Default off. Read when a timer or encoder is built."""

MAELTRACE_RECORD_ARGV: Final = "MAELTRACE_RECORD_ARGV"
"""``0`` leaves the command line out of the run's metadata (``metadata.argv`` in stats.json,
an MLflow artifact). Default on, with the values of secret-looking flags (token, key, password,
secret...) masked. Read when a summary is made."""

MAELTRACE_RUN_ID: Final = "MAELTRACE_RUN_ID"
"""The run id, shared by every process of one run. When unset, the launcher's id is used
(``TORCHELASTIC_RUN_ID``, ``SLURM_JOB_ID`` with ``SLURM_STEP_ID``), else a new one. Read when
a timer is built."""

MAELTRACE_LIVE: Final = "MAELTRACE_LIVE"
"""Trackers that get each epoch's statistics while training runs, comma-separated: ``mlflow``,
``wandb`` or both, as ``Timer(live=...)`` names them (`maeltrace.sinks.live`). Default none.
Read when a timer that names none is built."""

MAELTRACE_MEMORY: Final = "MAELTRACE_MEMORY"
"""``1``, ``true``, ``yes`` or ``on`` measures the peak device memory of every gpu region where
the device clock can (torch on a GPU), as ``Timer(memory=True)`` does. Default off. Read when a
timer that is given no ``memory`` is built."""

MAELTRACE_PEAK_FLOPS: Final = "MAELTRACE_PEAK_FLOPS"
"""The peak FLOP/s of one device (``989e12`` for an H100's dense BF16), for model FLOPs
utilisation, as ``Timer(peak_flops=...)`` takes it. Default none. Read when a timer that is given
no ``peak_flops`` is built."""

MAELTRACE_SIGNALS: Final = "MAELTRACE_SIGNALS"
"""``0``, ``false``, ``no`` or ``off`` keeps timers built afterwards from handling SIGTERM and
SIGINT (writing their files before the signal ends the process), as
``Timer(handle_signals=False)`` does. Default on. Read when a timer is built."""

# -- OpenTelemetry (the specification's names) -------------------------------------------------
# Each OTEL_EXPORTER_OTLP_X has a trace-specific OTEL_EXPORTER_OTLP_TRACES_X that wins over it
# when set and not empty (maeltrace.otel.config); OTEL_SDK_DISABLED and the resource ones have
# none. All are read when an export configuration is built (a timer with export on, ``maeltrace
# bench``, ``maeltrace replay``).

OTEL_EXPORTER_OTLP_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""Base URL of the OTLP receiver; default none (spans go to files only). For HTTP,
``/v1/traces`` is appended to its path; the trace-specific ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
is used as it is. For gRPC, ``host:port`` (TLS unless ``OTEL_EXPORTER_OTLP_INSECURE=true``) or
``http(s)://host:port``."""

OTEL_EXPORTER_OTLP_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_PROTOCOL"
"""``grpc``, ``http/protobuf`` (the default) or ``http/json``."""

OTEL_EXPORTER_OTLP_HEADERS: Final = "OTEL_EXPORTER_OTLP_HEADERS"
"""Extra request headers (gRPC metadata): ``key=value`` pairs separated by commas, values
percent-encoded (the W3C baggage format), e.g. ``api-key=s%3Dcret,x-tenant=ml``; default none."""

OTEL_EXPORTER_OTLP_TIMEOUT: Final = "OTEL_EXPORTER_OTLP_TIMEOUT"
"""How long one export attempt may take, in milliseconds; default 10000."""

OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
"""Where maeltrace's own OTLP metrics export sends ``maeltrace.region.duration``; default the
traces endpoint's receiver (``/v1/metrics`` beside ``/v1/traces`` over HTTP, the same gRPC
target). Read by OpenTelemetry's metric exporter itself when set (``maeltrace.otel.metrics``)."""

OTEL_METRICS_EXPORTER: Final = "OTEL_METRICS_EXPORTER"
"""``none`` turns maeltrace's own OTLP metrics export off (spans are still sent); a
MeterProvider of the user's is used regardless."""

OTEL_EXPORTER_OTLP_COMPRESSION: Final = "OTEL_EXPORTER_OTLP_COMPRESSION"
"""``gzip`` or ``none`` (the default)."""

OTEL_EXPORTER_OTLP_INSECURE: Final = "OTEL_EXPORTER_OTLP_INSECURE"
"""gRPC only, for an endpoint without a scheme: ``true`` sends without TLS. Default false."""

OTEL_EXPORTER_OTLP_CERTIFICATE: Final = "OTEL_EXPORTER_OTLP_CERTIFICATE"
"""PEM file of the certificate authorities that TLS trusts, instead of the system's (the
default)."""

OTEL_EXPORTER_OTLP_CLIENT_KEY: Final = "OTEL_EXPORTER_OTLP_CLIENT_KEY"
"""PEM file of the client's private key, for mutual TLS (with the client certificate); default
none."""

OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: Final = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"
"""PEM file of the client's certificate chain, for mutual TLS (with the client key); default
none."""

OTEL_SDK_DISABLED: Final = "OTEL_SDK_DISABLED"
"""``true`` (any case) turns export off: `ExportConfig.disabled` is set. Default false."""

OTEL_SERVICE_NAME: Final = "OTEL_SERVICE_NAME"
"""The service name of every span; default ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``,
else the program's name (a generic script name such as ``train.py`` gets its folder's; see
``maeltrace.otel._service``). Read when a timer builds its spans' resource."""

OTEL_RESOURCE_ATTRIBUTES: Final = "OTEL_RESOURCE_ATTRIBUTES"
"""Extra resource attributes, ``key=value`` pairs separated by commas; default none. Read when a
timer builds its spans' resource."""

# -- launchers: rank, local rank, world size (first launcher whose rank is set wins) and run id --
# Read when a timer is built and whenever maeltrace._runinfo is asked for the rank; a value that
# is not a whole number is taken as not set.

RANK: Final = "RANK"
"""torchrun's global rank."""

LOCAL_RANK: Final = "LOCAL_RANK"
"""torchrun's rank on this node."""

WORLD_SIZE: Final = "WORLD_SIZE"
"""torchrun's number of processes."""

OMPI_COMM_WORLD_RANK: Final = "OMPI_COMM_WORLD_RANK"
"""Open MPI's global rank."""

OMPI_COMM_WORLD_LOCAL_RANK: Final = "OMPI_COMM_WORLD_LOCAL_RANK"
"""Open MPI's rank on this node."""

OMPI_COMM_WORLD_SIZE: Final = "OMPI_COMM_WORLD_SIZE"
"""Open MPI's number of processes."""

PMI_RANK: Final = "PMI_RANK"
"""MPICH's and Intel MPI's global rank."""

MPI_LOCALRANKID: Final = "MPI_LOCALRANKID"
"""MPICH's and Intel MPI's rank on this node."""

PMI_SIZE: Final = "PMI_SIZE"
"""MPICH's and Intel MPI's number of processes."""

SLURM_PROCID: Final = "SLURM_PROCID"
"""Slurm's (``srun``) global rank."""

SLURM_LOCALID: Final = "SLURM_LOCALID"
"""Slurm's rank on this node."""

SLURM_NTASKS: Final = "SLURM_NTASKS"
"""Slurm's number of processes."""

HOROVOD_RANK: Final = "HOROVOD_RANK"
"""Horovod's global rank."""

HOROVOD_LOCAL_RANK: Final = "HOROVOD_LOCAL_RANK"
"""Horovod's rank on this node."""

HOROVOD_SIZE: Final = "HOROVOD_SIZE"
"""Horovod's number of processes."""

TORCHELASTIC_RUN_ID: Final = "TORCHELASTIC_RUN_ID"
"""torchrun's run id; the run id when ``MAELTRACE_RUN_ID`` is unset."""

SLURM_JOB_ID: Final = "SLURM_JOB_ID"
"""Slurm's job id; the run id is ``slurm-<job>`` when neither ``MAELTRACE_RUN_ID`` nor
``TORCHELASTIC_RUN_ID`` is set."""

SLURM_STEP_ID: Final = "SLURM_STEP_ID"
"""Slurm's job step; with ``SLURM_JOB_ID``, the run id is ``slurm-<job>.<step>``."""

# -- MLflow and Weights & Biases ---------------------------------------------------------------

MLFLOW_TRACKING_URI: Final = "MLFLOW_TRACKING_URI"
"""Where ``maeltrace bench`` and ``maeltrace collect`` log, when not given on the command line;
default a SQLite store in the output folder (bench), no MLflow (collect)."""

MLFLOW_RUN_ID: Final = "MLFLOW_RUN_ID"
"""The MLflow run that ``Timer.log_*_all`` logs to when no run is active nor given; default a
new run. Read at each call."""

MLFLOW_EXPERIMENT_NAME: Final = "MLFLOW_EXPERIMENT_NAME"
"""The experiment ``maeltrace collect`` logs to when none is given; default ``maeltrace``."""

MLFLOW_HTTP_REQUEST_TIMEOUT: Final = "MLFLOW_HTTP_REQUEST_TIMEOUT"
"""MLflow's own request timeout in seconds; where the user set none, maeltrace sets it for the
duration of its MLflow calls to their bound."""

MLFLOW_HTTP_REQUEST_MAX_RETRIES: Final = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
"""MLflow's own retries; where the user set none, maeltrace sets it for the duration of its
MLflow calls (1 from a timer, 0 from ``maeltrace collect``, which retries itself)."""

MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR: Final = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
"""MLflow's progress bar for artifact transfers; where the user set none, maeltrace sets it to
``false`` for the duration of a timer's MLflow calls, keeping stderr clean."""

WANDB_PROJECT: Final = "WANDB_PROJECT"
"""The W&B project that timers and ``maeltrace collect`` log to when none is given; default
``maeltrace``."""

WANDB_DIR: Final = "WANDB_DIR"
"""W&B's folder for its files; when unset, ``maeltrace collect`` puts them in its state
folder."""

VARIABLES: Final = tuple(
    value for name, value in sorted(globals().items()) if name.isupper() and name == value
)
"""Every variable above, sorted by name."""

# -- reading -----------------------------------------------------------------------------------
# One policy: unset and empty (spaces only, for flags and numbers) are the same and give the
# default; a value that cannot be used raises ValueError naming the variable and the value, except
# where a specification demands otherwise (OpenTelemetry's booleans warn instead).

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})

# The logger these warnings came from before they moved here, so logging configurations that
# name it keep working.
_otel_log = logging.getLogger("maeltrace.otel.export")


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


@overload
def env_str(name: str, default: str, *, environ: Mapping[str, str] | None = None) -> str: ...


@overload
def env_str(
    name: str, default: None = None, *, environ: Mapping[str, str] | None = None
) -> str | None: ...


def env_str(
    name: str, default: str | None = None, *, environ: Mapping[str, str] | None = None
) -> str | None:
    """Reads a string environment variable; unset or empty gives ``default``.

    Args:
        name: the variable.
        default: what unset or empty gives.
        environ: the variables to read; default this process's.

    Returns:
        The value as set (not stripped), or ``default``.
    """
    value = _environ(environ).get(name)
    return value if value else default


def env_is_set(name: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``name`` is in the environment at all, even empty: for a setting that maeltrace
    provides (to MLflow's client) only where the user made none."""
    return name in _environ(environ)


def env_flag(
    name: str,
    default: bool = False,
    *,
    environ: Mapping[str, str] | None = None,
    opentelemetry: bool = False,
) -> bool:
    """Reads a boolean environment variable; unset or empty gives ``default``.

    Case and surrounding spaces are ignored.

    Args:
        name: the variable.
        default: what unset or empty gives.
        environ: the variables to read; default this process's.
        opentelemetry: read it by the OpenTelemetry specification's rule, for its ``OTEL_*``
            variables: only ``true`` is true, ``false`` is false, and any other word is false
            with a logged warning, never an error.

    Raises:
        ValueError: the variable holds something other than ``1``/``0``, ``true``/``false``,
            ``yes``/``no`` or ``on``/``off``; the message names it and its value. Never with
            ``opentelemetry``.
    """
    raw = _environ(environ).get(name)
    value = (raw or "").strip().lower()
    if not value:
        return default
    if opentelemetry:
        if value not in ("true", "false"):
            _otel_log.warning("%s=%r is not true or false; taken as false", name, raw)
        return value == "true"
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off")


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Reads a whole-number environment variable; unset or empty gives ``default``.

    Args:
        name: the variable.
        default: what unset or empty gives (not checked against ``minimum``).
        minimum: the smallest value accepted.
        environ: the variables to read; default this process's.

    Raises:
        ValueError: the variable holds something other than a whole number, or one below
            ``minimum``; the message names it and its value.
    """
    raw = _environ(environ).get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={raw!r} is below the minimum, {minimum}")
    return value
