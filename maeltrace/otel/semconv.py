"""Every span name, event name and attribute key that maeltrace writes or reads: one source."""

from __future__ import annotations

from typing import Final

__all__ = [
    "EXCEPTION_EVENT_NAME",
    "EXCEPTION_MESSAGE",
    "EXCEPTION_TYPE",
    "FIRST_CALL",
    "GPU_SUFFIX",
    "HOST_NAME",
    "MAELTRACE_CLOCK",
    "MAELTRACE_CLOCK_CPU",
    "MAELTRACE_CLOCK_GPU",
    "MAELTRACE_CPU_DURATION_NS",
    "MAELTRACE_DEVICE_CLOCK",
    "MAELTRACE_DEVICE_DESCRIPTION",
    "MAELTRACE_GPU_CLOCK",
    "MAELTRACE_GPU_DURATION_NS",
    "MAELTRACE_GPU_MEMORY_PEAK",
    "MAELTRACE_INDEX",
    "MAELTRACE_ITEMS",
    "MAELTRACE_KEY",
    "MAELTRACE_LOCAL_RANK",
    "MAELTRACE_RANK",
    "MAELTRACE_REGIONS_SAMPLED_OUT",
    "MAELTRACE_RUN_ID",
    "MAELTRACE_SAMPLING_DROPPED_REGIONS",
    "MAELTRACE_SAMPLING_DROPPED_UNITS",
    "MAELTRACE_SPANS_BUILT",
    "MAELTRACE_TOKENS",
    "MAELTRACE_TRACE",
    "MAELTRACE_WORLD_SIZE",
    "PROCESS_PID",
    "PROCESS_RUNTIME_NAME",
    "PROCESS_RUNTIME_VERSION",
    "REGION_DURATION",
    "REGION_DURATION_UNIT",
    "REGION_ITEMS",
    "REGION_MEMORY_PEAK",
    "REGION_TOKENS",
    "RUN_SPAN_NAME",
    "SCHEMA_URL",
    "SCOPE_NAME",
    "SERVICE_NAME",
    "STATS_CLOCKS",
    "STATS_CPU",
    "STATS_GPU",
    "STATS_PREFIX",
    "TELEMETRY_SDK_LANGUAGE",
    "TELEMETRY_SDK_NAME",
    "TELEMETRY_SDK_VERSION",
    "THREAD_ID",
    "THREAD_NAME",
    "framework_version_attribute",
    "stats_attribute",
]

# -- names ------------------------------------------------------------------------------------

SCOPE_NAME: Final = "maeltrace"
"""Instrumentation scope of every span."""

SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.26.0"
"""The semantic conventions the names here follow; the schema URL of the SDK path's tracer and
meter."""

RUN_SPAN_NAME: Final = "run"
"""Name of the span that covers a process's whole run and links its epochs."""

GPU_SUFFIX: Final = " [gpu]"
"""Appended to a region's name for the child span placed on the device timeline."""

EXCEPTION_EVENT_NAME: Final = "exception"
"""Name of the event on a failed region's span (OpenTelemetry's semantic convention)."""

# -- attributes of region spans ----------------------------------------------------------------
# maeltrace.index and the two duration_ns keys are also written by the C encoder
# (_spanenc.c, INT_KEYS); tests/test_semconv.py holds the two to the same strings.

MAELTRACE_KEY: Final = "maeltrace.key"
"""The region's key (its name without the ``[gpu]`` suffix), on the span and its GPU child."""

MAELTRACE_INDEX: Final = "maeltrace.index"
"""The region's call number within its key, from 0."""

MAELTRACE_CPU_DURATION_NS: Final = "maeltrace.cpu.duration_ns"
"""The region's duration on the CPU clock, in nanoseconds."""

MAELTRACE_GPU_DURATION_NS: Final = "maeltrace.gpu.duration_ns"
"""The region's duration on the device clock, in nanoseconds (on the ``[gpu]`` child)."""

MAELTRACE_GPU_CLOCK: Final = "maeltrace.gpu.clock"
"""On a region timed on the device: the device clock's name (``gpu`` when it has none)."""

MAELTRACE_ITEMS: Final = "maeltrace.items"
"""The items (samples) the region worked on: its own count (``Timer.region(key, items=...)``),
or, for a region given none, its children's (an epoch's batches)."""

MAELTRACE_TOKENS: Final = "maeltrace.tokens"
"""The tokens the region worked on, counted as `MAELTRACE_ITEMS` is."""

MAELTRACE_GPU_MEMORY_PEAK: Final = "maeltrace.gpu.memory.peak_bytes"
"""The most device memory the framework's allocator held during the region, in bytes
(``Timer(memory=True)``, torch on a GPU)."""

MAELTRACE_TRACE: Final = "maeltrace.trace"
"""On an epoch's root span: the epoch's ordinal, which its trace id is derived from."""

MAELTRACE_SAMPLING_DROPPED_UNITS: Final = "maeltrace.sampling.dropped_units"
"""On a sampled trace's root: how many units (children of the root, with subtrees) were left
out to keep the trace within its budget."""

MAELTRACE_SAMPLING_DROPPED_REGIONS: Final = "maeltrace.sampling.dropped_regions"
"""On a sampled trace's root: how many regions those units held."""

THREAD_NAME: Final = "thread.name"
"""The name of the thread that timed the region (OpenTelemetry's semantic convention)."""

THREAD_ID: Final = "thread.id"
"""The native id of the thread that timed the region (OpenTelemetry's semantic convention)."""

EXCEPTION_TYPE: Final = "exception.type"
"""On the exception event: the exception's class name."""

