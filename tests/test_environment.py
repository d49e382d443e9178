"""maeltrace.environment: every variable in one module, read only there, listed in the README."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import pytest

from maeltrace import environment
from maeltrace.environment import env_flag, env_int, env_str

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "maeltrace"

_READERS = frozenset({"environ", "environb", "getenv", "getenvb"})


class TestTheReadme:
    def test_its_table_lists_exactly_the_variables_defined(self) -> None:
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        section = readme.split("## Environment variables\n", 1)[1].split("\n## ", 1)[0]
        rows = [line for line in section.splitlines() if line.startswith("| `")]
        listed = [
            name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])
        ]
        assert len(listed) == len(set(listed)), "a variable is listed twice"
        assert set(listed) == set(environment.VARIABLES)

    def test_every_variable_is_exported_and_documented(self) -> None:
        names = {name for name in environment.__all__ if name.isupper() and name != "VARIABLES"}
        assert names == set(environment.VARIABLES)
        source = (PACKAGE_DIR / "environment.py").read_text(encoding="utf-8")
        for name in environment.VARIABLES:
            # Each constant is followed by its docstring.
            assert re.search(rf'^{name}: Final = "{name}"\n"""', source, re.M), name


def _reads(path: Path) -> list[str]:
    """Where a module reads the environment: ``line: source`` for each use of ``os.environ``,
    ``os.environb``, ``os.getenv`` or ``os.getenvb``, and each import of them from ``os``.

    Copying the whole environment for a child process (``dict(os.environ)``,
    ``os.environ.copy()``) is not a read, nor is setting or removing a variable
    (``os.environ[name] = value``, ``del os.environ[name]``, ``os.environ.pop(name, None)``).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    copies: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "dict" and len(node.args) == 1:
                copies.add(id(node.args[0]))
            elif isinstance(func, ast.Attribute) and func.attr in ("copy", "pop"):
                copies.add(id(func.value))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del):
            copies.add(id(node.value))
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in _READERS
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and id(node) not in copies
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [
                f"{node.lineno}: from os import {a.name}" for a in node.names if a.name in _READERS
            ]
    return sorted(found, key=lambda read: int(read.split(":")[0]))


class TestOnlyEnvironmentReadsTheEnvironment:
    def test_no_other_module_reads_it(self) -> None:
        offenders = {}
        for path in sorted(PACKAGE_DIR.rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative == "maeltrace/environment.py":
                continue
            reads = _reads(path)
            if reads:
                offenders[relative] = reads
        assert offenders == {}, "read the environment through maeltrace.environment"

    def test_the_checker_sees_every_kind_of_read(self, tmp_path: Path) -> None:
        module = tmp_path / "m.py"
        module.write_text(
            "import os\nfrom os import getenv\n"
            "a = os.environ['A']\nb = os.environ.get('B')\nc = os.getenv('C')\n"
            "d = 'D' in os.environ\ne = os.environb.get(b'E')\n"
            "child = dict(os.environ)\nother = os.environ.copy()\n"
            "os.environ['F'] = '1'\ndel os.environ['F']\nos.environ.pop('G', None)\n",
            encoding="utf-8",
        )
        assert [read.split(":")[0] for read in _reads(module)] == ["2", "3", "4", "5", "6", "7"]


class TestEnvFlag:
    @pytest.mark.parametrize("raw", ["1", "true", "TRUE", " yes ", "On"])
    def test_yes_words_are_true(self, raw: str) -> None:
        assert env_flag("X", environ={"X": raw}) is True

    @pytest.mark.parametrize("raw", ["0", "false", "No", " off "])
    def test_no_words_are_false(self, raw: str) -> None:
        assert env_flag("X", default=True, environ={"X": raw}) is False

    @pytest.mark.parametrize("environ", [{}, {"X": ""}, {"X": "   "}])
    def test_unset_or_empty_gives_the_default(self, environ: dict[str, str]) -> None:
        assert env_flag("X", environ=environ) is False
        assert env_flag("X", default=True, environ=environ) is True

    def test_another_word_is_a_value_error_naming_variable_and_value(self) -> None:
        with pytest.raises(ValueError, match=r"X='maybe' is not a boolean"):
            env_flag("X", environ={"X": "maybe"})

    def test_reads_this_process_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MAELTRACE_TEST_FLAG", "yes")
        assert env_flag("MAELTRACE_TEST_FLAG") is True

    @pytest.mark.parametrize(
        ("raw", "expected"), [("true", True), (" TRUE ", True), ("false", False)]
    )
    def test_the_opentelemetry_rule_takes_true_and_false(self, raw: str, expected: bool) -> None:
        assert env_flag("OTEL_X", environ={"OTEL_X": raw}, opentelemetry=True) is expected

    @pytest.mark.parametrize("raw", ["1", "yes", "on", "maybe"])
    def test_the_opentelemetry_rule_warns_and_gives_false_for_other_words(
        self, raw: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.WARNING, logger="maeltrace.otel.export"):
            assert env_flag("OTEL_X", environ={"OTEL_X": raw}, opentelemetry=True) is False
        assert f"OTEL_X={raw!r}" in caplog.text


class TestEnvInt:
    @pytest.mark.parametrize(("raw", "expected"), [("7", 7), (" 42 ", 42), ("-3", -3)])
    def test_reads_whole_numbers(self, raw: str, expected: int) -> None:
        assert env_int("N", 0, environ={"N": raw}) == expected

    @pytest.mark.parametrize("environ", [{}, {"N": ""}, {"N": "  "}])
    def test_unset_or_empty_gives_the_default(self, environ: dict[str, str]) -> None:
        assert env_int("N", 5, minimum=10, environ=environ) == 5

    @pytest.mark.parametrize("raw", ["lots", "1.5", "4MiB"])
    def test_anything_else_is_a_value_error_naming_variable_and_value(self, raw: str) -> None:
        with pytest.raises(ValueError, match=re.escape(f"N={raw!r} is not a whole number")):
            env_int("N", 0, environ={"N": raw})

    def test_below_the_minimum_is_a_value_error(self) -> None:
        assert env_int("N", 0, minimum=10, environ={"N": "10"}) == 10
        with pytest.raises(ValueError, match=r"N='9' is below the minimum, 10"):
            env_int("N", 0, minimum=10, environ={"N": "9"})


class TestEnvStr:
    def test_gives_the_value_as_set(self) -> None:
        assert env_str("S", environ={"S": " a b "}) == " a b "

    @pytest.mark.parametrize("environ", [{}, {"S": ""}])
    def test_unset_or_empty_gives_the_default(self, environ: dict[str, str]) -> None:
        assert env_str("S", environ=environ) is None
        assert env_str("S", "fallback", environ=environ) == "fallback"

    def test_reads_this_process_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MAELTRACE_TEST_STR", "here")
        assert env_str("MAELTRACE_TEST_STR") == "here"
