"""Hostile files through ``maeltrace replay``: real OTLP JSON lines files and outboxes, broken by
the cases the issue names and by hypothesis, sent to a real receiver or a closed port, end with
exit status 0, 1 (some lines not taken by the receiver) or 2 (some lines are not OTLP JSON)
and no traceback, in bounded time."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maeltrace import Timer, TimeType
from maeltrace.cli import main
from maeltrace.otel import _replay as replay_module
from maeltrace.otel._otlp_json import read_json_lines
from maeltrace.otel._outbox import read_outbox
from tests.helpers import mutate_bytes
from tests.services.faulty_otlp import ClosedPort, FaultyOtlpServer

SECONDS = 10.0
"""The most one replay of a small hostile file may take (a closed port answers at once)."""


def _train(tmr: Timer) -> None:
    for _ in range(2):
        with tmr.region(TimeType.EPOCH):
            for _ in range(3):
                with tmr.region(TimeType.BATCH):
                    pass


@pytest.fixture(scope="module")
def jsonl_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real traces.otlp.jsonl, written by a timer with no endpoint."""
    folder = tmp_path_factory.mktemp("hostile-replay")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
        patch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
        with Timer(export=True, output_dir=folder, run_id="jsonl") as tmr:
            _train(tmr)
    data = (folder / "traces.otlp.jsonl").read_bytes()
    assert data.count(b"\n") >= 2
    return data


@pytest.fixture(scope="module")
def outbox_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real outbox, written by a timer whose endpoint is down."""
    folder = tmp_path_factory.mktemp("hostile-outbox")
    with ClosedPort() as port, pytest.MonkeyPatch.context() as patch:
        patch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
        with Timer(export=True, endpoint=port.endpoint, output_dir=folder, run_id="box") as tmr:
            _train(tmr)
        path = tmr.outbox_path
    assert path is not None and list(read_outbox(path))
    return path.read_bytes()


@pytest.fixture(scope="module")
def receiver() -> Iterator[FaultyOtlpServer]:
    with FaultyOtlpServer(script=[], default="ok", max_body_bytes=None) as server:
        yield server


def _replay(path: Path, endpoint: str) -> tuple[int, str]:
    """``maeltrace replay`` of ``path``: the exit status, and stderr with the log records."""
    err = io.StringIO()
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    root.addHandler(handler)
    started = time.monotonic()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(["replay", str(path), "--endpoint", endpoint])
    finally:
        root.removeHandler(handler)
    assert time.monotonic() - started < SECONDS
    return status, err.getvalue()


def _check(status: int, text: str) -> None:
    assert status in (0, 1, 2), text
    assert "Traceback" not in text and "RecursionError" not in text, text


DEEP = b"[" * 100_000 + b"]" * 100_000
NAMED_LINES = {
    "deeply nested": DEEP,
    "deep object": b'{"resourceSpans":' + DEEP + b"}",
    "deep attribute": b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":'
    + b'[{"key":"k","value":{"arrayValue":{"values":['
    + b'{"arrayValue":{"values":[' * 40
    + b"]}}" * 40
    + b"]}}}]}]}]}]}",
    "not OTLP (array)": b"[1, 2, 3]",
    "not OTLP (string)": b'"resourceSpans"',
    "not OTLP (wrong type)": b'{"resourceSpans": 5}',
    "not OTLP (span a number)": b'{"resourceSpans":[{"scopeSpans":[{"spans":[7]}]}]}',
    "huge integer": b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":'
    + b"9" * 4000
    + b"}]}]}]}",
    "float overflow": b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":1e999}]}]}]}',
    "time out of range": b'{"resourceSpans":[{"scopeSpans":[{"spans":'
    + b'[{"startTimeUnixNano":"99999999999999999999999999"}]}]}]}',
    "negative time": b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"endTimeUnixNano":"-5"}]}]}]}',
    "NaN": b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":NaN}]}]}]}',
    "bad id": b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}',
    "not UTF-8": b'{"resourceSpans":"\xff\xfe"}',
}


@pytest.mark.parametrize("case", sorted(NAMED_LINES))
def test_a_hostile_line_is_skipped_and_counted_the_rest_is_sent(
    case: str, jsonl_bytes: bytes, receiver: FaultyOtlpServer, tmp_path: Path
) -> None:
    path = tmp_path / "traces.otlp.jsonl"
    path.write_bytes(NAMED_LINES[case] + b"\n" + jsonl_bytes)
    status, text = _replay(path, receiver.otlp_http_endpoint)
    _check(status, text)
    assert status == 2  # the rest is sent; the hostile line is copied aside and named
    assert "skipped 1 unreadable line" in text, text
    [error] = [line for line in text.splitlines() if line.startswith("maeltrace: error: ")]
    assert f"{path}: 1 line(s) not OTLP JSON" in error
    assert "sent 0 spans" not in text
    failed = Path(f"{path}.failed").read_bytes()
    assert failed.count(b"\n") == 1


def test_a_line_over_the_bound_is_skipped_unread(
    jsonl_bytes: bytes, receiver: FaultyOtlpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_module, "MAX_LINE_BYTES", 4096)
    path = tmp_path / "traces.otlp.jsonl"
    first = jsonl_bytes.split(b"\n", 1)[0]
    path.write_bytes(b'{"x":"' + b"a" * 100_000 + b'"}\n' + first + b"\n")
    status, text = _replay(path, receiver.otlp_http_endpoint)
    _check(status, text)
    assert "a line over 4096 bytes" in text
    assert Path(f"{path}.failed").stat().st_size <= 4097  # only the bounded head is kept


def test_read_json_lines_skips_a_deep_line(jsonl_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "traces.otlp.jsonl"
    path.write_bytes(DEEP + b"\n" + jsonl_bytes)
    assert len(list(read_json_lines(path))) == jsonl_bytes.count(b"\n")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_jsonl_files_never_give_a_traceback(
    data: st.DataObject, jsonl_bytes: bytes, receiver: FaultyOtlpServer, tmp_path: Path
) -> None:
    path = tmp_path / "traces.otlp.jsonl"
    path.write_bytes(mutate_bytes(jsonl_bytes, data.draw))
    _check(*_replay(path, receiver.otlp_http_endpoint))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), closed=st.booleans())
def test_mutated_outboxes_never_give_a_traceback(
    data: st.DataObject,
    closed: bool,
    outbox_bytes: bytes,
    receiver: FaultyOtlpServer,
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.otlp.outbox"
    path.write_bytes(mutate_bytes(outbox_bytes, data.draw))
    with ClosedPort() as port:
        endpoint = port.endpoint if closed else receiver.otlp_http_endpoint
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
            _check(*_replay(path, endpoint))
