"""Hostile files through ``maeltrace report`` and ``maeltrace compare``: real run and bench
folders, broken by the cases the issue names and by hypothesis, end with exit status 0 or 2
and one line naming the file, never a traceback, a hang, or a regression from invalid data."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maeltrace import Timer, TimeType
from maeltrace.cli import main
from maeltrace.errors import FormatError
from maeltrace.report import Summary, markdown_cell

ODD_KEY = "a|b\nc<x>&"
"""A region name with a cell separator, a line break and HTML-significant characters."""

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder: a Timer's stats.json, stats.md and trace.json, nested regions."""
    folder = tmp_path_factory.mktemp("hostile") / "run"
    tmr = Timer(warmup=1, export=False, output_dir=folder, run_id="hostile")
    for _ in range(3):
        with tmr.region(TimeType.EPOCH):
            for _ in range(3):
                with tmr.region(TimeType.BATCH), tmr.region(ODD_KEY):
                    pass
    tmr.write_outputs()
    tmr.close()
    return folder


@pytest.fixture(scope="module")
def bench_folder(run_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bench folder of one finished app (the run above) and one failed app with a log."""
    root = tmp_path_factory.mktemp("hostile") / "bench"
    shutil.copytree(run_folder, root / "app")
    (root / "broken").mkdir()
    (root / "broken" / "log.txt").write_text("Traceback: boom\n", encoding="utf-8")
    bench = {
        "schema": "maeltrace.bench/1",
        "bench_id": "bench",
        "started_unix_s": 1_790_000_000.0,
        "wall_s": 2.5,
        "host": "test-host",
        "argv": ["bench"],
        "apps": [
            {"name": "app", "folder": "app", "status": "ok", "returncode": 0, "wall_s": 1.0},
            {
                "name": "broken",
                "folder": "broken",
                "status": "failed",
                "returncode": 1,
                "wall_s": 0.5,
                "log": "broken/log.txt",
            },
        ],
    }
    (root / "bench.json").write_text(json.dumps(bench), encoding="utf-8")
    return root


@dataclass(frozen=True)
class Ran:
    status: int
    err: str


def run(*argv: str) -> Ran:
    """``maeltrace ARGV`` in this process, its stdout dropped, its stderr kept."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(list(argv))
    return Ran(status, err.getvalue())


def assert_clean(ran: Ran, folder: Path, *, invalid: bool) -> None:
    """Exit 0 or 2, no traceback; on 2 one line naming a file in ``folder``; 2 if ``invalid``."""
    assert "Traceback" not in ran.err, ran.err
    assert ran.status in (0, 2), ran
    if invalid:
        assert ran.status == 2, ran
    if ran.status == 2:
        lines = ran.err.splitlines()
        assert len(lines) == 1, ran.err
        assert re.match(r"maeltrace( compare)?: error: ", lines[0]), lines[0]
        assert str(folder) in lines[0], lines[0]


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    result = change(doc)
    path.write_text(json.dumps(doc if result is None else result), encoding="utf-8")


@contextlib.contextmanager
def copy_of(folder: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as scratch:
        yield Path(shutil.copytree(folder, Path(scratch) / folder.name))


def _region(doc: dict[str, Any], index: int = 0) -> dict[str, Any]:
    region: dict[str, Any] = doc["regions"][index]
    return region


def _x_events(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in doc["traceEvents"] if e.get("ph") == "X"]


def _set_all(events: list[dict[str, Any]], change: Callable[[dict[str, Any]], None]) -> None:
    for event in events:
        change(event)


DEEP = "[" * 100_000 + "]" * 100_000

STATS_CASES: dict[str, Callable[[Path], None]] = {
    "deep nesting": lambda p: p.write_text(DEEP, encoding="utf-8"),
    "deep nesting in regions": lambda p: p.write_text(
        p.read_text(encoding="utf-8").replace('"regions": [', '"regions": [' + DEEP + ",", 1),
        encoding="utf-8",
    ),
    "region entry a string": lambda p: edit_json(p, lambda d: d["regions"].insert(0, "epoch")),
    "4000-digit sample": lambda p: p.write_text(
        re.sub(r'"samples_ns": \[\s*\d+', '"samples_ns": [' + "9" * 4000, p.read_text()),
        encoding="utf-8",
    ),
    "1e308 duration": lambda p: edit_json(p, lambda d: _region(d)["stats"].update(max=1e308)),
    "1e308 sample": lambda p: edit_json(p, lambda d: _region(d)["samples_ns"].append(1e308)),
    "1e308 start time": lambda p: edit_json(
        p, lambda d: d["metadata"].update(start_time_unix_nano=1e308)
    ),
    "start time in 1900": lambda p: edit_json(
        p, lambda d: d["metadata"].update(start_time_unix_nano=-2_208_988_800 * 10**9)
    ),
    "warmup -3": lambda p: edit_json(p, lambda d: d.update(warmup=-3)),
    "string samples": lambda p: edit_json(
        p, lambda d: _region(d).update(samples_ns=[str(s) for s in _region(d)["samples_ns"]])
    ),
    "NaN statistic": lambda p: edit_json(p, lambda d: _region(d)["stats"].update(mean=math_nan)),
    "infinite duration": lambda p: edit_json(
        p, lambda d: _region(d)["stats"].update(max=float("inf"))
    ),
    "negative sample": lambda p: edit_json(p, lambda d: _region(d)["samples_ns"].append(-5)),
    "negative statistic": lambda p: edit_json(p, lambda d: _region(d)["stats"].update(min=-0.5)),
    "string count": lambda p: edit_json(p, lambda d: _region(d)["stats"].update(count="3")),
    "a row held twice": lambda p: edit_json(p, lambda d: d["regions"].append(_region(d))),
    "string rank": lambda p: edit_json(p, lambda d: d["metadata"]["rank"].update(world_size="2")),
}

math_nan = float("nan")

TRACE_CASES: dict[str, Callable[[Path], None]] = {
    "deep nesting": lambda p: p.write_text(DEEP, encoding="utf-8"),
    "self-parent events": lambda p: edit_json(
        p,
        lambda d: _set_all(_x_events(d), lambda e: e["args"].update(parent_seq=e["args"]["seq"])),
    ),
    "a parent cycle": lambda p: edit_json(
        p, lambda d: _x_events(d)[0]["args"].update(parent_seq=_x_events(d)[1]["args"]["seq"])
    ),
    "1e308 duration": lambda p: edit_json(p, lambda d: _x_events(d)[0].update(dur=1e308)),
    "1e308 start": lambda p: edit_json(p, lambda d: _x_events(d)[1].update(ts=1e308)),
    "negative duration": lambda p: edit_json(p, lambda d: _x_events(d)[1].update(dur=-1)),
    "string ts": lambda p: edit_json(p, lambda d: _x_events(d)[1].update(ts="5")),
    "event a string": lambda p: edit_json(p, lambda d: d["traceEvents"].append("x")),
}


@pytest.mark.parametrize("case", sorted(STATS_CASES))
def test_a_named_hostile_stats_json_is_refused_by_report_and_compare(
    run_folder: Path, case: str
) -> None:
    with copy_of(run_folder) as folder:
        STATS_CASES[case](folder / "stats.json")
        with pytest.raises(FormatError, match=re.escape(str(folder / "stats.json")) + ": "):
            Summary.load(folder / "stats.json")
        assert_clean(run("report", str(folder)), folder, invalid=True)
        assert not (folder / "report.md").exists()
        ran = run("compare", str(run_folder), str(folder))
        assert_clean(ran, folder, invalid=True)
        ran = run("compare", str(folder), str(run_folder))
        assert_clean(ran, folder, invalid=True)


def test_warmup_minus_three_is_named_and_never_a_regression(run_folder: Path) -> None:
    with copy_of(run_folder) as folder:
        STATS_CASES["warmup -3"](folder / "stats.json")
        ran = run("compare", str(run_folder), str(folder))
        assert ran.status == 2
        assert "stats.json: warmup: -3 is below the least accepted" in ran.err


@pytest.mark.parametrize("case", sorted(TRACE_CASES))
def test_a_named_hostile_trace_json_is_refused_by_report(run_folder: Path, case: str) -> None:
    with copy_of(run_folder) as folder:
        TRACE_CASES[case](folder / "trace.json")
        ran = run("report", str(folder))
        assert_clean(ran, folder, invalid=True)
        assert "trace.json" in ran.err
        assert not (folder / "report.md").exists()


def test_self_parent_events_are_named_as_a_cycle(run_folder: Path) -> None:
    with copy_of(run_folder) as folder:
        TRACE_CASES["self-parent events"](folder / "trace.json")
        ran = run("report", str(folder))
        assert "trace.json: traceEvents: args.parent_seq: " in ran.err
        assert "is its own ancestor (a cycle)" in ran.err


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("folder", "ABSOLUTE", "an absolute path"),
        ("folder", "../outside", "leads out of"),
        ("log", "/etc/passwd", "an absolute path"),
        ("log", "../../etc/passwd", "leads out of"),
    ],
)
def test_bench_paths_must_stay_in_the_bench_folder(
    bench_folder: Path, run_folder: Path, field: str, value: str, problem: str
) -> None:
    with copy_of(bench_folder) as folder:
        outside = folder.parent / "outside"
        shutil.copytree(run_folder, outside)
        entry = 0 if field == "folder" else 1
        target = str(outside) if value == "ABSOLUTE" else value
        edit_json(folder / "bench.json", lambda d: d["apps"][entry].update({field: target}))
        ran = run("report", str(folder))
        assert_clean(ran, folder, invalid=True)
        assert f"bench.json: apps[{entry}].{field}: " in ran.err and problem in ran.err
        assert not (outside / "flame.png").exists() and not (folder / "report.md").exists()
        if field == "folder":
            assert_clean(run("compare", str(folder), str(bench_folder)), folder, invalid=True)


