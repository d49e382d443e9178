"""The timer never harms the run it measures: bad folders, full disks and oversized batches.

Real file systems only: a folder that is a file, a read-only mount and a small tmpfs that fills
up mid-run (mounted by the test; CI runs as root). Endpoint faults are in test_fault_injection.py.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
import warnings
from pathlib import Path

import pytest

from maeltrace import Timer, TimeType
from maeltrace._files import read_lines
from maeltrace.environment import MAELTRACE_OUTPUT_DIR
from maeltrace.errors import ExportWarning
from maeltrace.otel._outbox import Outbox, OutboxEntry, read_outbox
from tests.helpers import mounted_tmpfs
from tests.services.jaeger import JaegerService, free_port

BATCHES = 5
SPANS_PER_EPOCH = 1 + 2 * BATCHES  # the epoch, and per batch its IO wait and the batch


def _train(tmr: Timer, epochs: int = 3, batches: int = BATCHES) -> None:
    for _ in range(epochs):
        with tmr.region(TimeType.EPOCH):
            for _ in tmr.iterate(range(batches)):
                with tmr.region(TimeType.BATCH):
                    pass


def _train_and_close(tmr: Timer, epochs: int = 3, batches: int = BATCHES) -> Timer:
    _train(tmr, epochs, batches)
    tmr.close(timeout_s=5)
    return tmr


def _fill(path: Path) -> None:
    """Writes to ``path`` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


def _train_and_flush(tmr: Timer, epochs: int) -> None:
    _train(tmr, epochs)
    tmr.flush()


