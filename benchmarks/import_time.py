"""Import cost of maeltrace, and which heavy frameworks ``import maeltrace`` drags in.

What it measures:
    * wall-clock: ``python -c "import maeltrace"`` in fresh subprocesses against
      ``python -c "pass"`` in the same run, interleaved, median of ``--runs`` each (default 7)
      after one untimed warm-up of each (which also writes any missing ``.pyc`` files). The
      import cost is the difference of the medians, set against the issue's 100 ms target;
    * ``python -X importtime -c "import maeltrace"``, the interpreter's own account: the
      cumulative time of the ``maeltrace`` entry (median over the same number of runs), how
      many modules its import loaded, and the slowest of them by self time;
    * which of torch, tensorflow, jax, mlflow, wandb and numpy are in ``sys.modules`` after
      ``import maeltrace`` in a fresh interpreter (the target: none of the first five), next
      to whether each is installed at all (a framework that is not installed cannot leak, so
      "not imported" proves the most where it is).

    Every child runs ``sys.executable``, so under ``uv run`` it is the project's virtual
    environment, with the same environment variables as this process.

How to run::

    uv run --group bench python benchmarks/import_time.py            # 7 runs each
    uv run --group bench python benchmarks/import_time.py --quick    # 3 runs each
    uv run --group bench python benchmarks/import_time.py --runs 15
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

try:
    from benchmarks import _common as common
except ModuleNotFoundError:  # run as a script: benchmarks/ is first on sys.path
    import _common as common  # type: ignore[no-redef]

DEFAULT_RUNS = 7
QUICK_RUNS = 3
TARGET_MS = 100.0
"""The issue's target: importing maeltrace costs at most this many milliseconds."""

FRAMEWORKS = ("torch", "tensorflow", "jax", "mlflow", "wandb")
"""Must not be imported by ``import maeltrace`` (the issue's target)."""
WATCHED = (*FRAMEWORKS, "numpy")
"""Reported after ``import maeltrace``; numpy is informational."""

IMPORT = "import maeltrace"
BASELINE = "pass"

# The snapshot is taken before the probe's own imports (json is one maeltrace may import too),
# so "new_modules" counts what maeltrace loaded and nothing else.
_PROBE = """
import sys
before = set(sys.modules)
import maeltrace
import importlib.util, json
watched = {watched!r}
print(json.dumps({{
    "new_modules": len(set(sys.modules) - before),
    "watched": {{
        name: {{
            "imported": name in sys.modules,
            "before": name in before,
            "installed": importlib.util.find_spec(name) is not None,
        }}
        for name in watched
    }},
}}))
"""


@dataclass(frozen=True, slots=True)
class ImportTimeEntry:
    """One line of ``-X importtime`` output.

    Attributes:
        name: the module.
        depth: nesting level (0 for a module imported directly by the command).
        self_us: time spent in the module itself, in microseconds.
        cumulative_us: the module and everything it imported, in microseconds.
    """

    name: str
    depth: int
    self_us: int
    cumulative_us: int


def _run(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=True, timeout=120
    )


def _wall_ms(code: str) -> float:
    started = perf_counter_ns()
    _run(["-c", code])
    return (perf_counter_ns() - started) / 1e6


def parse_importtime(stderr: str) -> list[ImportTimeEntry]:
    """Parses the lines ``python -X importtime`` writes to stderr, in their order.

    Args:
        stderr: the child's standard error.

    Returns:
        One entry per module, children before their parent, as the interpreter prints them.
    """
    entries = []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        fields = line[len("import time:") :].split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header line: "self [us] | cumulative | imported package"
        raw_name = fields[2]
        # The name is indented two spaces per level below the single space after the bar.
        depth = (len(raw_name) - len(raw_name.lstrip(" ")) - 1) // 2
        entries.append(ImportTimeEntry(raw_name.strip(), depth, int(fields[0]), int(fields[1])))
    return entries


def subtree(entries: Sequence[ImportTimeEntry], name: str) -> list[ImportTimeEntry]:
    """The entries that ``name``'s import loaded, itself included (last).

    Children are printed before their parent, so ``name``'s subtree is every entry after
    the previous entry at ``name``'s depth or above, up to ``name`` itself.
    """
    for end, entry in enumerate(entries):
        if entry.name == name:
            start = end
            while start > 0 and entries[start - 1].depth > entry.depth:
                start -= 1
            return list(entries[start : end + 1])
    return []


