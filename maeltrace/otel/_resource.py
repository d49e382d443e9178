"""The OpenTelemetry resource of a timer's spans: who produced them."""

from __future__ import annotations

import os
import sys
import urllib.parse
from collections.abc import Mapping

from maeltrace._runinfo import framework_versions, hostname, known_rank, rank_from_environment
from maeltrace._version import __version__
from maeltrace.environment import OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME, env_str
from maeltrace.otel import semconv
from maeltrace.otel._service import program_service_name

# rank_from_environment lives in maeltrace._runinfo and the OTEL_* names in
# maeltrace.environment; re-exported for old imports.
__all__ = ["OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME", "rank_from_environment", "resource"]

_RANK_ATTRIBUTES = {
    "rank": semconv.MAELTRACE_RANK,
    "local_rank": semconv.MAELTRACE_LOCAL_RANK,
    "world_size": semconv.MAELTRACE_WORLD_SIZE,
}
"""The resource attribute of each of `rank_from_environment`'s keys."""


def _parse_resource_attributes(raw: str) -> dict[str, str]:
    attributes = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"{OTEL_RESOURCE_ATTRIBUTES} holds {item!r}, not key=value; "
                "separate pairs with commas"
            )
        attributes[key.strip()] = urllib.parse.unquote(value.strip())
    return attributes


def resource(
    run_id: str, extra: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, object]:
    """The resource attributes of a timer's spans.

    ``service.name`` comes from ``OTEL_SERVICE_NAME``, else ``service.name`` in
    ``OTEL_RESOURCE_ATTRIBUTES``, else the program's name
    (`maeltrace.otel._service.service_name_of`: the script's name, with its folder's in front
    when the name is generic such as ``main`` or ``train``; ``python -m``'s module; ``jupyter``
    or ``python-interactive``). Rank, local rank and world size
    come from `maeltrace._runinfo.known_rank` (``torch.distributed``, JAX, then the launcher's
    environment), as in the stats files; framework versions from what is imported (nothing is
    imported here).

    Raises:
        ValueError: ``OTEL_RESOURCE_ATTRIBUTES`` is malformed.
    """
    attributes: dict[str, object] = dict(
        _parse_resource_attributes(env_str(OTEL_RESOURCE_ATTRIBUTES, "", environ=environ))
    )
    service = (
        env_str(OTEL_SERVICE_NAME, environ=environ)
        or attributes.get(semconv.SERVICE_NAME)
        or program_service_name()
    )
    attributes.update(
        {
            semconv.SERVICE_NAME: service,
            semconv.HOST_NAME: hostname(),
            semconv.PROCESS_PID: os.getpid(),
            semconv.PROCESS_RUNTIME_NAME: sys.implementation.name,
            semconv.PROCESS_RUNTIME_VERSION: ".".join(map(str, sys.version_info[:3])),
            semconv.TELEMETRY_SDK_NAME: "maeltrace",
            semconv.TELEMETRY_SDK_LANGUAGE: "python",
            semconv.TELEMETRY_SDK_VERSION: __version__,
            semconv.MAELTRACE_RUN_ID: run_id,
        }
    )
    for key, value in known_rank(environ).items():
        attributes[_RANK_ATTRIBUTES[key]] = value
    for name, version in framework_versions().items():
        attributes[semconv.framework_version_attribute(name)] = version
    attributes.update(extra or {})
    return attributes
