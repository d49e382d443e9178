"""The default ``service.name``: one per program, so two programs never share a service."""

from __future__ import annotations

import os
import sys
from pathlib import PurePath
from typing import Final

__all__ = [
    "GENERIC_FOLDER_NAMES",
    "GENERIC_SCRIPT_NAMES",
    "INTERACTIVE_SERVICE_NAME",
    "NOTEBOOK_SERVICE_NAME",
    "program_service_name",
    "service_name_of",
]

GENERIC_SCRIPT_NAMES: Final = frozenset(
    {
        "__main__",
        "app",
        "bench",
        "benchmark",
        "cli",
        "demo",
        "driver",
        "entrypoint",
        "eval",
        "evaluate",
        "evaluation",
        "example",
        "experiment",
        "finetune",
        "fine_tune",
        "infer",
        "inference",
        "job",
        "launch",
        "main",
        "model",
        "predict",
        "pretrain",
        "run",
        "script",
        "start",
        "task",
        "test",
        "train",
        "trainer",
        "training",
        "worker",
    }
)
"""Script names (without ``.py``, compared in lower case) that many programs share; such a
script's service name starts with its folder's name."""

GENERIC_FOLDER_NAMES: Final = frozenset(
    {
        "app",
        "apps",
        "bin",
        "code",
        "examples",
        "experiments",
        "lib",
        "notebooks",
        "scripts",
        "source",
        "src",
        "tools",
        "train",
        "training",
        "workspace",
    }
)
"""Folder names that say as little as a generic script name: the folder above is named too
(``~/weather/src/main.py`` is ``weather-src-main``)."""

_MAX_FOLDERS: Final = 3
"""At most this many folder names go into a service name."""

INTERACTIVE_SERVICE_NAME: Final = "python-interactive"
"""The service of an interactive session: the REPL, IPython, ``python -c``, standard input."""

NOTEBOOK_SERVICE_NAME: Final = "jupyter"
"""The service of a notebook kernel: Jupyter, JupyterLab, VS Code's notebooks, Colab."""

_INTERACTIVE_ARGV0: Final = frozenset({"", "-", "-c"})
_INTERACTIVE_SHELLS: Final = frozenset({"ipython", "ipython3", "bpython", "ptpython", "ptipython"})
_NOTEBOOK_KERNELS: Final = frozenset({"ipykernel", "ipykernel_launcher", "colab_kernel_launcher"})


def _folders_and_stem(path: PurePath) -> str:
    """``folder-...-stem`` for a script whose name is generic; its stem alone otherwise."""
    stem = path.stem
    if stem.lower() not in GENERIC_SCRIPT_NAMES:
        return stem
    # ``pkg/__main__.py`` (``python pkg/``, a zip app) is the package's own entry: its name.
    parts = [] if stem == "__main__" else [stem]
    for folder in list(path.parents)[:_MAX_FOLDERS]:
        # PurePath("app.pyz").stem is "app"; a root folder has no name.
        name = PurePath(folder.name).stem if folder.suffix == ".pyz" else folder.name
        if not name:
            break
        parts.insert(0, name)
        if name.lower() not in GENERIC_FOLDER_NAMES:
            break
    return "-".join(parts) or stem


def service_name_of(
    argv0: str, main_file: str | None = None, main_module: str | None = None
) -> str:
    """The default service name of a program, from how it was started.

    In order:

    * a notebook kernel (Jupyter, Colab): `NOTEBOOK_SERVICE_NAME` (``jupyter``);
    * an interactive session (REPL, IPython, ``python -c``, standard input):
      `INTERACTIVE_SERVICE_NAME` (``python-interactive``);
    * ``python -m pkg.mod``: the module's dotted name, ``pkg.mod`` (``python -m pkg``, which runs
      ``pkg/__main__.py``, gives ``pkg``), unless it is one word of `GENERIC_SCRIPT_NAMES`
      (``python -m train``): then as a script;
    * a script: its file name without the suffix (``prepare_weather.py`` gives
      ``prepare_weather``); a generic name (`GENERIC_SCRIPT_NAMES`: ``main``, ``train``,
      ``run``, ``app``, ...) gets its folder's name in front, so ``~/weather/train.py`` gives
      ``weather-train`` and ``~/ocean/train.py`` ``ocean-train``, while ``~/weather/eval.py``
      stays apart as ``weather-eval``; a generic folder (`GENERIC_FOLDER_NAMES`: ``src``,
      ``scripts``, ...) names the one above too, up to three folders
      (``~/weather/src/main.py`` gives ``weather-src-main``); ``pkg/__main__.py`` gives ``pkg``.

    Args:
        argv0: ``sys.argv[0]``.
        main_file: ``__main__.__file__`` (absolute since Python 3.9, where ``argv0`` is as
            typed), if any.
        main_module: the name of ``__main__.__spec__`` (set by ``python -m``), if any.
    """
    argv0_stem = PurePath(argv0).stem.lower() if argv0 else ""
    if argv0_stem in _NOTEBOOK_KERNELS or (main_module or "") in _NOTEBOOK_KERNELS:
        return NOTEBOOK_SERVICE_NAME
    if argv0 in _INTERACTIVE_ARGV0 or argv0_stem in _INTERACTIVE_SHELLS:
        return INTERACTIVE_SERVICE_NAME
    if main_module and main_module != "__main__":
        module = main_module.removesuffix(".__main__")
        if "." in module or module.lower() not in GENERIC_SCRIPT_NAMES:
            return module
    # os.path.abspath, not resolve(): a symlinked script keeps the name it was started by.
    return _folders_and_stem(PurePath(os.path.abspath(main_file or argv0)))


def program_service_name() -> str:
    """`service_name_of` this process: ``sys.argv[0]`` and the ``__main__`` module."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    main_file = getattr(main, "__file__", None)
    return service_name_of(
        sys.argv[0] if sys.argv else "",
        main_file if isinstance(main_file, str) else None,
        getattr(spec, "name", None),
    )
