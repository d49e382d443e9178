"""JSON-lines files survive a full disk, a crash and several writers: `maeltrace._files`'
appender and reader, and the files built on them (OTLP JSON lines, pending files)."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from maeltrace._files import append_line, append_lines, read_lines
from maeltrace.otel._otlp_json import append_json_line, read_json_lines
from maeltrace.sinks.base import PendingFile, pending_entry, pending_path
from tests.helpers import mounted_tmpfs

ROOT = Path(__file__).resolve().parents[1]
LOGGER = "maeltrace.files"


def record(number: int, size: int = 40) -> bytes:
    """A JSON line of about ``size`` bytes that says which it is."""
    return json.dumps({"n": number, "pad": "x" * max(0, size - 20)}).encode()


def parse_record(line: bytes) -> int:
    obj = json.loads(line)
    if not isinstance(obj, dict) or not isinstance(obj.get("n"), int):
        raise ValueError("not a record")
    return int(obj["n"])


def skip_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def records_in(path: Path) -> list[int]:
    return [n for _, n in read_lines(path, parse=parse_record)]


# -- the appender ------------------------------------------------------------------------------


class TestAppend:
    def test_a_torn_tail_is_ended_before_the_next_append(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = tmp_path / "t.jsonl"
        append_line(path, record(1))
        with open(path, "ab") as file:
            file.write(record(2)[:15])  # what a full disk or a kill leaves of a line
        append_line(path, record(3))
        lines = path.read_bytes().split(b"\n")
        assert lines == [record(1), record(2)[:15], record(3), b""]
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert records_in(path) == [1, 3]
        [warning] = skip_warnings(caplog)
        assert f"{path}: skipped 1 unreadable line: line 2: not valid JSON" in warning

    def test_a_file_that_ends_in_a_newline_is_not_repaired(self, tmp_path: Path) -> None:
        path = tmp_path / "t.jsonl"
        append_line(path, record(1))
        append_lines(path, [record(2), record(3)])
        assert path.read_bytes() == record(1) + b"\n" + record(2) + b"\n" + record(3) + b"\n"

    @pytest.mark.parametrize(
        ("lines", "problem"),
        [([], "at least one line"), ([b"{}", b""], "line 2 of 2 is empty"), ([b"a\nb"], "newline")],
    )
    def test_lines_that_would_read_back_differently_are_refused(
        self, tmp_path: Path, lines: list[bytes], problem: str
    ) -> None:
        path = tmp_path / "t.jsonl"
        append_line(path, record(1))
        with pytest.raises(ValueError, match=problem):
            append_lines(path, lines)
        assert path.read_bytes() == record(1) + b"\n"

    def test_a_new_file_gets_the_mode_and_a_missing_folder_raises(self, tmp_path: Path) -> None:
        append_line(tmp_path / "private.jsonl", b"{}", mode=0o600)
        assert (tmp_path / "private.jsonl").stat().st_mode & 0o777 == 0o600
        with pytest.raises(FileNotFoundError):
            append_line(tmp_path / "missing" / "t.jsonl", b"{}")

    def test_a_write_cut_short_is_cut_back(self, tmp_path: Path) -> None:
        # A file size limit (RLIMIT_FSIZE) makes the kernel take part of a write and refuse the
        # rest with EFBIG, as a full disk does; in a child, so the limit stays there.
        path = tmp_path / "t.jsonl"
        script = f"""
            import errno, resource, signal, sys
            from maeltrace._files import append_line
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
            line = b'{{"pad": "' + b"y" * 3000 + b'"}}'
            appended = 0
            try:
                while True:
                    append_line({str(path)!r}, line)
                    appended += 1
            except OSError as err:
                assert err.errno == errno.EFBIG, err
            print(appended)
        """
        out = run_python(script)
        assert int(out) == 3
        data = path.read_bytes()
        assert len(data) == 3 * 3012 and data.endswith(b"\n")  # the 4th line's 964 bytes gone
        assert [len(line) for _, line in read_lines(path)] == [3011] * 3


# -- the reader ------------------------------------------------------------------------------


class TestRead:
    def test_one_warning_per_file_names_the_first_bad_line_and_the_others(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = tmp_path / "t.jsonl"
        good = [n for n in range(40) if n % 3]
        path.write_bytes(
            b"".join((record(n) if n % 3 else b'{"torn": ') + b"\n" for n in range(40))
            + b'{"n": 40'  # and a torn last line, without its newline
        )
        skipped: list[tuple[int, bytes, str]] = []
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            read = read_lines(path, parse=parse_record, on_skip=lambda *a: skipped.append(a))
            assert [n for _, n in read] == good
        [warning] = skip_warnings(caplog)
        assert warning.startswith(f"maeltrace: {path}: skipped 15 unreadable lines: line 1: ")
        assert warning.endswith("; also lines 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, ...")
        assert [number for number, _, _ in skipped] == [*range(1, 41, 3), 41]
        assert skipped[-1] == (41, b'{"n": 40', "no newline at its end (a write cut short)")

    def test_blank_lines_are_passed_over_without_a_warning(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = tmp_path / "t.jsonl"
        path.write_bytes(b"\n" + record(1) + b"\n  \n\r\n" + record(2) + b"\r\n")
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert list(read_lines(path)) == [(2, record(1)), (5, record(2) + b"\r")]
            assert records_in(path) == [1, 2]
        assert skip_warnings(caplog) == []

    def test_lines_split_on_newline_only(self, tmp_path: Path) -> None:
        path = tmp_path / "t.jsonl"
        text = json.dumps({"n": 7, "s": "a\u2028b\x85c\rd"}, ensure_ascii=False).encode()
        append_lines(path, [text, text])
        assert [n for _, n in read_lines(path, parse=parse_record)] == [7, 7]

    def test_errors_other_than_unreadable_lines_propagate(self, tmp_path: Path) -> None:
        path = tmp_path / "t.jsonl"
        append_line(path, record(1))

        def broken(line: bytes) -> int:
            raise TypeError("a bug in the caller")

        with pytest.raises(TypeError, match="a bug"):
            list(read_lines(path, parse=broken))
        with pytest.raises(FileNotFoundError):
            list(read_lines(tmp_path / "missing.jsonl"))

    def test_otlp_json_lines_skip_torn_and_foreign_lines(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = tmp_path / "traces.otlp.jsonl"
        data = TracesData()
        data.resource_spans.add().scope_spans.add().spans.add(name="epoch")
        append_json_line(path, data)
        with open(path, "ab") as file:
            file.write(b'{"x": "\xff"}\n{"resourceSpans": 5}\n{"resourceSpans": [')
        append_json_line(path, data)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert list(read_json_lines(path)) == [data, data]
        [warning] = skip_warnings(caplog)
        assert "skipped 3 unreadable lines: line 2: not UTF-8" in warning
        assert warning.endswith("also lines 3, 4")


# -- a real full disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, mounted for the test and always unmounted after it."""
    with mounted_tmpfs(tmp_path / "disk", "64k") as folder:
        yield folder


