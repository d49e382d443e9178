"""What the test services share: free ports, a built binary, and a process-group lifecycle.

:class:`ServiceProcess` is the base of :class:`~tests.services.jaeger.JaegerService`,
:class:`~tests.services.collector.CollectorService` and
:class:`~tests.services.mlflow_server.MlflowServer`: a context manager that starts a process in
its own process group with its output in a log file, waits until it serves, retries when a port
picked for it was taken meanwhile, and terminates (then kills) the whole group.

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
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

__all__ = [
    "ADDRESS_IN_USE",
    "HOST",
    "PORT_ATTEMPTS",
    "STOP_TIMEOUT",
    "BinaryService",
    "ServiceProcess",
    "accepting",
    "built_binary",
    "free_port",
    "free_ports",
    "post_otlp_json",
    "signal_group",
    "tail",
]

HOST = "127.0.0.1"
STOP_TIMEOUT = 10.0
PORT_ATTEMPTS = 3
ADDRESS_IN_USE = "address already in use"


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


def accepting(ports: Iterable[int], host: str = HOST) -> bool:
    """Whether every one of ``ports`` on ``host`` accepts a TCP connection now."""
    for port in ports:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
        except OSError:
            return False
    return True


def tail(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


def built_binary(
    build_script: Path,
    env_binary: str,
    build_timeout: float,
    error: type[Exception],
) -> Path:
    """Return the executable named by ``$<env_binary>``, or else the one ``build_script`` builds.

    The script prints the binary's path as its last line of stdout.

    Raises:
        error: the variable names no executable, or the build fails or times out.
    """
    override = os.environ.get(env_binary)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise error(f"{env_binary}={override!r} is not an executable file")
        return path
    try:
        result = subprocess.run(
            [str(build_script)],
            capture_output=True,
            text=True,
            timeout=build_timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise error(
            f"{build_script} did not finish in {build_timeout:.0f} s:\n{tail(stderr, 40)}"
        ) from exc
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise error(
            f"{build_script} failed (exit status {result.returncode}):\n{tail(result.stderr, 40)}"
        )
    path = Path(lines[-1])
    if not path.is_file():
        raise error(f"{build_script} printed {path}, which is not a file")
    return path


def signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group that ``process`` leads (``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(process.pid, sig)


def post_otlp_json(
    endpoint: str,
    payload: Mapping[str, Any],
    timeout: float,
    error: type[Exception],
) -> dict[str, Any]:
    """POST an OTLP/JSON ``ExportTraceServiceRequest`` to ``<endpoint>/v1/traces``.

    Returns the receiver's reply (``{}`` for an empty one).

    Raises:
        error: the receiver answered with an error status.
    """
    request = urllib.request.Request(
        f"{endpoint}/v1/traces",
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
        raise error(f"OTLP/HTTP export failed: {exc.code} {exc.reason}: {detail}") from exc
    reply: dict[str, Any] = json.loads(body) if body else {}
    return reply


class ServiceProcess:
    """A server process in its own process group, logging to a file; a context manager.

    ``start()`` (or entering the ``with`` block) calls :meth:`_prepare`, then :meth:`_launch`
    and waits until :meth:`_serving`; should either fail while the log says a port was taken,
    it tries again (:data:`PORT_ATTEMPTS` in all). ``stop()`` (or leaving the block, also on an
    exception, and when the start fails) terminates the process group, kills it if it does not
    exit within :data:`STOP_TIMEOUT` seconds, and deletes a temporary log.

    Subclasses set the class attributes and implement :meth:`_launch` (through :meth:`_spawn`),
    :meth:`_serving` and :meth:`_not_serving`.

    Args:
        startup_timeout: seconds to wait for the process to serve.
        log_path: where the process's stdout and stderr go; default a temporary file (made by
            :meth:`_prepare`) that ``stop()`` deletes. Pass a path to keep the log.
    """

    _error: ClassVar[type[RuntimeError]] = RuntimeError
    """The exception raised for every failure."""
    _display_name: ClassVar[str] = "the process"
    """How messages name the process (``<name> exited with status ...``)."""
    _log_prefix: ClassVar[str] = "service-"
    """The prefix of a temporary log's name."""
    _poll_interval: ClassVar[float] = 0.1
    """Seconds between checks while waiting for the process to serve."""

    def __init__(
        self,
        *,
        startup_timeout: float,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self._startup_timeout = startup_timeout
        self._keep_log = log_path is not None
        self._log_path = Path(log_path) if log_path is not None else None
        self._process: subprocess.Popen[bytes] | None = None

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
        """Start the process and wait until it serves; return ``self``.

        Raises:
            the class's error: preparing failed, or the process exited or did not serve in time
                (the message ends with the tail of its log).
        """
        if self._process is not None:
            raise self._error(f"this {type(self).__name__} is already running")
        self._prepare()
        try:
            # A port picked free a moment ago can be taken before the process binds it; retry.
            for attempt in range(1, PORT_ATTEMPTS + 1):
                try:
                    self._launch()
                    self._wait_until_serving()
                except self._error:
                    self._terminate()
                    if attempt == PORT_ATTEMPTS or not self._port_was_taken():
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

    def _prepare(self) -> None:
        """Get ready to launch (once per ``start()``): by default, make a temporary log."""
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix=self._log_prefix, suffix=".log")
            os.close(fd)
            self._log_path = Path(name)

    def _launch(self) -> None:
        """Start the process (one attempt), normally through :meth:`_spawn`."""
        raise NotImplementedError

    def _spawn(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        append: bool = False,
    ) -> None:
        """Start ``command`` as the leader of a new process group, its output to the log."""
        log_path = self.log_path
        assert log_path is not None
        with log_path.open("ab" if append else "wb") as log:
            self._process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # own process group: Ctrl-C reaches pytest only
            )

    def _serving(self) -> bool:
        """Whether the process serves now."""
        raise NotImplementedError

    def _not_serving(self) -> str:
        """The start of the message for a process that did not serve in time."""
        raise NotImplementedError

    def _port_was_taken(self) -> bool:
        """Whether a failed attempt is worth retrying: a port was taken, says the log."""
        return ADDRESS_IN_USE in self.log()

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if not self.running:
                assert self._process is not None
                raise self._error(
                    f"{self._display_name} exited with status {self._process.returncode} while "
                    f"starting; log tail:\n{self.log_tail()}"
                )
            if self._serving():
                return
            if time.monotonic() > deadline:
                raise self._error(
                    f"{self._not_serving()} within {self._startup_timeout:.0f} s; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(self._poll_interval)

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # The process leads its own process group (start_new_session), so signal the group.
        signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            signal_group(process, signal.SIGKILL)
            process.wait()

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    # -- log ---------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path | None:
        """The file receiving the process's output, while it exists."""
        return self._log_path

    def log(self) -> str:
        """The process's output so far (empty before start or after a temporary log is gone)."""
        log_path = self.log_path
        if log_path is None:
            return ""
        try:
            return log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the process's output."""
        return tail(self.log(), lines)


class BinaryService(ServiceProcess):
    """A :class:`ServiceProcess` running a binary built by a ``scripts/build-*`` script.

    ``start()`` finds the binary through :meth:`_find_binary` unless one was given. Subclasses
    implement that, :meth:`_launch` (with ``self._binary`` and ``self._config``),
    :meth:`_serving`, :meth:`_not_serving` and :meth:`_otlp_port`.

    Args:
        binary: the executable; default :meth:`_find_binary`.
        config: the configuration file.
        startup_timeout: seconds to wait for the process to serve, after the build.
        build_timeout: seconds allowed for the build.
        log_path: see :class:`ServiceProcess`.
    """

    def __init__(
        self,
        binary: str | os.PathLike[str] | None,
        *,
        config: str | os.PathLike[str],
        startup_timeout: float,
        build_timeout: float,
        log_path: str | os.PathLike[str] | None,
    ) -> None:
        super().__init__(startup_timeout=startup_timeout, log_path=log_path)
        self._binary = Path(binary) if binary is not None else None
        self._config = Path(config)
        self._build_timeout = build_timeout

    def _find_binary(self) -> Path:
        """Build or find the executable (allowed ``self._build_timeout`` seconds)."""
        raise NotImplementedError

    def _prepare(self) -> None:
        if self._binary is None:
            self._binary = self._find_binary()
        super()._prepare()

    def _otlp_port(self, kind: str) -> int:
        """The port of the OTLP receiver of ``kind`` (``"grpc"`` or ``"http"``)."""
        raise NotImplementedError

    @property
    def otlp_http_endpoint(self) -> str:
        """Base URL of the OTLP/HTTP receiver; POST to ``<this>/v1/traces``."""
        return f"http://{HOST}:{self._otlp_port('http')}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        """URL of the OTLP/gRPC receiver (plaintext: the ``http`` scheme means insecure)."""
        return f"http://{HOST}:{self._otlp_port('grpc')}"

    def send_otlp_json(self, payload: Mapping[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """POST an OTLP/JSON ``ExportTraceServiceRequest`` to the receiver; return its reply.

        Raises:
            the class's error: the receiver answered with an error status.
        """
        return post_otlp_json(self.otlp_http_endpoint, payload, timeout, self._error)
