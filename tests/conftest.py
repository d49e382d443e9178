"""Shared fixtures: modules that set ``BOTH_RECORDERS = True`` run against both recorders."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from maeltrace.environment import (
    MAELTRACE_DISABLED,
    MAELTRACE_EXPORT,
    MAELTRACE_OUTPUT_DIR,
    MAELTRACE_PURE_PYTHON,
)
from tests.services.jaeger import JaegerService
from tests.services.mlflow_server import MlflowServer

# TensorFlow, once loaded, makes the later load of triton (which torch's optimizers import
# through torch._dynamo) abort the interpreter; loaded first, both work. The framework tests
# share one process, so where both are installed torch's compiler stack loads first.
if importlib.util.find_spec("torch") and importlib.util.find_spec("tensorflow"):
    import torch._dynamo  # noqa: F401

RECORDERS = ("compiled", "python")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if getattr(metafunc.module, "BOTH_RECORDERS", False):
        metafunc.parametrize("recorder", RECORDERS, indirect=True)


_MLFLOW_URI_MODULE = "mlflow.tracking._tracking_service.utils"


@pytest.fixture(autouse=True)
def mlflow_tracking_uri_restored() -> Iterator[None]:
    """Puts MLflow's global tracking URI back after each test: trainers' MLflow loggers set it
    (Lightning's ``MLFlowLogger`` calls ``mlflow.set_tracking_uri``, which also sets
    ``MLFLOW_TRACKING_URI``), and a later test would find runs in a deleted temporary store."""
    import sys

    def current() -> str | None:
        module = sys.modules.get(_MLFLOW_URI_MODULE)
        return getattr(module, "_tracking_uri", None) if module is not None else None

    before, environ = current(), os.environ.get("MLFLOW_TRACKING_URI")
    yield
    module = sys.modules.get(_MLFLOW_URI_MODULE)
    if module is not None and current() != before:
        module.set_tracking_uri(before)  # None unsets the variable too
    if os.environ.get("MLFLOW_TRACKING_URI") != environ:
        if environ is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = environ


@pytest.fixture(autouse=True)
def recorder(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> str:
    """Which recorder timers built in the test use; ``compiled`` unless parametrized.

    Also keeps each test's timers to themselves: no export unless a test asks for it
    (``Timer(export=True)``), and any output under the test's own folder, with the standard
    OTLP variables of the machine out of the way.
    """
    monkeypatch.delenv(MAELTRACE_DISABLED, raising=False)
    monkeypatch.setenv(MAELTRACE_EXPORT, "0")
    monkeypatch.setenv(MAELTRACE_OUTPUT_DIR, str(tmp_path / "maeltrace-out"))
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    choice: str = getattr(request, "param", "compiled")
    if choice == "python":
        monkeypatch.setenv(MAELTRACE_PURE_PYTHON, "1")
    else:
        monkeypatch.delenv(MAELTRACE_PURE_PYTHON, raising=False)
    return choice


# -- real services --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JaegerService]:
    """A Jaeger v2 on free loopback ports (built from Go modules on first use), for the whole
    session; its log stays in pytest's temp directory."""
    log = tmp_path_factory.mktemp("jaeger") / "jaeger.log"
    with JaegerService(log_path=log) as service:
        yield service


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server on SQLite, on a free loopback port, for the whole session
    (it takes 15 to 30 s to start here)."""
    from mlflow.tracking import MlflowClient

    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as running:
        # A fresh server takes seconds over its first run; have that done before the tests.
        client = MlflowClient(tracking_uri=running.uri)
        client.set_terminated(client.create_run("0").info.run_id)
        yield running


# -- no silent skips in CI ---------------------------------------------------------------------

NO_SKIPS = "MAELTRACE_NO_SKIPS"
_skipped: list[str] = []


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _skipped.append(f"{report.nodeid}: {report.longrepr}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(f"{report.nodeid}: {report.longrepr}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With MAELTRACE_NO_SKIPS=1 (as scripts/test sets it), a skipped test fails the run."""
    if os.environ.get(NO_SKIPS) == "1" and _skipped and exitstatus == 0:
        print(f"\n{NO_SKIPS}=1, but {len(_skipped)} tests were skipped:", *_skipped, sep="\n  ")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
