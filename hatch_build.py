"""Hatch build hook: compiles maeltrace/_hotpath.c and maeltrace/_spanenc.c, or builds a
pure-Python wheel if it can't.

The compiled recorder and span encoder are optimisations; the package works without them (see
maeltrace/_recorder.py and maeltrace/otel/_encode.py). ``MAELTRACE_NO_EXTENSION=1`` skips the
compile.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

MODULES = ("_hotpath", "_spanenc")
"""The compiled modules, each from maeltrace/<name>.c."""


def _compile(root: Path, source: Path, output: Path) -> None:
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    flags = ["-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", "-std=c11"]
    cmd = [*cc, *flags, f"-I{include}", str(root / source), "-o", str(output)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class HotPathBuildHook(BuildHookInterface):  # type: ignore[type-arg]  # hatchling is untyped
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or os.environ.get("MAELTRACE_NO_EXTENSION") == "1":
            return
        root = Path(self.root)
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        built = []
        for name in MODULES:
            # Editable installs import from the source tree, so the module is built there.
            output = root / "maeltrace" / f"{name}{suffix}"
            try:
                _compile(root, Path("maeltrace") / f"{name}.c", output)
            except (OSError, subprocess.CalledProcessError) as exc:
                detail = getattr(exc, "stderr", "") or str(exc)
                reason = detail.strip()
                print(f"maeltrace: {name} stays pure Python ({reason})", file=sys.stderr)
                continue
            built.append((name, output))
        if not built:
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            for name, output in built:
                build_data["force_include"][str(output)] = f"maeltrace/{name}{suffix}"
