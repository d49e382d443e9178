"""The package's layers: every module's imports, function-level ones too, obey the rules."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = "maeltrace"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE


class Rule(NamedTuple):
    """A forbidden edge: no module under ``importer`` imports one under ``forbidden``.

    Prefixes match a module and everything below it (``maeltrace.tools`` matches
    ``maeltrace.tools.bench``); ``exempt`` names importers the rule does not bind.
    """

    importer: str
    forbidden: str
    reason: str
    exempt: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The rule's test id."""
        return f"{self.importer}-x-{self.forbidden}"

    def breaks(self, edge: Edge) -> bool:
        """Whether ``edge`` is one the rule forbids."""
        return (
            under(edge.importer, self.importer)
            and under(edge.imported, self.forbidden)
            and not any(under(edge.importer, exempt) for exempt in self.exempt)
        )


class Only(NamedTuple):
    """An allow-list: modules under ``importer`` import only modules under ``allowed``.

    Prefixes match as in `Rule`; a module's imports of itself are never edges.
    """

    importer: tuple[str, ...]
    allowed: tuple[str, ...]
    reason: str

    @property
    def name(self) -> str:
        """The rule's test id."""
        return "base-only" if self.importer == BASE else "+".join(self.importer) + "-only"

    def breaks(self, edge: Edge) -> bool:
        """Whether ``edge`` leaves the allowed modules."""
        return any(under(edge.importer, p) for p in self.importer) and not any(
            under(edge.imported, p) for p in self.allowed
        )


BASE = (
    "maeltrace._version",
    "maeltrace._imports",
    "maeltrace._hotpath",
    "maeltrace._spanenc",
    "maeltrace.errors",
    "maeltrace.environment",
    "maeltrace.keys",
    "maeltrace.records",
    "maeltrace.stats",
    "maeltrace._clock",
    "maeltrace._files",
    "maeltrace._output",
    "maeltrace._runinfo",
    "maeltrace._metadata",
    "maeltrace._redact",
    "maeltrace._validate",
)
"""The base modules (DESIGN.md, "Layers"): the standard library and each other only."""

OLD_PATHS = (
    "maeltrace.keras",
    "maeltrace.tf_keras",
    "maeltrace.lightning",
    "maeltrace.pytorch_lightning",
    "maeltrace.transformers",
    "maeltrace.deep500",
)
"""The integrations' short (and old) import paths, which re-export `maeltrace.integrations`."""

RULES: list[Rule | Only] = [
    Rule(
        "maeltrace",
        "maeltrace.tools",
        "nothing in the library imports the tools; the cli dispatches to them",
        exempt=("maeltrace.tools", "maeltrace.cli"),
    ),
    Only(BASE, BASE, "the base modules import only the standard library and each other"),
    Only(
        ("maeltrace.devices",),
        (*BASE, "maeltrace.devices"),
        "device clocks import only the base; the registry imports their modules when chosen",
    ),
    Only(
        ("maeltrace.otel",),
        (*BASE, "maeltrace.otel"),
        "the OpenTelemetry code imports only the base: the timer hands it records, not itself",
    ),
    Rule(
        "maeltrace.collect",
        "maeltrace.timer",
        "the summary service rebuilds summaries from spans (otel, sinks), never from the Timer",
    ),
    Rule(
        "maeltrace.sinks",
        "maeltrace.timer",
        "sinks take a Summary or Records, never the Timer",
    ),
    Rule("maeltrace.sinks", "maeltrace.tools", "sinks never import the tools"),
    Rule(
        "maeltrace.distributed",
        "maeltrace.timer",
        "gather takes a Summary or Records, never the Timer",
    ),
    Rule("maeltrace.distributed", "maeltrace.tools", "gather never imports the tools"),
    Rule(
        "maeltrace",
        "maeltrace.integrations",
        "integrations are leaves that import their framework: the core never imports them",
        exempt=("maeltrace.integrations", *OLD_PATHS),
    ),
    Rule("maeltrace.timer", "maeltrace.sinks", "the timer never imports the sinks"),
    Rule("maeltrace.timer", "maeltrace.distributed", "the timer never imports gather"),
    Rule("maeltrace.timer", "maeltrace.collect", "the timer never imports the summary service"),
]
"""The layer rules (DESIGN.md, "Layers"); add one line per rule. Integrations never reach the
Timer's private members either, which imports cannot show: reviews keep that one."""

