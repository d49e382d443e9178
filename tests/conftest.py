"""Shared fixtures: modules that set ``BOTH_RECORDERS = True`` run against both recorders."""

from __future__ import annotations

import pytest

from maeltrace.environment import MAELTRACE_DISABLED, MAELTRACE_PURE_PYTHON

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
