"""Imports done late: a missing optional package as an `ImportError` that names the extra to
install, and ``"module:attribute"`` references loaded when first used."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["load", "require"]


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


def load(reference: str) -> Any:
    """The object that ``reference`` (``"package.module:attribute"``) names, importing its
    module now.

    This is how a lower layer names an implementation that lives above it without importing
    it: the device clock registry names each clock's factory, and the `Timer` names the sinks
    and the cross-rank gather behind the seed's ``log_*_all`` and ``gather_stats``. Heavy
    frameworks are imported only when their implementation is first used.

    Raises:
        ValueError: ``reference`` is not of the form ``module:attribute``.
        ImportError: the module cannot be imported.
        AttributeError: the module has no such attribute.
    """
    module, sep, attribute = reference.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"{reference!r} is not a 'module:attribute' reference")
    return getattr(importlib.import_module(module), attribute)