LAZY_REFERENCES: dict[str, frozenset[str]] = {
    "maeltrace.devices.registry": frozenset(
        {
            "maeltrace.devices.torch_cuda:torch_clock",
            "maeltrace.devices.tensorflow:tf_clock",
            "maeltrace.devices.jax:jax_clock",
            "maeltrace.devices.base:cpu_clock",
            "maeltrace.devices._probes:torch_gpu_in_use",
            "maeltrace.devices._probes:jax_gpu_in_use",
            "maeltrace.devices._probes:tf_gpu_in_use",
        }
    ),
    "maeltrace.timer": frozenset(
        {
            "maeltrace.distributed:gather_stats",
            "maeltrace.sinks.live:LiveLog",
            "maeltrace.sinks.mlflow:log_summary",
            "maeltrace.sinks.wandb:log_summary",
        }
    ),
}
"""Every ``"module:attribute"`` reference (`maeltrace._imports.load`) in the library, by the
module that holds it. They are how a lower layer names an implementation above it without
importing it (the clock registry; the seed's ``log_*_all`` and ``gather_stats`` on the Timer),
so they are not edges; this list keeps them few and visible: a new one must be added here."""

KNOWN_CYCLES: dict[frozenset[str], str] = {}
"""Cycles tolerated for now, each with what removes it: none is left (the clock registry and
maeltrace._runinfo removed the last two). A cycle found in the code must lie within one of them; an
entry that no longer matches a cycle must go. Never add one."""

ENFORCED_CYCLE_PREFIXES = ("maeltrace.tools",)
"""No cycle may touch these, whatever `KNOWN_CYCLES` says."""


class Edge(NamedTuple):
    """One import: ``importer`` imports ``imported`` at ``line``."""

    importer: str
    imported: str
    line: int


def under(module: str, prefix: str) -> bool:
    """Whether ``module`` is ``prefix`` or lies below it."""
    return module == prefix or module.startswith(prefix + ".")


