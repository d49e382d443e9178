"""SIGTERM and SIGINT: real child training loops get the signal; their files are written and they
end as they would have without maeltrace."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

RUN_ID = "signalled"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# The child: two finished epochs of three batches, then an epoch that stays open, one batch in,
# until the stop file appears or a handler sets STOP; so the files can count exactly.
CHILD = """\
import json, os, signal, sys, time
import maeltrace
import maeltrace._signals

STOP = []
MARKER = {marker!r}
STOP_FILE = {stop_file!r}
{before}
tmr = maeltrace.Timer({timer_args})
{after}
for epoch in range(2):
    with tmr.region("epoch"):
        for _ in range(3):
            with tmr.region("batch"):
                pass


def last_epoch():
    with tmr.region("epoch"):
        with tmr.region("batch"):
            pass
        print("ready", flush=True)
        while not STOP and not os.path.exists(STOP_FILE):
            time.sleep(0.01)


{main}
{tail}
"""

# A handler of the user's that notes whether maeltrace's files were already written.
USER_HANDLER = """\
def user_handler(signum, frame):
    stats = os.path.join(os.environ["MAELTRACE_OUTPUT_DIR"], {run_id!r}, "stats.json")
    with open(MARKER, "w") as f:
        json.dump({{"signal": signum, "stats_written": os.path.exists(stats)}}, f)
    {action}
"""


@dataclass
class Child:
    """One child training loop and where it writes."""

    script: Path
    env: dict[str, str]
    folder: Path
    marker: Path
    stop_file: Path


@dataclass
class Ended:
    """How a signalled child ended."""

    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float
    """From the signal to the process's end."""


def make_child(
    tmp_path: Path,
    *,
    before: str = "",
    after: str = "",
    timer_args: str = "",
    main: str = "last_epoch()",
    tail: str = "",
    env: dict[str, str] | None = None,
) -> Child:
    """Writes the child script into ``tmp_path`` and builds its environment: export on into the
    embedded default (no endpoint) under ``tmp_path``, signals handled unless ``env`` says not."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    marker, stop_file = tmp_path / "marker.json", tmp_path / "stop"
    script = tmp_path / "child.py"
    script.write_text(
        CHILD.format(
            marker=str(marker),
            stop_file=str(stop_file),
            before=before,
            after=after,
            timer_args=timer_args,
            main=main,
            tail=tail,
        )
    )
    child_env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OTEL_", "MAELTRACE_"))
    }
    out = tmp_path / "out"
    child_env.update(MAELTRACE_EXPORT="1", MAELTRACE_OUTPUT_DIR=str(out), MAELTRACE_RUN_ID=RUN_ID)
    child_env.update(env or {})
    return Child(script, child_env, out / RUN_ID, marker, stop_file)


@pytest.fixture
def watchdog() -> Iterator[list[subprocess.Popen[str]]]:
    """Children started in a test; any still running at its end is killed."""
    children: list[subprocess.Popen[str]] = []
    yield children
    for proc in children:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def start(
    child: Child, children: list[subprocess.Popen[str]], printed: list[str] | None = None
) -> subprocess.Popen[str]:
    """Starts the child and waits for its ``ready`` line (60 s at most); the lines it prints
    before go to ``printed``."""
    proc = subprocess.Popen(
        [sys.executable, str(child.script)],
        env=child.env,
        cwd=child.script.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children.append(proc)
    killer = threading.Timer(60.0, proc.kill)
    killer.start()
    assert proc.stdout is not None
    try:
        while (line := proc.stdout.readline()) not in ("ready\n", ""):
            if printed is not None:
                printed.append(line)
    finally:
        killer.cancel()
    if line != "ready\n":
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"the child did not get ready: {line!r}\n{err}")
    return proc


def finish(proc: subprocess.Popen[str], sent_at: float, timeout_s: float = 60.0) -> Ended:
    """Waits for the child's end after its signal."""
    out, err = proc.communicate(timeout=timeout_s)
    return Ended(proc.returncode, out, err, time.monotonic() - sent_at)


