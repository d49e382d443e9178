"""Run maeltrace's OpenTelemetry Collector distribution for tests: validate configs, or serve one.

The binary comes from ``scripts/build-collector`` (built once from the Go sources and modules
pinned in ``collectors/otelcol/`` and cached), or from the path in ``MAELTRACE_OTELCOL_BIN``.

Typical use::

    result = validate_config(CONFIG)            # `otelcol validate --config=...`
    assert result.returncode == 0, result.stderr

    with CollectorService(env={"JAEGER_OTLP_GRPC_ENDPOINT": "127.0.0.1:14317"}) as collector:
        collector.send_otlp_json(payload)       # POST <otlp_http_endpoint>/v1/traces

The service puts its OTLP receivers on free loopback ports through the config's variables
(``OTELCOL_OTLP_GRPC`` and ``OTELCOL_OTLP_HTTP`` in ``collectors/otelcol.yaml``) unless the
caller's ``env`` sets them. Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.services.jaeger import free_ports

__all__ = [
    "BUILD_SCRIPT",
    "CONFIG",
    "ENV_BINARY",
    "CollectorError",
    "CollectorService",
    "collector_binary",
    "config_variables",
    "validate_config",
]

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-collector"
CONFIG = ROOT / "collectors" / "otelcol.yaml"
ENV_BINARY = "MAELTRACE_OTELCOL_BIN"
"""Environment variable naming a prebuilt Collector binary; when set, nothing is built."""

HOST = "127.0.0.1"
GRPC_VARIABLE = "OTELCOL_OTLP_GRPC"
HTTP_VARIABLE = "OTELCOL_OTLP_HTTP"

# A cold build downloads ~500 MB of modules and compiles for ~2.5 minutes on 2 cores.
DEFAULT_BUILD_TIMEOUT = 30 * 60.0
VALIDATE_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
PORT_ATTEMPTS = 3

_ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)")


class CollectorError(RuntimeError):
    """The Collector could not be built, started or reached."""


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def collector_binary(build_timeout: float = DEFAULT_BUILD_TIMEOUT) -> Path:
    """Return the Collector binary: ``$MAELTRACE_OTELCOL_BIN`` or what ``build-collector`` built.

    Raises:
        CollectorError: the variable names no executable, or the build fails or times out.
    """
    override = os.environ.get(ENV_BINARY)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise CollectorError(f"{ENV_BINARY}={override!r} is not an executable file")
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
        raise CollectorError(
            f"{BUILD_SCRIPT} did not finish in {build_timeout:.0f} s:\n{_tail(stderr, 40)}"
        ) from exc
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise CollectorError(
            f"{BUILD_SCRIPT} failed (exit status {result.returncode}):\n{_tail(result.stderr, 40)}"
        )
    path = Path(lines[-1])
    if not path.is_file():
        raise CollectorError(f"{BUILD_SCRIPT} printed {path}, which is not a file")
    return path


def config_variables(path: str | os.PathLike[str]) -> set[str]:
    """Names of the environment variables a Collector config reads (``${env:NAME...}``)."""
    return set(_ENV_REFERENCE.findall(Path(path).read_text()))


def validate_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    unset: Iterable[str] = (),
    binary: str | os.PathLike[str] | None = None,
    timeout: float = VALIDATE_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``<collector> validate --config=<path>`` and return the finished process.

    The Collector sees this process's environment without the names in ``unset``, plus ``env``.
    To check a config's own defaults, unset its variables (:func:`config_variables`). Validation
    resolves the config (variables included) and checks every component's settings, without
    starting anything. The exit status is 0 for a valid config; the reason for an invalid one is
    on stderr. The Collector is built first if needed (:func:`collector_binary`).
    """
    executable = Path(binary) if binary is not None else collector_binary()
    removed = set(unset)
    environment = {name: value for name, value in os.environ.items() if name not in removed}
    environment.update(env or {})
    return subprocess.run(
        [str(executable), "validate", f"--config={Path(path)}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=environment,
        stdin=subprocess.DEVNULL,
    )


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(process.pid, sig)


def _port_of(address: str) -> int:
    """The port of ``host:port`` (or ``scheme://host:port``)."""
    return int(address.rsplit(":", 1)[1].rstrip("/"))


class CollectorService:
    """An OpenTelemetry Collector process running one config; a context manager.

    ``start()`` (or entering the ``with`` block) builds or finds the binary, starts it and waits
    until its OTLP receivers accept connections. ``stop()`` (or leaving the block, also on an
    exception) terminates it, and kills it if it does not exit within a few seconds.

    Args:
        binary: the Collector executable; default :func:`collector_binary`.
        config: the configuration file; default ``collectors/otelcol.yaml``.
        env: variables for the process, on top of this process's environment. Where it does not
            set ``grpc_variable`` and ``http_variable``, free loopback ports are chosen for them
            (and chosen again should one be taken before the Collector binds it).
        grpc_variable, http_variable: the config's variables for the OTLP/gRPC and OTLP/HTTP
            receivers' ``host:port``; ``None`` for a config that has no such receiver.
        cwd: the process's working directory (relative paths in the config resolve there).
        startup_timeout: seconds to wait for the process to serve, after the build.
        build_timeout: seconds allowed for ``scripts/build-collector``.
        log_path: where the process's stdout and stderr go; default a temporary file that
            ``stop()`` deletes. Pass a path to keep the log.
    """

    def __init__(
        self,
        binary: str | os.PathLike[str] | None = None,
        *,
        config: str | os.PathLike[str] = CONFIG,
        env: Mapping[str, str] | None = None,
        grpc_variable: str | None = GRPC_VARIABLE,
        http_variable: str | None = HTTP_VARIABLE,
        cwd: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        build_timeout: float = DEFAULT_BUILD_TIMEOUT,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self._binary = Path(binary) if binary is not None else None
        self._config = Path(config)
        self._env = dict(env or {})
        self._variables = {"grpc": grpc_variable, "http": http_variable}
        self._cwd = Path(cwd) if cwd is not None else None
        self._startup_timeout = startup_timeout
        self._build_timeout = build_timeout
        self._keep_log = log_path is not None
        self._log_path = Path(log_path) if log_path is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._addresses: dict[str, str] = {}

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
        """Start the Collector and wait until its OTLP receivers accept connections.

        Raises:
            CollectorError: the build failed, or the process exited or did not serve in time
                (the message ends with the tail of its log).
        """
        if self._process is not None:
            raise CollectorError("this CollectorService is already running")
        if self._binary is None:
            self._binary = collector_binary(self._build_timeout)
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="otelcol-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        picks_ports = any(
            variable is not None and variable not in self._env
            for variable in self._variables.values()
        )
        try:
            # A port picked by free_ports() can be taken before the Collector binds it; retry.
            for attempt in range(1, PORT_ATTEMPTS + 1):
                try:
                    self._launch()
                    self._wait_until_serving()
                except CollectorError:
                    self._terminate()
                    retry = picks_ports and "address already in use" in self.log()
                    if attempt == PORT_ATTEMPTS or not retry:
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
        env = {**os.environ, **self._env}
        wanted = {
            kind: variable
            for kind, variable in self._variables.items()
            if variable is not None and variable not in self._env
        }
        ports = iter(free_ports(len(wanted)))
        self._addresses = {}
        for kind, variable in self._variables.items():
            if variable is None:
                continue
            if kind in wanted:
                env[variable] = f"{HOST}:{next(ports)}"
            self._addresses[kind] = env[variable]
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [str(self._binary), f"--config={self._config}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._cwd,
                start_new_session=True,  # own process group: Ctrl-C reaches pytest only
            )

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if not self.running:
                assert self._process is not None
                raise CollectorError(
                    f"the Collector exited with status {self._process.returncode} while "
                    f"starting; log tail:\n{self.log_tail()}"
                )
            if self._serving():
                return
            if time.monotonic() > deadline:
                raise CollectorError(
                    f"the Collector's OTLP receivers ({', '.join(self._addresses.values())}) did "
                    f"not accept connections within {self._startup_timeout:.0f} s; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _serving(self) -> bool:
        for address in self._addresses.values():
            try:
                socket.create_connection((HOST, _port_of(address)), timeout=1.0).close()
            except OSError:
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

    def _address(self, kind: str) -> str:
        if not self._addresses:
            raise CollectorError("CollectorService is not started")
        try:
            return self._addresses[kind]
        except KeyError:
            raise CollectorError(f"this CollectorService has no OTLP/{kind} receiver") from None

    @property
    def otlp_http_endpoint(self) -> str:
        """Base URL of the OTLP/HTTP receiver; POST to ``<this>/v1/traces``."""
        return f"http://{HOST}:{_port_of(self._address('http'))}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        """URL of the OTLP/gRPC receiver (plaintext: the ``http`` scheme means insecure)."""
        return f"http://{HOST}:{_port_of(self._address('grpc'))}"

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

    def send_otlp_json(self, payload: Mapping[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """POST an OTLP/JSON ``ExportTraceServiceRequest`` to the receiver; return its reply.

        Raises:
            CollectorError: the receiver answered with an error status.
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
            raise CollectorError(
                f"OTLP/HTTP export failed: {exc.code} {exc.reason}: {detail}"
            ) from exc
        reply: dict[str, Any] = json.loads(body) if body else {}
        return reply