EXCEPTION_MESSAGE: Final = "exception.message"
"""On the exception event: the exception's message (its class name when it has none)."""

# -- attributes of the run span ----------------------------------------------------------------

MAELTRACE_RUN_ID: Final = "maeltrace.run_id"
"""The run's id: on the resource of every span and on the run span itself."""

MAELTRACE_SPANS_BUILT: Final = "maeltrace.spans_built"
"""On the run span: how many spans the process built."""

MAELTRACE_REGIONS_SAMPLED_OUT: Final = "maeltrace.regions_sampled_out"
"""On the run span: how many regions trace budgets left out of the spans."""

MAELTRACE_DEVICE_CLOCK: Final = "maeltrace.device.clock"
"""On the run span: the name of the device clock, when the timer had one."""

MAELTRACE_DEVICE_DESCRIPTION: Final = "maeltrace.device.description"
"""On the run span: the device clock's description, when the timer had one."""

STATS_PREFIX: Final = "maeltrace.stats."
"""Prefix of the run span's statistics attributes; see `stats_attribute`."""

STATS_CPU: Final = "cpu"
"""Clock segment of the statistics measured on the CPU clock."""

STATS_GPU: Final = "gpu"
"""Clock segment of the statistics measured on the device clock."""

STATS_CLOCKS: Final = (STATS_CPU, STATS_GPU)
"""The clock segments of the statistics attributes."""

FIRST_CALL: Final = "first_call"
"""Statistics segment of the rows of regions that compiled code (JAX's first calls)."""


def stats_attribute(key: str, clock: str, field: str) -> str:
    """The run span's attribute for one statistic:
    ``maeltrace.stats.<key>.<cpu|gpu>[.first_call].<field>``.

    Args:
        key: the region key.
        clock: ``cpu`` or ``gpu``, followed by ``.first_call`` for the rows of compiling calls.
        field: a `maeltrace.TimeStats` field.
    """
    return f"{STATS_PREFIX}{key}.{clock}.{field}"


# -- resource attributes -----------------------------------------------------------------------
# maeltrace.run_id (above) is on the resource too.

SERVICE_NAME: Final = "service.name"
"""The service (OpenTelemetry's semantic convention): ``OTEL_SERVICE_NAME``, else the program's
name, which two programs never share (`maeltrace.otel._service.service_name_of`)."""

HOST_NAME: Final = "host.name"
"""The host name (OpenTelemetry's semantic convention)."""

PROCESS_PID: Final = "process.pid"
"""The process id (OpenTelemetry's semantic convention)."""

PROCESS_RUNTIME_NAME: Final = "process.runtime.name"
"""The Python implementation, such as ``cpython`` (OpenTelemetry's semantic convention)."""

PROCESS_RUNTIME_VERSION: Final = "process.runtime.version"
"""The Python version, ``major.minor.micro`` (OpenTelemetry's semantic convention)."""

TELEMETRY_SDK_NAME: Final = "telemetry.sdk.name"
"""``maeltrace`` (OpenTelemetry's semantic convention)."""

TELEMETRY_SDK_LANGUAGE: Final = "telemetry.sdk.language"
"""``python`` (OpenTelemetry's semantic convention)."""

TELEMETRY_SDK_VERSION: Final = "telemetry.sdk.version"
"""maeltrace's version (OpenTelemetry's semantic convention)."""

MAELTRACE_RANK: Final = "maeltrace.rank"
"""The process's rank, where its launcher set one."""

MAELTRACE_LOCAL_RANK: Final = "maeltrace.local_rank"
"""The process's rank on its node, where its launcher set one."""

MAELTRACE_WORLD_SIZE: Final = "maeltrace.world_size"
"""How many processes the run has, where the launcher said."""


def framework_version_attribute(framework: str) -> str:
    """The resource attribute holding an imported framework's version:
    ``maeltrace.framework.<framework>.version``."""
    return f"maeltrace.framework.{framework}.version"


# -- metrics -----------------------------------------------------------------------------------

REGION_DURATION: Final = "maeltrace.region.duration"
"""The histogram of region durations: one data point per closed region and clock."""

REGION_DURATION_UNIT: Final = "s"
"""`REGION_DURATION`'s unit (UCUM), seconds as OpenTelemetry's duration metrics use."""

REGION_ITEMS: Final = "maeltrace.region.items"
"""The counter of items (samples) the regions of a key worked on (``Timer.region(key,
items=...)``), attribute `MAELTRACE_KEY`: Prometheus's ``rate()`` of it is items per second."""

REGION_TOKENS: Final = "maeltrace.region.tokens"
"""The counter of tokens, as `REGION_ITEMS`."""

REGION_MEMORY_PEAK: Final = "maeltrace.region.memory.peak"
"""The gauge of the largest peak device memory (bytes, unit ``By``) of a key's regions in the
last batch of regions recorded (``Timer(memory=True)``), attribute `MAELTRACE_KEY`."""

MAELTRACE_CLOCK: Final = "maeltrace.clock"
"""On `REGION_DURATION`'s points: the clock measured, `MAELTRACE_CLOCK_CPU` or
`MAELTRACE_CLOCK_GPU` (with `MAELTRACE_KEY`, the only attributes: bounded cardinality)."""

MAELTRACE_CLOCK_CPU: Final = "cpu"
"""`MAELTRACE_CLOCK` of durations on the CPU's monotonic clock."""

MAELTRACE_CLOCK_GPU: Final = "gpu"
"""`MAELTRACE_CLOCK` of durations on the device clock."""
