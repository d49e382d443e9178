"""Shared fixtures: modules that set ``BOTH_RECORDERS = True`` run against both recorders."""

from __future__ import annotations

import importlib.util
import os

import pytest

from maeltrace.environment import MAELTRACE_DISABLED, MAELTRACE_PURE_PYTHON

# TensorFlow, once loaded, makes the later load of triton (which torch's optimizers import
# through torch._dynamo) abort the interpreter; loaded first, both work. The framework tests
# share one process, so where both are installed torch's compiler stack loads first.
if importlib.util.find_spec("torch") and importlib.util.find_spec("tensorflow"):
    import torch._dynamo  # noqa: F401

RECORDERS = ("compiled", "python")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if getattr(metafunc.module, "BOTH_RECORDERS", False):
        metafunc.parametrize("recorder", RECORDERS, indirect=True)


@pytest.fixture(autouse=True)
def recorder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which recorder timers built in the test use; ``compiled`` unless parametrized."""
    monkeypatch.delenv(MAELTRACE_DISABLED, raising=False)
    choice: str = getattr(request, "param", "compiled")
    if choice == "python":
        monkeypatch.setenv(MAELTRACE_PURE_PYTHON, "1")
    else:
        monkeypatch.delenv(MAELTRACE_PURE_PYTHON, raising=False)
    return choice


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
