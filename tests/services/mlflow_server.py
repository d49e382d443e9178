"""Run a real MLflow tracking server on a free loopback port for end-to-end tests.

The server is the ``mlflow`` executable of the running interpreter's environment, with a SQLite
backend store and proxied artifacts (uploads go over HTTP, as to a remote server), both in a
folder of the caller's::

    with MlflowServer(tmp_path) as server:
        client = mlflow.MlflowClient(tracking_uri=server.uri)

Only the standard library is used here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.services.jaeger import HOST, free_port

__all__ = ["MlflowServer", "MlflowServerError", "mlflow_executable"]

STARTUP_TIMEOUT = 180.0
"""Seconds to wait for ``/health``: about 13 s on a quiet machine, 20 to 40 s on a busy one."""
STOP_TIMEOUT = 10.0
PORT_ATTEMPTS = 3


class MlflowServerError(RuntimeError):
    """The server could not be started, or exited while starting."""


def mlflow_executable() -> Path:
    """The ``mlflow`` script next to the running interpreter (the project's environment).

    Raises:
        MlflowServerError: there is none.
    """
    path = Path(sys.executable).parent / "mlflow"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise MlflowServerError(f"no mlflow executable next to {sys.executable}")
    return path


class MlflowServer:
    """``mlflow server`` on a free loopback port; a context manager.

    Entering starts it and waits for ``/health``; leaving (also on an exception, and when the
    start fails) terminates its whole process group (uvicorn and the job runner included),
    killing it after a few seconds if needed.

    Args:
        folder: where the SQLite store (``mlflow.db``), the artifacts (``artifacts/``) and the
            server's log (``server.log``) go.
        startup_timeout: seconds to wait for ``/health``.
    """

    def __init__(self, folder: str | os.PathLike[str], *, startup_timeout: float = STARTUP_TIMEOUT):
        self.folder = Path(folder)
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """The tracking URI, ``http://127.0.0.1:<port>``."""
        if self.port is None:
            raise MlflowServerError("the server is not started")
        return f"http://{HOST}:{self.port}"

    @property
    def db_path(self) -> Path:
        """The server's SQLite backend store."""
        return self.folder / "mlflow.db"

    @property
    def artifacts_path(self) -> Path:
        """Where the server keeps the artifacts it receives."""
        return self.folder / "artifacts"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr."""
        return self.folder / "server.log"

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

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
        """Starts the server and waits until ``/health`` answers; returns ``self``.

        Raises:
            MlflowServerError: it exited or did not answer in time (with its log's tail).
        """
        if self._process is not None:
            raise MlflowServerError("this MlflowServer is already running")
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            # A port free a moment ago can be taken before the server binds it; retry then.
            for attempt in range(1, PORT_ATTEMPTS + 1):
                self._launch()
                try:
                    self._wait_until_healthy()
                except MlflowServerError:
                    self._terminate()
                    if attempt == PORT_ATTEMPTS or "address already in use" not in self.log_tail():
                        raise
                else:
                    return self
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Stops the server's process group; safe to call repeatedly."""
        self._terminate()

    def _launch(self) -> None:
        self.port = free_port()
        command = [
            str(mlflow_executable()),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.db_path.resolve()}",
            "--artifacts-destination",
            str(self.artifacts_path.resolve()),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # No job runner: it starts seven more worker processes that tracking does not need.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
                start_new_session=True,  # its own process group, stopped as one
            )

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            process = self._process
            assert process is not None
            if process.poll() is not None:
                raise MlflowServerError(
                    f"mlflow server exited with status {process.returncode} while starting; "
                    f"log tail:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise MlflowServerError(
                    f"mlflow server did not answer {self.uri}/health within "
                    f"{self.startup_timeout:.0f} s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def healthy(self) -> bool:
        """Whether ``/health`` answers ``200`` now."""
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):  # the group is gone already
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; children it left in the group go with a kill.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return