def _json_spans(path: Path) -> list[dict[str, object]]:
    """Every span of an OTLP JSON lines file; fails on any unreadable line."""
    spans = []
    for _, line in read_lines(path):
        data = json.loads(line)
        for rs in data["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                spans.extend(ss["spans"])
    return spans


class TestBadOutputFolder:
    @pytest.mark.parametrize("kind", ["a file", "a read-only mount"])
    def test_training_finishes_the_stats_stay_readable_and_the_files_are_rescued(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str],
        kind: str,
    ) -> None:
        output = tmp_path / "out"
        with mounted_tmpfs(output, read_only=True) if kind != "a file" else _file(output):
            monkeypatch.setenv(MAELTRACE_OUTPUT_DIR, str(output))
            run_id = f"bad-folder-{os.getpid()}"
            with pytest.warns(ExportWarning, match=str(output)):
                tmr = _train_and_close(Timer(export=True, run_id=run_id))
            assert tmr.get_time_stats(TimeType.BATCH).count == 3 * BATCHES
            err = capfd.readouterr().err
            assert "could not be written to" in err
            rescued = Path(err.split("they are in ")[-1].split()[0])
            assert json.loads((rescued / "stats.json").read_text())["metadata"]
            assert tmr.export_health.write_errors >= 1

    def test_with_an_endpoint_spans_are_sent_from_memory(
        self,
        jaeger: JaegerService,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        output = tmp_path / "not-a-folder"
        output.write_text("a file where the output folder should be")
        monkeypatch.setenv(MAELTRACE_OUTPUT_DIR, str(output))
        service = f"never-harm-{os.getpid()}"
        monkeypatch.setenv("OTEL_SERVICE_NAME", service)
        with pytest.warns(ExportWarning, match=str(output)):
            tmr = _train_and_close(Timer(export=True, endpoint=jaeger.otlp_http_endpoint))
        assert tmr.export_health.spans_exported == 3 * SPANS_PER_EPOCH + 1
        traces = jaeger.wait_for_spans(service, 3 * SPANS_PER_EPOCH + 1)
        assert sum(len(t["spans"]) for t in traces) == 3 * SPANS_PER_EPOCH + 1


class _file:
    """A regular file where a folder is expected, for the block."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        self.path.write_text("not a folder")
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.path.unlink()


class TestFullDisk:
    def test_no_span_is_lost_and_no_line_torn_once_space_returns(self, tmp_path: Path) -> None:
        with mounted_tmpfs(tmp_path / "small", "256k") as folder:
            run = folder / "run"
            run.mkdir()
            filler = folder / "filler"
            _fill(filler)
            tmr = Timer(export=True, output_dir=run)
            with pytest.warns(ExportWarning, match="traces.otlp.jsonl"):
                _train_and_flush(tmr, epochs=2)
            assert tmr.export_health.spans_unwritten == 2 * SPANS_PER_EPOCH
            assert tmr.get_time_stats(TimeType.BATCH).count == 2 * BATCHES
            filler.unlink()
            _train(tmr, epochs=1)
            tmr.close()
            health = tmr.export_health
            assert (health.spans_unwritten, health.spans_lost) == (0, 0)
            spans = _json_spans(tmr.traces_path)
            assert len(spans) == 3 * SPANS_PER_EPOCH + 1
            assert len({s["spanId"] for s in spans}) == len(spans)
            assert tmr.traces_path.read_bytes().endswith(b"\n")


class TestBoundedRequests:
    def test_traces_file_lines_stay_under_the_limit(self, tmp_path: Path) -> None:
        limit = 8192
        tmr = Timer(export=True, output_dir=tmp_path, max_request_bytes=limit)
        _train(tmr, epochs=2, batches=200)
        tmr.close()
        sizes = [len(line) + 1 for _, line in read_lines(tmr.traces_path)]
        assert len(sizes) > 10 and max(sizes) <= limit
        assert len(_json_spans(tmr.traces_path)) == 2 * (1 + 2 * 200) + 1

    def test_outbox_records_stay_under_the_limit(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        limit = 8192
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "200")
        down = f"http://127.0.0.1:{free_port()}"
        tmr = Timer(export=True, endpoint=down, output_dir=tmp_path, max_request_bytes=limit)
        with pytest.warns(ExportWarning, match="Connection refused"):
            _train_and_close(tmr, epochs=2, batches=200)
        entries = list(read_outbox(tmr.outbox_path))
        assert len(entries) > 10 and max(len(e.body) for e in entries) <= limit
        assert sum(e.spans for e in entries) == 2 * (1 + 2 * 200) + 1

    @pytest.mark.parametrize("value", [0, 100, -5, "4MiB", True])
    def test_a_bad_limit_is_a_value_error(self, value: object) -> None:
        with pytest.raises(ValueError, match="max_request_bytes"):
            Timer(export=True, max_request_bytes=value)  # type: ignore[arg-type]  # on purpose

    def test_the_limit_comes_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MAELTRACE_MAX_REQUEST_BYTES", "lots")
        with pytest.raises(ValueError, match="MAELTRACE_MAX_REQUEST_BYTES"):
            Timer(export=True)


class TestOutbox:
    def test_a_torn_record_is_cut_off_and_the_complete_ones_kept(self, tmp_path: Path) -> None:
        path = tmp_path / "outbox.otlp.outbox"
        with Outbox(path) as outbox:
            first = outbox.append(b"first request", 1)
            outbox.append(b"second request", 2)
            outbox.acknowledge(first)
        with open(path, "ab") as file:
            file.write(b"MTS1\x10\x00")  # a header cut short by a crash
        with pytest.warns(ExportWarning, match="incomplete record"):
            assert [e.body for e in read_outbox(path)] == [b"second request"]
        with pytest.warns(ExportWarning, match="incomplete record"):
            outbox = Outbox(path)
        with outbox:
            assert [e.spans for e in outbox.pending()] == [2]
            outbox.append(b"third", 3)
        assert [e.body for e in read_outbox(path)] == [b"second request", b"third"]

    def test_appends_and_acknowledgements_from_two_threads_keep_every_record(
        self, tmp_path: Path
    ) -> None:
        # The export thread appends while the send thread acknowledges (a race here once wrote
        # two records at one offset).
        path = tmp_path / "outbox.otlp.outbox"
        written: queue.Queue[OutboxEntry | None] = queue.Queue()
        with Outbox(path) as outbox:

            def acknowledge() -> None:
                while (entry := written.get()) is not None:
                    if entry.spans % 2:
                        outbox.acknowledge(entry)

            thread = threading.Thread(target=acknowledge)
            thread.start()
            for i in range(2000):
                written.put(outbox.append(b"x" * (i % 97), i))
            written.put(None)
            thread.join()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pending = [e.spans for e in read_outbox(path)]
        assert pending == list(range(0, 2000, 2))

    def test_two_writers_never_share_a_file(self, tmp_path: Path) -> None:
        with Outbox.open_free(tmp_path, "") as one, Outbox.open_free(tmp_path, "") as two:
            assert one.path != two.path
            assert two.path.name == "outbox.2.otlp.outbox"


class TestExplicitSaves:
    def test_saving_into_a_missing_folder_warns_and_keeps_the_stats(self, tmp_path: Path) -> None:
        tmr = Timer()
        _train(tmr, epochs=1)
        missing = tmp_path / "no" / "such" / "stats.json"
        with pytest.warns(ExportWarning, match="no/such/stats.json"):
            tmr.save_all_time_stats(missing)
        assert tmr.export_health.write_errors == 1
        assert tmr.get_time_stats(TimeType.BATCH).count == BATCHES

    def test_an_existing_file_still_refuses_when_asked_to(self, tmp_path: Path) -> None:
        tmr = Timer()
        _train(tmr, epochs=1)
        (tmp_path / "stats.json").write_text("{}")
        with pytest.raises(FileExistsError):
            tmr.save_all_time_stats(tmp_path / "stats.json", exist_ok=False)
