"""Hostile requests to ``maeltrace collect``: an open bind without a token is refused, every
route needs the token, gzip bombs of many members or a high ratio are refused quickly, and
mutated OTLP bodies never give a 500 or stop the real service on loopback."""

from __future__ import annotations

import gzip
import http.client
import socket
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from maeltrace import Timer, TimeType
from maeltrace.collect import service
from maeltrace.collect.service import (
    MAX_GZIP_MEMBERS,
    MAX_GZIP_RATIO,
    CollectConfig,
    CollectServer,
)
from maeltrace.otel._otlp_json import read_json_lines, traces_to_json_line
from tests.helpers import mutate_bytes

HOST = "127.0.0.1"
TOKEN = "hostile-requests-token"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_machine_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAELTRACE_COLLECT_TOKEN", raising=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectServer]:
    config = CollectConfig(
        port=0,
        token=TOKEN,
        mlflow_tracking_uri=None,
        state_dir=tmp_path_factory.mktemp("hostile-requests"),
    )
    with CollectServer(config) as running:
        yield running


@pytest.fixture(scope="module")
def real_request(tmp_path_factory: pytest.TempPathFactory) -> ExportTraceServiceRequest:
    """What a timer really exports, read back from the OTLP JSON lines it wrote."""
    folder = tmp_path_factory.mktemp("hostile-spans")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
        with Timer(export=True, output_dir=folder, run_id="hostile-requests") as tmr:
            for _ in range(2):
                with tmr.region(TimeType.EPOCH), tmr.region(TimeType.BATCH):
                    pass
    request = ExportTraceServiceRequest()
    for data in read_json_lines(folder / "traces.otlp.jsonl"):
        request.resource_spans.extend(data.resource_spans)
    assert request.resource_spans
    return request


def call(
    server: CollectServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = TOKEN,
) -> tuple[int, bytes]:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection(HOST, server.port, timeout=20)
    try:
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# -- binding -----------------------------------------------------------------------------------


def _collect(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    code = "import sys; from maeltrace.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "collect", "--mlflow-uri", "none"]
    argv += ["--state-dir", str(tmp_path), *args]
    env = {k: v for k, v in __import__("os").environ.items() if k != "MAELTRACE_COLLECT_TOKEN"}
    return subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def test_an_open_bind_without_a_token_is_refused_before_listening(tmp_path: Path) -> None:
    port = _free_port()
    process = _collect(tmp_path, "--host", "0.0.0.0", "--port", str(port))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "without a token" in lines[0] and "--allow-no-token" in lines[0]
    assert "Traceback" not in err
    with pytest.raises(ConnectionRefusedError), socket.create_connection((HOST, port), timeout=2):
        pass  # nothing listened


def test_an_open_bind_starts_with_the_flag(tmp_path: Path) -> None:
    process = _collect(tmp_path, "--host", "0.0.0.0", "--port", "0", "--allow-no-token")
    try:
        assert process.stderr is not None
        lines = [process.stderr.readline() for _ in range(3)]  # warning, sinks, address
        assert "warning" in lines[0] and "without a token" in lines[0], lines
        assert "listening on http://0.0.0.0:" in lines[-1], lines
    finally:
        process.terminate()
        process.communicate(timeout=30)  # also closes the pipe


# -- the token ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/health"), ("GET", "/runs"), ("GET", "/runs/any"), ("POST", "/v1/traces")],
)
@pytest.mark.parametrize("token", [None, "wrong"])
def test_every_route_needs_the_token(
    server: CollectServer, method: str, path: str, token: str | None
) -> None:
    body = b"" if method == "POST" else None
    headers = {"Content-Type": PROTOBUF} if method == "POST" else None
    status, _ = call(server, method, path, body, headers, token=token)
    assert status == 401


def test_with_the_token_the_routes_answer(server: CollectServer) -> None:
    assert call(server, "GET", "/health")[0] == 200
    assert call(server, "GET", "/runs")[0] == 200
    assert call(server, "GET", "/runs/none-such")[0] == 404


# -- gzip --------------------------------------------------------------------------------------


def _members(count: int) -> bytes:
    return gzip.compress(b"", mtime=0) * count


def test_many_members_are_refused_in_linear_time() -> None:
    body = _members(100_000)  # about 2 MB
    started = time.process_time()
    with pytest.raises(service._Refusal) as refused:
        service._gunzip(body, 16 * 1024 * 1024)
    assert time.process_time() - started < 1.0
    assert refused.value.status == 400 and "members" in refused.value.message
    # As many as allowed still inflate.
    assert service._gunzip(_members(MAX_GZIP_MEMBERS), 1024) == b""


def test_a_high_ratio_is_refused() -> None:
    body = gzip.compress(b"\0" * (4 * 1024 * 1024))  # inflates about 1000-fold and more
    assert len(body) * MAX_GZIP_RATIO < 4 * 1024 * 1024
    with pytest.raises(service._Refusal) as refused:
        service._gunzip(body, 16 * 1024 * 1024)
    assert refused.value.status == 413 and "times its size" in refused.value.message


def test_a_large_body_in_small_pieces_inflates_whole() -> None:
    data = uuid.uuid4().bytes * 100_000  # 1.6 MB, barely compressible
    body = gzip.compress(data[:700_000]) + gzip.compress(data[700_000:])
    assert service._gunzip(body, 16 * 1024 * 1024) == data


@pytest.mark.parametrize(("kind", "status"), [("members", 400), ("ratio", 413)])
def test_gzip_bombs_over_http_are_refused_quickly(
    server: CollectServer, kind: str, status: int
) -> None:
    body = _members(100_000) if kind == "members" else gzip.compress(b"\0" * 8_000_000)
    started = time.monotonic()
    got, answer = call(
        server,
        "POST",
        "/v1/traces",
        body,
        {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"},
    )
    assert time.monotonic() - started < 5.0
    assert got == status, answer
    assert call(server, "GET", "/health")[0] == 200


# -- mutated bodies ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), as_json=st.booleans(), zipped=st.booleans())
def test_mutated_bodies_never_give_500(
    server: CollectServer,
    real_request: ExportTraceServiceRequest,
    data: st.DataObject,
    as_json: bool,
    zipped: bool,
) -> None:
    if as_json:
        valid = traces_to_json_line(real_request).encode("utf-8")
    else:
        valid = real_request.SerializeToString()
    body = mutate_bytes(valid, data.draw, longest_cut=32)
    if zipped:
        body = gzip.compress(body)
        if data.draw(st.booleans()):
            body = mutate_bytes(body, data.draw, longest_cut=32)
    headers = {"Content-Type": JSON if as_json else PROTOBUF}
    if zipped:
        headers["Content-Encoding"] = "gzip"
    status, answer = call(server, "POST", "/v1/traces", body, headers)
    assert status in (200, 400, 413), answer
    assert call(server, "GET", "/health")[0] == 200


def test_zlib_is_what_gzip_members_use() -> None:
    # The bound counts gzip members; a raw zlib stream is not gzip and stays a 400.
    with pytest.raises(service._Refusal) as refused:
        service._gunzip(zlib.compress(b"x"), 1024)
    assert refused.value.status == 400