def test_odd_region_names_stay_in_their_markdown_cells(bench_folder: Path) -> None:
    with copy_of(bench_folder) as folder:
        assert run("report", str(folder)).status == 0
        stats_md = (folder / "app" / "stats.md").read_text(encoding="utf-8")
        report_md = (folder / "report.md").read_text(encoding="utf-8")
    cell = markdown_cell(ODD_KEY)
    assert cell == r"a\|b c\<x\>\&"
    for text in (stats_md, report_md):
        rows = [line for line in text.splitlines() if line.startswith("| ")]
        assert any(cell in row for row in rows)
        # Every row of a table has the header's number of unescaped cell separators.
        for row in rows:
            assert len(re.findall(r"(?<!\\)\|", row)) in (8, 7), row
        assert "<x>" not in text


def test_markdown_cell_escapes_separators_breaks_and_html() -> None:
    assert markdown_cell("a|b") == r"a\|b"
    assert markdown_cell("back\\slash") == "back\\\\slash"
    assert markdown_cell("one\r\ntwo\nthree") == "one two three"
    assert markdown_cell("<b>&") == r"\<b\>\&"
    assert markdown_cell("data_load") == "data_load"
    assert markdown_cell("[a](b) *c* `d` #e", all_punctuation=True) == (r"\[a\](b) \*c\* \`d\` \#e")