def until_full(append: Callable[[int], object]) -> tuple[int, OSError]:
    """Calls ``append(0)``, ``append(1)``, ... until it raises; how many calls went through,
    and the error."""
    number = 0
    while True:
        try:
            append(number)
        except OSError as err:
            return number, err
        number += 1


def sizes_from(seed: int) -> Iterator[int]:
    value = seed
    while True:
        value = (value * 1103515245 + 12345) % 2**31
        yield 300 + value % 2500  # lines that straddle the tmpfs pages


class TestFullDisk:
    def test_a_plain_append_tears_a_line_here(self, small_disk: Path) -> None:
        # The control: without the cut back, this disk leaves a partial line, so the tests
        # below would see one if the appender left it.
        path = small_disk / "plain.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

        def plain_append(number: int) -> None:
            line = record(number, 2000) + b"\n"
            while line:
                line = line[os.write(fd, line) :]

        try:
            appended, error = until_full(plain_append)
        finally:
            os.close(fd)
        assert error.errno == errno.ENOSPC and appended > 5
        assert not path.read_bytes().endswith(b"\n")

    def test_appends_until_full_leave_only_complete_lines_and_go_on_after(
        self, small_disk: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        filler = small_disk / "filler"
        filler.write_bytes(b"f" * 16384)
        path = small_disk / "traces.jsonl"
        sizes = sizes_from(1)
        appended, error = until_full(lambda n: append_line(path, record(n, next(sizes))))
        assert error.errno == errno.ENOSPC and appended > 5
        assert path.read_bytes().endswith(b"\n")
        # A second failure changes nothing either.
        with pytest.raises(OSError, match="No space left"):
            append_line(path, record(999, 3000))
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert records_in(path) == list(range(appended))
        assert skip_warnings(caplog) == []
        filler.unlink()  # space comes back
        append_line(path, record(appended, 3000))
        assert records_in(path) == list(range(appended + 1))

    def test_otlp_lines_and_pending_summaries_until_full(self, small_disk: Path) -> None:
        data = TracesData()
        spans = data.resource_spans.add().scope_spans.add().spans
        for index in range(12):
            spans.add(name=f"batch {index}", trace_id=bytes(16), span_id=bytes(7) + b"\1")
        traces, pending = small_disk / "traces.otlp.jsonl", PendingFile(small_disk / "p.jsonl")
        lines: list[int] = []

        def append_both(number: int) -> None:
            append_json_line(traces, data)
            lines.append(number)
            pending.add({"run_id": f"run-{number}", "pad": "p" * 1200})

        runs, error = until_full(append_both)
        assert error.errno == errno.ENOSPC and runs > 5
        assert traces.read_bytes().endswith(b"\n") and pending.path.read_bytes().endswith(b"\n")
        assert list(read_json_lines(traces)) == [data] * len(lines)
        assert list(pending.load()) == [f"run-{n}" for n in range(runs)]

    def test_two_processes_filling_one_file_leave_only_complete_lines(
        self, small_disk: Path
    ) -> None:
        path = small_disk / "shared.jsonl"
        script = f"""
            import json, sys
            from maeltrace._files import append_line
            writer, appended = int(sys.argv[1]), 0
            for number in range(100_000):
                line = json.dumps({{"w": writer, "n": number, "pad": "z" * (500 + number % 900)}})
                try:
                    append_line({str(path)!r}, line.encode())
                    appended += 1
                except OSError:
                    if number > appended + 50:  # full for good
                        break
            print(appended)
        """
        appended = run_python_writers(script, 2, small_disk.parent / "gate")
        assert path.read_bytes().endswith(b"\n")
        written = [json.loads(line) for _, line in read_lines(path)]
        assert sum(appended) > 5
        for writer in (0, 1):
            mine = [obj for obj in written if obj["w"] == writer]
            assert len(mine) == appended[writer]
            assert all(len(obj["pad"]) == 500 + obj["n"] % 900 for obj in mine)


# -- several writers -------------------------------------------------------------------------


class TestConcurrency:
    def test_two_processes_appending_lose_and_tear_nothing(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = tmp_path / "shared.jsonl"
        path.write_bytes(b'{"torn": ')  # both writers see it; the first to write ends it
        script = f"""
            import json, sys
            from maeltrace._files import append_line, append_lines
            writer = int(sys.argv[1])
            for number in range(0, 2000, 2):
                # Lines from 30 bytes to about 200 KiB: many pages, beyond any pipe buffer.
                pad = "q" * (number * 97 % 200_000 if number % 50 == 0 else number % 300)
                lines = [json.dumps({{"w": writer, "n": n, "pad": pad}}).encode()
                         for n in (number, number + 1)]
                if number % 4:
                    append_lines({str(path)!r}, lines)
                else:
                    for line in lines:
                        append_line({str(path)!r}, line)
            print(2000)
        """
        assert run_python_writers(script, 2, tmp_path / "gate") == [2000, 2000]
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            written = [obj for _, obj in read_lines(path, parse=json.loads)]
        [warning] = skip_warnings(caplog)
        assert "skipped 1 unreadable line: line 1:" in warning
        for writer in (0, 1):
            assert [obj["n"] for obj in written if obj["w"] == writer] == list(range(2000))
        assert path.read_bytes().count(b"\n") == 4001  # no blank line: one repair only

    def test_a_pending_file_appends_one_line_per_entry(self, tmp_path: Path) -> None:
        kept = PendingFile(pending_path(tmp_path, "mlflow"))
        for call in range(3):
            kept.add(pending_entry("mlflow", "r1", "down", metrics={"train/batch": 0.5 + call}))
        assert kept.path.name == "pending-mlflow.jsonl"
        entries = [json.loads(line) for _, line in read_lines(kept.path)]
        assert [e["metrics"]["train/batch"] for e in entries] == [0.5, 1.5, 2.5]
        assert {e["run_id"] for e in entries} == {"r1"} and kept.entries() == entries
        assert pending_path(tmp_path, "wandb", ".rank1").name == "pending-wandb.rank1.jsonl"


# -- helpers -----------------------------------------------------------------------------------


def run_python(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


_START_TOGETHER = """
import json, pathlib, sys, time
import maeltrace._files  # imported before the start, so that both start at once
_gate = pathlib.Path(sys.argv[2])
(_gate / f"ready{sys.argv[1]}").touch()
while not (_gate / "go").exists():
    time.sleep(0.005)
"""


def run_python_writers(script: str, count: int, gate: Path) -> list[int]:
    """Runs ``script`` in ``count`` processes (argv[1] = 0, 1, ...), started together once all
    have imported what they need; returns what each printed."""
    gate.mkdir()
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _START_TOGETHER + textwrap.dedent(script),
                str(index),
                str(gate),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(count)
    ]
    try:
        for index in range(count):
            deadline = time.monotonic() + 120
            while not (gate / f"ready{index}").exists():
                assert children[index].poll() is None, children[index].communicate()[1]
                assert time.monotonic() < deadline, f"writer {index} did not start"
                time.sleep(0.01)
    finally:
        (gate / "go").touch()
    results = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        results.append(int(out))
    return results
