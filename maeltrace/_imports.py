"""Turns a missing optional package into an `ImportError` that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str) -> ModuleType:
    """Imports ``module``, which the ``maeltrace[extra]`` extra installs.

    Args:
        module: the module to import, such as ``mlflow``.
        extra: the extra of maeltrace that installs it, such as ``mlflow``.

    Raises:
        ImportError: the module is not installed (or fails to import); the message says
            ``pip install 'maeltrace[<extra>]'``, and the original error is its cause.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is needed here but could not be imported ({exc}); install it with: "
            f"pip install 'maeltrace[{extra}]'",
            name=module,
        ) from exc