def measure_wall(runs: int) -> tuple[list[float], list[float]]:
    """Interleaved wall-clock runs of the baseline and the import, after one warm-up each.

    Returns:
        Milliseconds per run: the baseline's, then the import's.
    """
    baseline: list[float] = []
    imported: list[float] = []
    for i in range(runs + 1):
        # Alternating which goes first keeps a slow moment of the machine from always
        # landing on the same side.
        pair = [(BASELINE, baseline), (IMPORT, imported)]
        for code, into in pair if i % 2 else reversed(pair):
            ms = _wall_ms(code)
            if i > 0:
                into.append(ms)
    return baseline, imported


def measure_importtime(runs: int) -> tuple[list[float], list[ImportTimeEntry]]:
    """``-X importtime`` runs of ``import maeltrace``.

    Returns:
        The ``maeltrace`` entry's cumulative ms per run, and the subtree of the last run.
    """
    cumulative: list[float] = []
    tree: list[ImportTimeEntry] = []
    for _ in range(runs):
        tree = subtree(
            parse_importtime(_run(["-X", "importtime", "-c", IMPORT]).stderr), "maeltrace"
        )
        if tree:
            cumulative.append(tree[-1].cumulative_us / 1000)
    return cumulative, tree


def probe_modules() -> dict[str, Any]:
    """What a fresh interpreter has in ``sys.modules`` after ``import maeltrace``."""
    out = _run(["-c", _PROBE.format(watched=WATCHED)]).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


_table = common.table


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the measurements and prints them.

    Args:
        argv: command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status: 0.
    """
    parser = common.parser(__doc__, f"{QUICK_RUNS} runs each")
    parser.add_argument("--runs", type=int, help=f"timed runs each (default {DEFAULT_RUNS})")
    args = parser.parse_args(argv)
    runs = common.pick(args.runs, args.quick, QUICK_RUNS, DEFAULT_RUNS)
    if runs < 1:
        parser.error("--runs must be positive")

    print(f"maeltrace import time: {runs} fresh interpreters each (+1 warm-up), {sys.executable}")
    header = {
        "python": common.python_version(),
        "cpus": os.cpu_count(),
        "load avg 1m": common.load(),
    }
    print(common.header_line(header))
    print()
    baseline, imported = measure_wall(runs)
    base_ms = statistics.median(baseline)
    import_ms = statistics.median(imported)
    cost_ms = import_ms - base_ms
    rows = [
        [f'python -c "{BASELINE}"', f"{base_ms:.1f}", f"{min(baseline):.1f}", "1.00x"],
        [
            f'python -c "{IMPORT}"',
            f"{import_ms:.1f}",
            f"{min(imported):.1f}",
            f"{import_ms / base_ms:.2f}x",
        ],
    ]
    print(_table(["wall clock", "median ms", "min ms", "x baseline"], rows))
    verdict = "meets" if cost_ms <= TARGET_MS else "MISSES"
    print(
        f"\nimport cost (median - baseline median): {cost_ms:.1f} ms; "
        f"target <= {TARGET_MS:.0f} ms: {verdict} it"
    )
    # The medians carry whatever else the machine was doing; the minima are the least
    # disturbed runs, a floor for the cost that load cannot raise.
    print(f"least-disturbed estimate (min - baseline min): {min(imported) - min(baseline):.1f} ms")

    cumulative, tree = measure_importtime(runs)
    print()
    if not cumulative:
        print("-X importtime: no maeltrace entry found (was it imported already at startup?)")
    else:
        print(
            f"-X importtime: maeltrace cumulative {statistics.median(cumulative):.1f} ms "
            f"(median of {len(cumulative)}; min {min(cumulative):.1f}), "
            f"{len(tree)} modules loaded by its import (last run)"
        )
        slowest = sorted(tree, key=lambda e: e.self_us, reverse=True)[:10]
        print(
            _table(
                ["slowest by self time (last run)", "self ms", "cumulative ms"],
                [
                    [e.name, f"{e.self_us / 1000:.2f}", f"{e.cumulative_us / 1000:.2f}"]
                    for e in slowest
                ],
            )
        )

    probe = probe_modules()
    print()
    print(f"after import maeltrace: {probe['new_modules']} modules added to sys.modules")
    rows = []
    leaked = []
    for name in WATCHED:
        state = probe["watched"][name]
        if state["imported"] and not state["before"] and name in FRAMEWORKS:
            leaked.append(name)
        rows.append(
            [
                name,
                "yes" if state["installed"] else "no",
                "yes" if state["imported"] else "no",
                "must not" if name in FRAMEWORKS else "informational",
            ]
        )
    print(_table(["module", "installed", "in sys.modules", "target"], rows))
    if leaked:
        print(f"target (none of {', '.join(FRAMEWORKS)}): MISSES it, imported {leaked}")
    else:
        print(f"target (none of {', '.join(FRAMEWORKS)}): meets it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
