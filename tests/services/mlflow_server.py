"""Run a real MLflow tracking server on a free loopback port for end-to-end tests.

The server is the ``mlflow`` executable of the running interpreter's environment, with a SQLite
backend store and proxied artifacts (uploads go over HTTP, as to a remote server), both in a
folder of the caller's::

    with MlflowServer(tmp_path) as server:
        client = mlflow.MlflowClient(tracking_uri=server.uri)

Only the standard library is used here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.services.process import (  # the constants stay importable from here
    ADDRESS_IN_USE,
    HOST,
    PORT_ATTEMPTS,  # noqa: F401
    STOP_TIMEOUT,
    ServiceProcess,
    free_port,
    signal_group,
)

__all__ = ["MlflowServer", "MlflowServerError", "mlflow_executable"]

STARTUP_TIMEOUT = 180.0
"""Seconds to wait for ``/health``: about 13 s on a quiet machine, 20 to 40 s on a busy one."""


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


class MlflowServer(ServiceProcess):
    """``mlflow server`` on a free loopback port; a context manager.

    Entering starts it and waits for ``/health``; leaving (also on an exception, and when the
    start fails) terminates its whole process group (uvicorn and the job runner included),
    killing it after a few seconds if needed.

    Args:
        folder: where the SQLite store (``mlflow.db``), the artifacts (``artifacts/``) and the
            server's log (``server.log``) go.
        startup_timeout: seconds to wait for ``/health``.
    """

    _error = MlflowServerError
    _display_name = "mlflow server"
    _poll_interval = 0.2

    def __init__(self, folder: str | os.PathLike[str], *, startup_timeout: float = STARTUP_TIMEOUT):
        super().__init__(startup_timeout=startup_timeout)
        self.folder = Path(folder)
        self.port: int | None = None

    @property
    def startup_timeout(self) -> float:
        """Seconds to wait for ``/health``."""
        return self._startup_timeout

    @startup_timeout.setter
    def startup_timeout(self, value: float) -> None:
        self._startup_timeout = value

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

    # -- lifecycle (start, stop, running, log_tail: see ServiceProcess) ---------------------

    def _prepare(self) -> None:
        # The log is the folder's server.log, kept and appended to: no temporary one.
        self.folder.mkdir(parents=True, exist_ok=True)

    def _port_was_taken(self) -> bool:
        return ADDRESS_IN_USE in self.log_tail()  # the log holds earlier runs too

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
        self._spawn(command, env, cwd=self.folder, append=True)  # its own group, stopped as one

    def healthy(self) -> bool:
        """Whether ``/health`` answers ``200`` now."""
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _serving(self) -> bool:
        return self.healthy()

    def _not_serving(self) -> str:
        return f"mlflow server did not answer {self.uri}/health"

    def _terminate(self) -> None:
        # Unlike the base class's, this signals the group even after the leader exited, and
        # kills what the leader left in it.
        process, self._process = self._process, None
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            signal_group(process, sig)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; children it left in the group go with a kill.
            signal_group(process, signal.SIGKILL)
            return