def package_modules(root: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its ``__init__``); a compiled
    module is its ``.pyi`` stub, so ``from maeltrace import _hotpath`` is an edge to it, not
    to ``maeltrace``."""
    modules: dict[str, Path] = {}
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.pyi")]):
        if path.suffix == ".pyi" and path.with_suffix(".py").exists():
            continue
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(nodes: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports among ``nodes`` at any depth (functions, methods, try blocks), leaving out
    the bodies of ``if TYPE_CHECKING:``, which never run."""
    stack: list[ast.AST] = list(reversed(nodes))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(reversed(node.orelse))
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def module_imports(module: str, source: str, modules: Mapping[str, object]) -> list[Edge]:
    """The package modules that ``module`` (whose code is ``source``) imports.

    ``from a import b`` is an edge to ``a.b`` where that is a module, else to ``a``; relative
    imports resolve against ``module``'s package. The parent packages that Python imports on
    the way are not edges: every module would otherwise import ``maeltrace/__init__``.
    """
    is_package = module in modules and str(modules[module]).endswith("__init__.py")
    package = module if is_package else module.rpartition(".")[0]
    edges: list[Edge] = []
    for node in _import_nodes(ast.parse(source).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        edges.extend(
            Edge(module, target, node.lineno)
            for target in dict.fromkeys(targets)
            if under(target, PACKAGE) and target != module
        )
    return edges


def import_graph(root: Path = PACKAGE_DIR) -> list[Edge]:
    """Every import edge between the package's modules."""
    modules = package_modules(root)
    edges: list[Edge] = []
    for module, path in modules.items():
        if path.suffix != ".py":
            continue  # compiled: C imports nothing from the package
        edges.extend(module_imports(module, path.read_text(encoding="utf-8"), modules))
    return edges


def cycles(edges: list[Edge]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
        graph.setdefault(edge.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    # Iterative, so a deep chain of imports never meets the recursion limit.
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def describe(component: frozenset[str], edges: list[Edge]) -> str:
    """A cycle as its modules and the imports that join them, for a failure message."""
    inside = sorted(
        f"  {e.importer} -> {e.imported} (line {e.line})"
        for e in edges
        if e.importer in component and e.imported in component
    )
    return "{" + ", ".join(sorted(component)) + "}\n" + "\n".join(inside)


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_graph()


class TestImportReader:
    MODULES: Mapping[str, object] = dict.fromkeys(
        ["maeltrace", "maeltrace.a", "maeltrace.tools", "maeltrace.tools.bench", "maeltrace.p"]
    )

    def imported(self, source: str, module: str = "maeltrace.a") -> set[str]:
        return {e.imported for e in module_imports(module, source, self.MODULES)}

    def test_function_level_imports_count(self) -> None:
        source = "def f():\n    class C:\n        def g(self):\n            import maeltrace.p\n"
        assert self.imported(source) == {"maeltrace.p"}

    def test_imports_under_type_checking_do_not_count_but_its_else_branch_does(self) -> None:
        source = (
            "import typing\nfrom typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from maeltrace.tools import bench\n"
            "else:\n    import maeltrace.p\n"
            "if typing.TYPE_CHECKING:\n    import maeltrace.tools\n"
        )
        assert self.imported(source) == {"maeltrace.p"}

    def test_a_submodule_named_in_from_import_is_the_edge(self) -> None:
        assert self.imported("from maeltrace.tools import bench") == {"maeltrace.tools.bench"}
        assert self.imported("from maeltrace import Timer") == {"maeltrace"}

    def test_relative_imports_resolve_against_the_package(self) -> None:
        assert self.imported("from .tools import bench") == {"maeltrace.tools.bench"}
        assert self.imported("from .. import a", module="maeltrace.tools.bench") == {"maeltrace.a"}

    def test_imports_outside_the_package_are_not_edges(self) -> None:
        assert self.imported("import os\nfrom collections import abc\nimport maeltracex") == set()

    def test_cycles_are_found_and_a_chain_is_not_one(self) -> None:
        chain = [Edge("a", "b", 1), Edge("b", "c", 1)]
        loop = [*chain, Edge("c", "a", 1), Edge("c", "d", 1)]
        assert cycles(chain) == []
        assert cycles(loop) == [frozenset({"a", "b", "c"})]


class TestRules:
    def test_a_rule_forbids_its_edge_except_from_the_exempt(self) -> None:
        rule = Rule("maeltrace", "maeltrace.tools", "", exempt=("maeltrace.cli",))
        assert rule.breaks(Edge("maeltrace.timer", "maeltrace.tools.bench", 1))
        assert not rule.breaks(Edge("maeltrace.cli", "maeltrace.tools.bench", 1))
        assert not rule.breaks(Edge("maeltrace.timer", "maeltrace.toolsx", 1))

    def test_an_allow_list_forbids_every_other_edge(self) -> None:
        rule = Only(("maeltrace.otel",), ("maeltrace.keys", "maeltrace.otel"), "")
        assert not rule.breaks(Edge("maeltrace.otel.spans", "maeltrace.keys", 1))
        assert not rule.breaks(Edge("maeltrace.otel.spans", "maeltrace.otel.semconv", 1))
        assert rule.breaks(Edge("maeltrace.otel.spans", "maeltrace.timer", 1))
        assert not rule.breaks(Edge("maeltrace.timer", "maeltrace.sinks", 1))

    def test_every_base_module_exists(self) -> None:
        # A renamed base module would otherwise drop out of its rule unnoticed.
        assert set(BASE) <= set(package_modules())


def test_the_graph_reads_the_whole_package(edges: list[Edge]) -> None:
    importers = {e.importer for e in edges}
    assert {"maeltrace", "maeltrace.timer", "maeltrace.cli", "maeltrace.tools.bench"} <= importers
    # The cli reaches the tools only inside its functions: the reader must see those.
    assert any(
        e.importer == "maeltrace.cli" and under(e.imported, "maeltrace.tools") for e in edges
    )


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_no_module_breaks_a_layer_rule(rule: Rule | Only, edges: list[Edge]) -> None:
    broken = [f"{e.importer} imports {e.imported} (line {e.line})" for e in edges if rule.breaks(e)]
    assert not broken, f"{rule.reason}:\n" + "\n".join(broken)


_REFERENCE = re.compile(r"maeltrace(?:\.\w+)+:\w+")


def lazy_references(root: Path = PACKAGE_DIR) -> dict[str, frozenset[str]]:
    """The ``"module:attribute"`` string constants of each library module (tools excluded)."""
    found: dict[str, frozenset[str]] = {}
    for module, path in package_modules(root).items():
        if path.suffix != ".py" or under(module, "maeltrace.tools"):
            continue
        references = frozenset(
            node.value
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _REFERENCE.fullmatch(node.value)
        )
        if references:
            found[module] = references
    return found


def test_lazy_references_are_the_known_ones() -> None:
    assert lazy_references() == LAZY_REFERENCES


def test_every_lazy_reference_names_a_real_attribute() -> None:
    """Each reference resolves (by source, not by importing a framework)."""
    modules = package_modules()
    for references in LAZY_REFERENCES.values():
        for reference in references:
            module, _, attribute = reference.partition(":")
            tree = ast.parse(modules[module].read_text(encoding="utf-8"))
            defined = {
                node.name
                for node in tree.body
                if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
            }
            assert attribute in defined, reference


def test_importing_the_library_loads_no_tool() -> None:
    # The static rule's running counterpart: every library package, imported for real.
    code = (
        "import sys, maeltrace, maeltrace.timer, maeltrace.sinks.mlflow, maeltrace.sinks.wandb, "
        "maeltrace.otel.export, maeltrace.collect._mlflow_out, maeltrace.report; "
        "print(sorted(m for m in sys.modules if m.startswith('maeltrace.tools')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_cycle_touches_the_enforced_packages(edges: list[Edge]) -> None:
    touching = [
        describe(c, edges)
        for c in cycles(edges)
        if any(under(m, p) for m in c for p in ENFORCED_CYCLE_PREFIXES)
    ]
    assert not touching, "import cycles through the tools:\n" + "\n".join(touching)


def test_no_new_cycle(edges: list[Edge]) -> None:
    new = [describe(c, edges) for c in cycles(edges) if not any(c <= k for k in KNOWN_CYCLES)]
    assert not new, "new import cycles (break them; KNOWN_CYCLES only shrinks):\n" + "\n".join(new)


def test_every_known_cycle_is_still_there(edges: list[Edge]) -> None:
    found = cycles(edges)
    gone = [sorted(k) for k in KNOWN_CYCLES if not any(c <= k and len(c) > 1 for c in found)]
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES: {gone}"


if __name__ == "__main__":
    # `python tests/test_layers.py`: the cycles as they are now, known or not.
    all_edges = import_graph()
    for component in cycles(all_edges):
        known = KNOWN_CYCLES.get(next((k for k in KNOWN_CYCLES if component <= k), frozenset()))
        print(("known: " + known if known else "NEW") + "\n" + describe(component, all_edges))
    sys.exit(0)
