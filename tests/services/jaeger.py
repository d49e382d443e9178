"""Run a real Jaeger v2 on free loopback ports for end-to-end tests.

The binary comes from ``scripts/build-jaeger`` (built once from the Go module pinned in
``collectors/jaeger/go.mod`` and cached), or from the path in ``MAELTRACE_JAEGER_BIN``. It runs
``collectors/jaeger/config.yaml``: in-memory storage, an OTLP receiver (gRPC and HTTP) and the
query service (HTTP API and gRPC), every listener on 127.0.0.1 on a port chosen here.

Typical use::

    with JaegerService() as jaeger:
        exporter = OTLPSpanExporter(endpoint=f"{jaeger.otlp_http_endpoint}/v1/traces")
        ...
        traces = jaeger.wait_for_spans("my-service", count=3)

Only the standard library is used.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.services.process import (  # the constants stay importable from here
    HOST,
    PORT_ATTEMPTS,  # noqa: F401
    STOP_TIMEOUT,  # noqa: F401
    BinaryService,
    accepting,
    built_binary,
    free_port,
    free_ports,
)

__all__ = [
    "BUILD_SCRIPT",
    "CONFIG",
    "ENV_BINARY",
    "JaegerError",
    "JaegerService",
    "count_spans",
    "free_port",
    "free_ports",
    "jaeger_binary",
]

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-jaeger"
CONFIG = ROOT / "collectors" / "jaeger" / "config.yaml"
ENV_BINARY = "MAELTRACE_JAEGER_BIN"
"""Environment variable naming a prebuilt Jaeger binary; when set, nothing is built."""

JSON = dict[str, Any]

# A cold build downloads ~1.7 GB of modules and compiles for ~10 minutes on 2 cores.
DEFAULT_BUILD_TIMEOUT = 45 * 60.0


class JaegerError(RuntimeError):
    """Jaeger could not be built, started or queried, or the expected data never arrived."""


def jaeger_binary(build_timeout: float = DEFAULT_BUILD_TIMEOUT) -> Path:
    """Return the Jaeger binary: ``$MAELTRACE_JAEGER_BIN`` or the output of ``build-jaeger``.

    Raises:
        JaegerError: the variable names no executable, or the build fails or times out.
    """
    return built_binary(BUILD_SCRIPT, ENV_BINARY, build_timeout, JaegerError)


def count_spans(traces: list[JSON]) -> int:
    """Total number of spans in ``traces`` (as returned by :meth:`JaegerService.traces`)."""
    return sum(len(trace["spans"]) for trace in traces)


class JaegerService(BinaryService):
    """A Jaeger v2 process on free loopback ports; a context manager.

    ``start()`` (or entering the ``with`` block) builds or finds the binary, starts it and waits
    until the query API and both OTLP receivers answer. ``stop()`` (or leaving the block, also on
    an exception) terminates it, and kills it if it does not exit within a few seconds.

    Args:
        binary: the Jaeger executable; default :func:`jaeger_binary`.
        config: the configuration file; default ``collectors/jaeger/config.yaml``.
        startup_timeout: seconds to wait for the process to serve, after the build.
        build_timeout: seconds allowed for ``scripts/build-jaeger``.
        log_path: where the process's stdout and stderr go; default a temporary file that
            ``stop()`` deletes. Pass a path to keep the log.
    """

    _error = JaegerError
    _display_name = "Jaeger"
    _log_prefix = "jaeger-"

    def __init__(
        self,
        binary: str | os.PathLike[str] | None = None,
        *,
        config: str | os.PathLike[str] = CONFIG,
        startup_timeout: float = 60.0,
        build_timeout: float = DEFAULT_BUILD_TIMEOUT,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            binary,
            config=config,
            startup_timeout=startup_timeout,
            build_timeout=build_timeout,
            log_path=log_path,
        )
        self._ports: dict[str, int] = {}

    # -- lifecycle (start, stop, running: see ServiceProcess) --------------------------------

    def _find_binary(self) -> Path:
        return jaeger_binary(self._build_timeout)

    def _launch(self) -> None:
        assert self._binary is not None
        names = ("otlp_grpc", "otlp_http", "query_http", "query_grpc")
        self._ports = dict(zip(names, free_ports(len(names)), strict=True))
        env = {
            **os.environ,
            "JAEGER_OTLP_GRPC": f"{HOST}:{self._ports['otlp_grpc']}",
            "JAEGER_OTLP_HTTP": f"{HOST}:{self._ports['otlp_http']}",
            "JAEGER_QUERY_HTTP": f"{HOST}:{self._ports['query_http']}",
            "JAEGER_QUERY_GRPC": f"{HOST}:{self._ports['query_grpc']}",
        }
        self._spawn([str(self._binary), "--config", f"file:{self._config}"], env)

    def _serving(self) -> bool:
        if not accepting(self._ports[name] for name in ("otlp_grpc", "otlp_http")):
            return False
        try:
            self.services()
        except (JaegerError, OSError):
            return False
        return True

    def _not_serving(self) -> str:
        return f"Jaeger did not serve {self.query_url}/api/services and the OTLP ports"

    # -- endpoints ---------------------------------------------------------------------------

    def _port(self, name: str) -> int:
        if not self._ports:
            raise JaegerError("JaegerService is not started")
        return self._ports[name]

    def _otlp_port(self, kind: str) -> int:  # for otlp_http_endpoint, otlp_grpc_endpoint
        return self._port(f"otlp_{kind}")

    @property
    def query_url(self) -> str:
        """Base URL of the query service's HTTP API (``/api/...``)."""
        return f"http://{HOST}:{self._port('query_http')}"

    @property
    def query_grpc_endpoint(self) -> str:
        """``host:port`` of the query service's gRPC API (api_v2 and api_v3)."""
        return f"{HOST}:{self._port('query_grpc')}"

    # -- query API ---------------------------------------------------------------------------

    def get_json(self, path: str, params: Mapping[str, object] | None = None) -> Any:
        """GET ``<query_url><path>?<params>`` and return the ``data`` member of the reply.

        Raises:
            JaegerError: an HTTP error status, or a reply that lists errors.
        """
        url = f"{self.query_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            with urllib.request.urlopen(url, timeout=10.0) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read().decode(errors="replace")
            raise JaegerError(f"GET {url}: {exc.code} {exc.reason}: {detail}") from exc
        if reply.get("errors"):
            raise JaegerError(f"GET {url}: {reply['errors']}")
        return reply.get("data")

    def services(self) -> list[str]:
        """Names of the services that have sent spans."""
        return list(self.get_json("/api/services") or [])

    def traces(
        self,
        service: str,
        *,
        start_us: int = 0,
        end_us: int | None = None,
        limit: int = 100,
    ) -> list[JSON]:
        """Traces with spans of ``service`` that start in ``[start_us, end_us]``.

        Times are unix microseconds; ``start_us`` defaults to the epoch (the API itself would
        look back only 48 hours) and ``end_us`` to now. ``limit`` caps the number of traces.
        A trace is ``{"traceID", "spans", "processes", ...}``; a span has ``spanID``,
        ``operationName``, ``references``, ``startTime`` and ``duration`` (µs), ``tags`` and
        ``processID`` (a key of ``processes``, whose ``serviceName`` names its service).
        """
        params: dict[str, object] = {"service": service, "start": start_us, "limit": limit}
        if end_us is not None:
            params["end"] = end_us
        return list(self.get_json("/api/traces", params) or [])

    def trace(self, trace_id: str) -> JSON:
        """One trace by its hex id.

        Raises:
            JaegerError: no such trace (HTTP 404) or another error.
        """
        data = self.get_json(f"/api/traces/{trace_id}")
        if not data:
            raise JaegerError(f"trace {trace_id} not found")
        trace: JSON = data[0]
        return trace

    def wait_for_spans(
        self,
        service: str,
        count: int,
        timeout: float = 30.0,
        *,
        start_us: int = 0,
        end_us: int | None = None,
        interval: float = 0.1,
    ) -> list[JSON]:
        """Poll :meth:`traces` until its traces hold at least ``count`` spans; return them.

        Spans travel through a batch processor, so they show up a few hundred ms after export.

        Raises:
            JaegerError: fewer spans after ``timeout`` seconds, or the process died.
        """
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            if not self.running:
                raise JaegerError(f"Jaeger is not running; log tail:\n{self.log_tail()}")
            traces = self.traces(service, start_us=start_us, end_us=end_us, limit=10_000)
            seen = count_spans(traces)
            if seen >= count:
                return traces
            if time.monotonic() > deadline:
                raise JaegerError(
                    f"{seen} span(s) of service {service!r} after {timeout:.0f} s, "
                    f"expected {count}; services: {self.services()}; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(interval)