# -- mutations generated by hypothesis ---------------------------------------------------------

HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet="ab|\n<>&\\\x00/.", max_size=12),
    st.just([]),
    st.just({}),
    st.just([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
)


def _places(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) of a JSON value."""
    out: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            out.append((node, key))
            if isinstance(value, dict | list):
                stack.append(value)
    return out


@st.composite
def mutations(draw: st.DrawFn, text: str) -> bytes:
    """``text`` (a JSON document) with one value replaced, deleted or duplicated at a random
    place, or its bytes truncated or flipped."""
    kind = draw(st.sampled_from(["replace", "replace", "delete", "duplicate", "bytes"]))
    if kind == "bytes":
        data = bytearray(text.encode("utf-8"))
        if draw(st.booleans()):
            return bytes(data[: draw(st.integers(0, len(data) - 1))])
        for _ in range(draw(st.integers(1, 4))):
            index = draw(st.integers(0, len(data) - 1))
            data[index] ^= draw(st.integers(1, 255))
        return bytes(data)
    doc = json.loads(text)
    places = _places(doc)
    container, key = places[draw(st.integers(0, len(places) - 1))]
    if kind == "replace":
        container[key] = draw(HOSTILE_VALUES)
    elif kind == "delete":
        del container[key]
    elif isinstance(container, list):
        container.insert(key, container[key])
    else:
        other = draw(st.sampled_from(sorted(container)))
        container[other] = container[key]
    return json.dumps(doc).encode("utf-8")


def _valid_summary(path: Path) -> bool:
    try:
        Summary.load(path)
    except FormatError:
        return False
    return True


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_mutated_stats_json_never_misleads_compare(run_folder: Path, data: st.DataObject) -> None:
    original = (run_folder / "stats.json").read_text(encoding="utf-8")
    with copy_of(run_folder) as folder:
        (folder / "stats.json").write_bytes(data.draw(mutations(original)))
        valid = _valid_summary(folder / "stats.json")
        for argv in ([str(run_folder), str(folder)], [str(folder), str(run_folder)]):
            ran = run("compare", *argv)
            assert "Traceback" not in ran.err
            assert ran.status in (0, 1, 2) and (valid or ran.status == 2), ran
            if ran.status == 2:
                assert_clean(ran, folder, invalid=not valid)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), name=st.sampled_from(["stats.json", "trace.json"]))
def test_mutated_run_folders_give_a_report_or_one_line(
    run_folder: Path, data: st.DataObject, name: str
) -> None:
    original = (run_folder / name).read_text(encoding="utf-8")
    with copy_of(run_folder) as folder:
        (folder / name).write_bytes(data.draw(mutations(original)))
        invalid = name == "stats.json" and not _valid_summary(folder / name)
        assert_clean(run("report", str(folder)), folder, invalid=invalid)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_mutated_bench_json_gives_a_report_or_one_line(
    bench_folder: Path, data: st.DataObject
) -> None:
    original = (bench_folder / "bench.json").read_text(encoding="utf-8")
    with copy_of(bench_folder) as folder:
        (folder / "bench.json").write_bytes(data.draw(mutations(original)))
        assert_clean(run("report", str(folder)), folder, invalid=False)
        ran = run("compare", str(folder), str(bench_folder))
        assert "Traceback" not in ran.err and ran.status in (0, 1, 2)
        if ran.status == 2:
            assert_clean(ran, folder, invalid=False)
        # Whatever the file says, nothing is written outside the bench folder.
        assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


# -- bounded time and memory, in a process of its own ------------------------------------------

MEMORY_LIMIT = 3 * 2**30
TIME_LIMIT_S = 90


# The child limits its own address space before it runs maeltrace: a preexec_fn would run
# this process's fork hooks (threads of other tests' timers) in the child.
LIMITED = (
    "import resource, runpy, sys\n"
    f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n"
    "sys.argv = ['maeltrace', *sys.argv[1:]]\n"
    "runpy.run_module('maeltrace', run_name='__main__')\n"
)


@pytest.mark.parametrize(
    ("command", "name", "case"),
    [
        ("report", "trace.json", "self-parent events"),
        ("report", "trace.json", "deep nesting"),
        ("report", "stats.json", "1e308 start time"),
        ("compare", "stats.json", "warmup -3"),
        ("compare", "stats.json", "4000-digit sample"),
    ],
)
def test_hostile_files_end_in_bounded_time_and_memory(
    run_folder: Path, command: str, name: str, case: str
) -> None:
    cases = TRACE_CASES if name == "trace.json" else STATS_CASES
    with copy_of(run_folder) as folder:
        cases[case](folder / name)
        argv = [str(folder)] if command == "report" else [str(run_folder), str(folder)]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}
        done = subprocess.run(
            [sys.executable, "-c", LIMITED, command, *argv],
            capture_output=True,
            text=True,
            timeout=TIME_LIMIT_S,
            env=env,
            check=False,
        )
        assert_clean(Ran(done.returncode, done.stderr), folder, invalid=True)
        assert name in done.stderr


def test_a_bench_json_with_credentials_gives_a_report_without_them(bench_folder: Path) -> None:
    """A bench.json written before URLs were redacted: its endpoint's and tracking URI's
    passwords never reach report.md or report.html."""
    with copy_of(bench_folder) as folder:

        def add_secrets(doc: dict[str, Any]) -> None:
            doc["otlp_endpoint"] = "http://otel:hunter2@collector:4318/v1/traces"
            doc["mlflow"] = {
                "tracking_uri": "http://ml:hunter2@mlflow:5000",
                "experiment": "maeltrace-bench",
                "parent_run_id": "abc",
                "runs": {},
                "ui": "mlflow ui --backend-store-uri http://ml:hunter2@mlflow:5000",
            }

        edit_json(folder / "bench.json", add_secrets)
        assert run("report", str(folder)).status == 0
        for name in ("report.md", "report.html"):
            text = (folder / name).read_text(encoding="utf-8")
            assert "hunter2" not in text, name
            assert "collector:4318/v1/traces" in text, name