def signal_child(
    child: Child, signum: int, children: list[subprocess.Popen[str]], timeout_s: float = 60.0
) -> Ended:
    """Runs the child until it is ready, sends it ``signum`` and waits for its end."""
    proc = start(child, children)
    sent_at = time.monotonic()
    proc.send_signal(signum)
    return finish(proc, sent_at, timeout_s)


def counts(folder: Path) -> dict[str, int]:
    """Regions per key in the child's ``stats.json``."""
    stats = json.loads((folder / "stats.json").read_text())
    return {region["key"]: region["stats"]["count"] for region in stats["regions"]}


def chrome_epochs(folder: Path) -> int:
    """Epoch regions in the child's Chrome trace ``trace.json``."""
    trace = json.loads((folder / "trace.json").read_text())
    return sum(1 for e in trace["traceEvents"] if e.get("ph") == "X" and e["name"] == "epoch")


def keyboard_interrupt(ended: Ended) -> bool:
    """Whether the child ended by an unhandled KeyboardInterrupt (its traceback on stderr)."""
    return "Traceback" in ended.stderr and "KeyboardInterrupt" in ended.stderr


def signal_handling(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` now (``SigCgt`` in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    raise AssertionError(f"no SigCgt line for process {pid}")


UNINSTRUMENTED = {"MAELTRACE_DISABLED": "1"}
"""The twin's environment: every timer a no-op, so the process is as without maeltrace."""

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


class TestDefaultDisposition:
    @pytest.mark.parametrize("signum", SIGNALS)
    def test_the_signal_writes_stats_trace_and_spans_of_the_finished_epochs(
        self, tmp_path: Path, watchdog: list[subprocess.Popen[str]], signum: int
    ) -> None:
        child = make_child(tmp_path)
        ended = signal_child(child, signum, watchdog)
        assert counts(child.folder) == {"epoch": 2, "batch": 7}, ended.stderr
        assert chrome_epochs(child.folder) == 2
        spans = [p for p in child.folder.iterdir() if p.name.startswith(("traces", "outbox"))]
        assert spans, sorted(p.name for p in child.folder.iterdir())
        assert "maeltrace:" not in ended.stderr

    def test_sigterm_kills_the_process_by_the_signal_as_without_maeltrace(
        self, tmp_path: Path, watchdog: list[subprocess.Popen[str]]
    ) -> None:
        ended = signal_child(make_child(tmp_path / "on"), signal.SIGTERM, watchdog)
        twin = make_child(tmp_path / "twin", env=UNINSTRUMENTED)
        twin_ended = signal_child(twin, signal.SIGTERM, watchdog)
        assert twin_ended.returncode == -signal.SIGTERM
        assert ended.returncode == twin_ended.returncode

    def test_sigint_raises_keyboard_interrupt_as_without_maeltrace(
        self, tmp_path: Path, watchdog: list[subprocess.Popen[str]]
    ) -> None:
        ended = signal_child(make_child(tmp_path / "on"), signal.SIGINT, watchdog)
        twin = make_child(tmp_path / "twin", env=UNINSTRUMENTED)
        twin_ended = signal_child(twin, signal.SIGINT, watchdog)
        assert keyboard_interrupt(twin_ended), twin_ended.stderr
        assert keyboard_interrupt(ended), ended.stderr
        assert ended.returncode == twin_ended.returncode

    def test_sigint_can_be_caught_like_any_keyboard_interrupt(
        self, tmp_path: Path, watchdog: list[subprocess.Popen[str]]
    ) -> None:
        main = "try:\n    last_epoch()\nexcept KeyboardInterrupt:\n    print('caught', flush=True)"
        child = make_child(tmp_path, main=main)
        ended = signal_child(child, signal.SIGINT, watchdog)
        assert ended.returncode == 0, ended.stderr
        assert ended.stdout == "caught\n"
        assert counts(child.folder)["epoch"] == 2


class TestSwitchedOff:
    @pytest.mark.parametrize(
        ("timer_args", "env"),
        [
            pytest.param("", {"MAELTRACE_SIGNALS": "0"}, id="MAELTRACE_SIGNALS=0"),
            pytest.param("handle_signals=False", {}, id="handle_signals=False"),
        ],
    )
    def test_sigterm_leaves_no_files_and_kills_as_before(
        self,
        tmp_path: Path,
        watchdog: list[subprocess.Popen[str]],
        timer_args: str,
        env: dict[str, str],
    ) -> None:
        child = make_child(tmp_path, timer_args=timer_args, env=env)
        ended = signal_child(child, signal.SIGTERM, watchdog)
        assert ended.returncode == -signal.SIGTERM
        assert not (child.folder / "stats.json").exists()
        assert not (child.folder / "trace.json").exists()

    def test_without_export_the_handlers_are_not_installed(
        self, tmp_path: Path, watchdog: list[subprocess.Popen[str]]
    ) -> None:
        child = make_child(
            tmp_path,
            after="print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)",
            env={"MAELTRACE_EXPORT": "0"},
        )
        printed: list[str] = []
        proc = start(child, watchdog, printed)
        assert printed == ["True\n"]
        proc.send_signal(signal.SIGTERM)
        assert finish(proc, time.monotonic()).returncode == -signal.SIGTERM


class TestUserHandlers:
    @pytest.mark.parametrize("signum", SIGNALS)
    def test_a_handler_set_before_is_called_after_the_files_are_written(
        self, tmp_path: Path, watchdog: list[subprocess.Popen[str]], signum: int
    ) -> None:
        handler = USER_HANDLER.format(run_id=RUN_ID, action="os._exit(3)")
        child = make_child(tmp_path, before=f"{handler}\nsignal.signal({signum}, user_handler)")
        ended = signal_child(child, signum, watchdog)
        assert ended.returncode == 3, ended.stderr
        assert json.loads(child.marker.read_text()) == {"signal": signum, "stats_written": True}
        assert counts(child.folder) == {"epoch": 2, "batch": 7}
        assert chrome_epochs(child.folder) == 2

    def test_a_handler_that_lets_the_run_go_on_leaves_the_timer_recording(
        self, tmp_path: Path, watchdog: list[subprocess.Popen[str]]
    ) -> None:
        # The preemption pattern: note the signal, finish the epoch, run on to a checkpoint.
        handler = USER_HANDLER.format(run_id=RUN_ID, action="STOP.append(signum)")
        child = make_child(
            tmp_path,
            before=f"{handler}\nsignal.signal(signal.SIGTERM, user_handler)",
            tail='with tmr.region("epoch"):\n    pass\nprint("ended", flush=True)',
        )
        ended = signal_child(child, signal.SIGTERM, watchdog)
        assert ended.returncode == 0, ended.stderr
        assert ended.stdout == "ended\n"
        assert json.loads(child.marker.read_text())["stats_written"] is True
        # Written again at exit, with the epochs that ended after the signal.
        assert counts(child.folder) == {"epoch": 4, "batch": 7}
        assert chrome_epochs(child.folder) == 4

    def test_a_handler_set_after_the_timer_replaces_ours(
        self, tmp_path: Path, watchdog: list[subprocess.Popen[str]]
    ) -> None:
        handler = USER_HANDLER.format(run_id=RUN_ID, action="os._exit(3)")
        child = make_child(
            tmp_path, before=handler, after="signal.signal(signal.SIGTERM, user_handler)"
        )
        ended = signal_child(child, signal.SIGTERM, watchdog)
        assert ended.returncode == 3, ended.stderr
        assert json.loads(child.marker.read_text())["stats_written"] is False
        assert not (child.folder / "stats.json").exists()

    def test_an_ignored_signal_stays_ignored(
        self, tmp_path: Path, watchdog: list[subprocess.Popen[str]]
    ) -> None:
        child = make_child(
            tmp_path,
            before="signal.signal(signal.SIGTERM, signal.SIG_IGN)",
            tail="print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN, flush=True)",
        )
        proc = start(child, watchdog)
        proc.send_signal(signal.SIGTERM)
        # Ignored at delivery, so once send_signal returned it is gone: the stop file ends the
        # loop, and the child ends normally (its files written at exit, as always).
        child.stop_file.touch()
        ended = finish(proc, time.monotonic())
        assert ended.returncode == 0, ended.stderr
        assert ended.stdout == "True\n"
        assert counts(child.folder)["epoch"] == 3


class TestBounds:
    @pytest.fixture
    def stuck_endpoint(self) -> Iterator[str]:
        """An OTLP/HTTP endpoint that takes connections and never answers."""
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(64)
            yield f"http://127.0.0.1:{server.getsockname()[1]}"

    def stuck_child(self, tmp_path: Path, endpoint: str, timeout_s: float) -> Child:
        return make_child(
            tmp_path,
            before=f"maeltrace._signals.SIGNAL_TIMEOUT_S = {timeout_s}",
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
        )

    def test_a_stuck_endpoint_delays_the_end_by_the_timeout_at_most(
        self, tmp_path: Path, watchdog: list[subprocess.Popen[str]], stuck_endpoint: str
    ) -> None:
        # Without the bound, close() waits 30 s for the endpoint and the export 10 s per try.
        timeout_s = 2.0
        child = self.stuck_child(tmp_path, stuck_endpoint, timeout_s)
        ended = signal_child(child, signal.SIGTERM, watchdog)
        assert ended.returncode == -signal.SIGTERM, ended.stderr
        assert ended.elapsed_s < timeout_s + 4.0, ended.stderr
        # The export may wait only part of the time: the stats and trace are still written.
        assert counts(child.folder) == {"epoch": 2, "batch": 7}, ended.stderr
        assert chrome_epochs(child.folder) == 2

    @pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
    def test_a_second_signal_while_writing_ends_the_process_at_once(
        self, tmp_path: Path, watchdog: list[subprocess.Popen[str]], stuck_endpoint: str
    ) -> None:
        child = self.stuck_child(tmp_path, stuck_endpoint, timeout_s=120.0)
        proc = start(child, watchdog)
        assert signal_handling(proc.pid, signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        # While the files are written the handler is off, so the next SIGTERM is the kernel's.
        deadline = time.monotonic() + 30.0
        while signal_handling(proc.pid, signal.SIGTERM):
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.01)
        sent_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        ended = finish(proc, sent_at)
        assert ended.returncode == -signal.SIGTERM, ended.stderr
        assert ended.elapsed_s < 5.0, ended.stderr


class TestFork:
    def test_a_forked_child_dies_by_the_signal_without_writing_the_parents_files(
        self, tmp_path: Path, watchdog: list[subprocess.Popen[str]]
    ) -> None:
        # A data loader worker forked from the training process: its SIGTERM is the kernel's
        # default again, and only the parent (here, at its normal exit) writes the run's files.
        tail = f"""\
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write_end, b"1" if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else b"0")
    while True:
        time.sleep(0.01)
default = os.read(read_end, 1) == b"1"
os.kill(pid, signal.SIGTERM)
_, status = os.waitpid(pid, 0)
stats = os.path.join(os.environ["MAELTRACE_OUTPUT_DIR"], "{RUN_ID}", "stats.json")
print(json.dumps([default, os.WIFSIGNALED(status) and os.WTERMSIG(status), os.path.exists(stats)]))
"""
        child = make_child(tmp_path, tail=tail)
        proc = start(child, watchdog)
        child.stop_file.touch()
        ended = finish(proc, time.monotonic())
        assert ended.returncode == 0, ended.stderr
        assert json.loads(ended.stdout) == [True, signal.SIGTERM, False]
        assert counts(child.folder)["epoch"] == 3


class TestInstall:
    def test_a_timer_built_off_the_main_thread_installs_nothing_the_next_one_does(
        self, tmp_path: Path
    ) -> None:
        code = """\
import signal, threading, maeltrace
threading.Thread(target=maeltrace.Timer).start()
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
maeltrace.Timer()
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""
        env = make_child(tmp_path).env
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == ["True", "False"]
