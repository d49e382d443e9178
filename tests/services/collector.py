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

import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.services.process import (  # the constants stay importable from here
    HOST,
    PORT_ATTEMPTS,  # noqa: F401
    STOP_TIMEOUT,  # noqa: F401
    BinaryService,
    accepting,
    built_binary,
    free_ports,
)

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

GRPC_VARIABLE = "OTELCOL_OTLP_GRPC"
HTTP_VARIABLE = "OTELCOL_OTLP_HTTP"

# A cold build downloads ~500 MB of modules and compiles for ~2.5 minutes on 2 cores.
DEFAULT_BUILD_TIMEOUT = 30 * 60.0
VALIDATE_TIMEOUT = 60.0

_ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)")


class CollectorError(RuntimeError):
    """The Collector could not be built, started or reached."""


def collector_binary(build_timeout: float = DEFAULT_BUILD_TIMEOUT) -> Path:
    """Return the Collector binary: ``$MAELTRACE_OTELCOL_BIN`` or what ``build-collector`` built.

    Raises:
        CollectorError: the variable names no executable, or the build fails or times out.
    """
    return built_binary(BUILD_SCRIPT, ENV_BINARY, build_timeout, CollectorError)


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


def _port_of(address: str) -> int:
    """The port of ``host:port`` (or ``scheme://host:port``)."""
    return int(address.rsplit(":", 1)[1].rstrip("/"))


class CollectorService(BinaryService):
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

    _error = CollectorError
    _display_name = "the Collector"
    _log_prefix = "otelcol-"

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
        super().__init__(
            binary,
            config=config,
            startup_timeout=startup_timeout,
            build_timeout=build_timeout,
            log_path=log_path,
        )
        self._env = dict(env or {})
        self._variables = {"grpc": grpc_variable, "http": http_variable}
        self._cwd = Path(cwd) if cwd is not None else None
        self._addresses: dict[str, str] = {}

    # -- lifecycle (start, stop, running: see ServiceProcess) --------------------------------

    def _find_binary(self) -> Path:
        return collector_binary(self._build_timeout)

    def _port_was_taken(self) -> bool:
        # Only ports picked here are retried; the caller's own are not.
        picks_ports = any(
            variable is not None and variable not in self._env
            for variable in self._variables.values()
        )
        return picks_ports and super()._port_was_taken()

    def _launch(self) -> None:
        assert self._binary is not None
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
        self._spawn([str(self._binary), f"--config={self._config}"], env, cwd=self._cwd)

    def _serving(self) -> bool:
        return accepting(_port_of(address) for address in self._addresses.values())

    def _not_serving(self) -> str:
        return (
            f"the Collector's OTLP receivers ({', '.join(self._addresses.values())}) did "
            "not accept connections"
        )

    # -- endpoints ---------------------------------------------------------------------------

    def _address(self, kind: str) -> str:
        if not self._addresses:
            raise CollectorError("CollectorService is not started")
        try:
            return self._addresses[kind]
        except KeyError:
            raise CollectorError(f"this CollectorService has no OTLP/{kind} receiver") from None

    def _otlp_port(self, kind: str) -> int:  # for otlp_http_endpoint, otlp_grpc_endpoint
        return _port_of(self._address(kind))
