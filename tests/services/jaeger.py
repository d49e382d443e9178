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

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

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

HOST = "127.0.0.1"
JSON = dict[str, Any]

# A cold build downloads ~1.7 GB of modules and compiles for ~10 minutes on 2 cores.
DEFAULT_BUILD_TIMEOUT = 45 * 60.0
STOP_TIMEOUT = 10.0
PORT_ATTEMPTS = 3


class JaegerError(RuntimeError):
    """Jaeger could not be built, started or queried, or the expected data never arrived."""


def free_ports(count: int, host: str = HOST) -> list[int]:
    """Return ``count`` distinct TCP ports on ``host`` that were free a moment ago.

    The OS picks them; all stay bound until every one is picked, so none repeats.
    """
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port(host: str = HOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago (the OS picks it)."""
    return free_ports(1, host)[0]


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def jaeger_binary(build_timeout: float = DEFAULT_BUILD_TIMEOUT) -> Path:
    """Return the Jaeger binary: ``$MAELTRACE_JAEGER_BIN`` or the output of ``build-jaeger``.

    Raises:
        JaegerError: the variable names no executable, or the build fails or times out.
    """
    override = os.environ.get(ENV_BINARY)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise JaegerError(f"{ENV_BINARY}={override!r} is not an executable file")
        return path
    try:
        result = subprocess.run(
            [str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=build_timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise JaegerError(
            f"{BUILD_SCRIPT} did not finish in {build_timeout:.0f} s:\n{_tail(stderr, 40)}"
        ) from exc
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise JaegerError(
            f"{BUILD_SCRIPT} failed (exit status {result.returncode}):\n{_tail(result.stderr, 40)}"
        )
    path = Path(lines[-1])
    if not path.is_file():
        raise JaegerError(f"{BUILD_SCRIPT} printed {path}, which is not a file")
    return path


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(process.pid, sig)


def count_spans(traces: list[JSON]) -> int:
    """Total number of spans in ``traces`` (as returned by :meth:`JaegerService.traces`)."""
    return sum(len(trace["spans"]) for trace in traces)


class JaegerService:
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

    def __init__(
        self,
        binary: str | os.PathLike[str] | None = None,
        *,
        config: str | os.PathLike[str] = CONFIG,
        startup_timeout: float = 60.0,
        build_timeout: float = DEFAULT_BUILD_TIMEOUT,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self._binary = Path(binary) if binary is not None else None
        self._config = Path(config)
        self._startup_timeout = startup_timeout
        self._build_timeout = build_timeout
        self._keep_log = log_path is not None
        self._log_path = Path(log_path) if log_path is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start Jaeger and wait until it serves; return ``self``.

        Raises:
            JaegerError: the build failed, or the process exited or did not serve in time
                (the message ends with the tail of its log).
        """
        if self._process is not None:
            raise JaegerError("this JaegerService is already running")
        if self._binary is None:
            self._binary = jaeger_binary(self._build_timeout)
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="jaeger-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        try:
            # A port picked by free_port() can be taken before Jaeger binds it; retry then.
            for attempt in range(1, PORT_ATTEMPTS + 1):
                try:
                    self._launch()
                    self._wait_until_serving()
                except JaegerError:
                    self._terminate()
                    if attempt == PORT_ATTEMPTS or "address already in use" not in self.log():
                        raise
                else:
                    return self
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Stop the process (terminate, then kill after a timeout); safe to call repeatedly."""
        self._terminate()
        if self._log_path is not None and not self._keep_log:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def _launch(self) -> None:
        assert self._binary is not None and self._log_path is not None
        names = ("otlp_grpc", "otlp_http", "query_http", "query_grpc")
        self._ports = dict(zip(names, free_ports(len(names)), strict=True))
        env = {
            **os.environ,
            "JAEGER_OTLP_GRPC": f"{HOST}:{self._ports['otlp_grpc']}",
            "JAEGER_OTLP_HTTP": f"{HOST}:{self._ports['otlp_http']}",
            "JAEGER_QUERY_HTTP": f"{HOST}:{self._ports['query_http']}",
            "JAEGER_QUERY_GRPC": f"{HOST}:{self._ports['query_grpc']}",
        }
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [str(self._binary), "--config", f"file:{self._config}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: Ctrl-C reaches pytest only
            )

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if not self.running:
                assert self._process is not None
                raise JaegerError(
                    f"Jaeger exited with status {self._process.returncode} while starting; "
                    f"log tail:\n{self.log_tail()}"
                )
            if self._serving():
                return
            if time.monotonic() > deadline:
                raise JaegerError(
                    f"Jaeger did not serve {self.query_url}/api/services and the OTLP ports "
                    f"within {self._startup_timeout:.0f} s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _serving(self) -> bool:
        for name in ("otlp_grpc", "otlp_http"):
            try:
                socket.create_connection((HOST, self._ports[name]), timeout=1.0).close()
            except OSError:
                return False
        try:
            self.services()
        except (JaegerError, OSError):
            return False
        return True

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # The process leads its own process group (start_new_session), so signal the group.
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    # -- endpoints ---------------------------------------------------------------------------

    def _port(self, name: str) -> int:
        if not self._ports:
            raise JaegerError("JaegerService is not started")
        return self._ports[name]

    @property
    def otlp_http_endpoint(self) -> str:
        """Base URL of the OTLP/HTTP receiver; POST to ``<this>/v1/traces``."""
        return f"http://{HOST}:{self._port('otlp_http')}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        """URL of the OTLP/gRPC receiver (plaintext: the ``http`` scheme means insecure)."""
        return f"http://{HOST}:{self._port('otlp_grpc')}"

    @property
    def query_url(self) -> str:
        """Base URL of the query service's HTTP API (``/api/...``)."""
        return f"http://{HOST}:{self._port('query_http')}"

    @property
    def query_grpc_endpoint(self) -> str:
        """``host:port`` of the query service's gRPC API (api_v2 and api_v3)."""
        return f"{HOST}:{self._port('query_grpc')}"

    @property
    def log_path(self) -> Path | None:
        """The file receiving the process's output, while it exists."""
        return self._log_path

    def log(self) -> str:
        """The process's output so far (empty before start or after a temporary log is gone)."""
        if self._log_path is None:
            return ""
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the process's output."""
        return _tail(self.log(), lines)

    # -- OTLP ingestion ----------------------------------------------------------------------

    def send_otlp_json(self, payload: Mapping[str, Any], timeout: float = 10.0) -> JSON:
        """POST an OTLP/JSON ``ExportTraceServiceRequest`` to the receiver; return its reply.

        Raises:
            JaegerError: the receiver answered with an error status.
        """
        request = urllib.request.Request(
            f"{self.otlp_http_endpoint}/v1/traces",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read().decode(errors="replace")
            raise JaegerError(
                f"OTLP/HTTP export failed: {exc.code} {exc.reason}: {detail}"
            ) from exc
        reply: JSON = json.loads(body) if body else {}
        return reply

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
