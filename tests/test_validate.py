"""maeltrace._validate: hostile JSON and fields give one-line FormatErrors, never another error."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import maeltrace
from maeltrace._validate import MAX_DEPTH, Checker, check_acyclic, loads, read_json
from maeltrace.errors import FormatError, MaeltraceError


def test_format_error_is_one_line_naming_file_and_place() -> None:
    error = FormatError("stats.json", "regions[2].count", "a whole\nnumber expected")
    assert str(error) == "stats.json: regions[2].count: a whole number expected"
    assert isinstance(error, MaeltraceError) and isinstance(error, ValueError)
    assert maeltrace.FormatError is FormatError
    assert len(str(FormatError("f", "", "x" * 10_000))) < 320


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested deeper"),
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": -Infinity}', "-Infinity is not a JSON number"),
        ('{"a": 1e400}', "out of a float's range"),
        ('{"a": ' + "9" * 4000 + "}", "an integer of 4000 digits"),
        ('{"a": 1', "line 1 column 8"),
        (b'{"a": "\xff"}', "not UTF-8"),
    ],
)
def test_loads_refuses_hostile_json(text: str | bytes, problem: str) -> None:
    started = time.perf_counter()
    with pytest.raises(FormatError, match=r"^in\.json: ") as caught:
        loads(text, "in.json")
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)
    assert time.perf_counter() - started < 5


def test_loads_accepts_what_maeltrace_writes() -> None:
    value = {"regions": [{"samples_ns": [1, 2, 3], "mean": 1.5, "name": "é"}], "warmup": 0}
    assert loads(json.dumps(value), "x") == value
    nested: list[object] = []
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    assert loads(json.dumps(nested), "x") == nested


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_loads_never_raises_anything_but_format_error(data: bytes | str) -> None:
    try:
        loads(data, "fuzz.json")
    except FormatError as exc:
        message = str(exc)
    else:
        return
    assert message.startswith("fuzz.json")
    assert "\n" not in message


def test_read_json_refuses_large_and_missing_files(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text("[" + "1," * 1000 + "1]")
    with pytest.raises(FormatError, match=r"big.json: .* more than the 100 accepted"):
        read_json(big, max_bytes=100)
    assert read_json(big, max_bytes=10_000)[0] == 1
    with pytest.raises(FormatError, match=r"nothing\.json: missing"):
        read_json(tmp_path / "nothing.json", max_bytes=100)
    with pytest.raises(FormatError, match="cannot be read"):
        read_json(tmp_path, max_bytes=100)


def test_checker_names_the_place_and_the_problem() -> None:
    check = Checker("stats.json")
    region = check.object({"count": "7", "mean": -1.0, "warmup": True}, "regions[0]")
    with pytest.raises(FormatError, match=r"^stats.json: regions\[0\].count: .*the string '7'"):
        check.integer(region["count"], "regions[0].count")
    with pytest.raises(FormatError, match="below the least accepted"):
        check.number(region["mean"], "regions[0].mean")
    with pytest.raises(FormatError, match="a whole number expected, not a boolean"):
        check.integer(region["warmup"], "regions[0].warmup")
    with pytest.raises(FormatError, match=r"regions\[0\].name: missing"):
        check.field(region, "name", "regions[0]")
    with pytest.raises(FormatError, match="an object expected, not the string"):
        check.object("r", "regions[1]")
    with pytest.raises(FormatError, match="3 items, more than the 2"):
        check.list([1, 2, 3], "xs", max_items=2)
    assert check.number(3, "x") == 3.0
    assert check.integer(-3, "x", minimum=None) == -3


def test_relative_paths_stay_in_their_folder(tmp_path: Path) -> None:
    check = Checker("bench.json")
    (tmp_path / "app").mkdir()
    assert check.relative_path("app/log.txt", "apps[0].log", tmp_path) == tmp_path / "app/log.txt"
    for hostile in ("/etc/passwd", "../outside", "app/../../x", "C:\\x", "a\x00b"):
        with pytest.raises(FormatError, match=r"^bench.json: apps\[0\].log: "):
            check.relative_path(hostile, "apps[0].log", tmp_path)
    os.symlink("/etc", tmp_path / "link")
    with pytest.raises(FormatError, match="leads out of"):
        check.relative_path("link/passwd", "apps[0].log", tmp_path)


def test_cycles_in_parent_links_are_found_quickly() -> None:
    check_acyclic({1: None, 2: 1, 3: 2, 4: 99}, "trace.json")
    with pytest.raises(FormatError, match=r"trace\.json: parent links: 5 is its own ancestor"):
        check_acyclic({5: 5}, "trace.json")
    with pytest.raises(FormatError, match="its own ancestor"):
        check_acyclic({1: 2, 2: 3, 3: 1, 4: None}, "trace.json")
    chain = {n: n - 1 if n else None for n in range(200_000)}
    started = time.perf_counter()
    check_acyclic(chain, "trace.json")
    assert time.perf_counter() - started < 5
