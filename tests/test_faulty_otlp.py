"""The fault-injection services do what they promise, seen by raw HTTP and gRPC clients.

Every fault-injection test trusts `FaultyOtlpServer`, `ClosedPort`, `SilentListener` and the
training-loop child; these tests check them against the standard library's HTTP clients and a
plain gRPC channel, so a fault seen by maeltrace is the fault that was scripted.
"""

from __future__ import annotations

import errno
import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from maeltrace.otel.export import ExportConfig
from tests.fault_child import SCRIPT, expected_counts
from tests.services.faulty_otlp import (
    ClosedPort,
    FaultyOtlpError,
    FaultyOtlpServer,
    SilentListener,
    parse_action,
)

PROTOBUF = "application/x-protobuf"


def _request(count: int = 3, trace: int = 1, first: int = 0) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for index in range(first, first + count):
        span = spans.add()
        span.trace_id = bytes([trace]) * 16
        span.span_id = (index + 1).to_bytes(8, "big")
        span.name = f"span-{index}"
    return request


def _ids(count: int = 3, trace: int = 1, first: int = 0) -> set[tuple[str, str]]:
    return {
        ((bytes([trace]) * 16).hex(), (index + 1).to_bytes(8, "big").hex())
        for index in range(first, first + count)
    }


def _post(
    server: FaultyOtlpServer,
    body: bytes,
    *,
    content_type: str = PROTOBUF,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    path: str = "/v1/traces",
) -> tuple[int, dict[str, str], bytes]:
    """POSTs with http.client; returns (status, headers, body) for any status."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=timeout)
    try:
        connection.request(
            "POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})}
        )
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.fixture
def server() -> Iterator[FaultyOtlpServer]:
    with FaultyOtlpServer() as started:
        yield started


@pytest.fixture
def stub(server: FaultyOtlpServer) -> Iterator[trace_service_pb2_grpc.TraceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated code


class TestScript:
    @pytest.mark.parametrize(
        "text",
        ["", "bogus", "ok:1", "slow", "slow:-1", "slow:x", "status:200", "status:600",
         "status:429:-1", "code:OK", "code:NOPE", "hang:2"],
    )  # fmt: skip
    def test_malformed_actions_are_refused_when_the_script_is_set(self, text: str) -> None:
        with pytest.raises(FaultyOtlpError, match="is not an action"):
            parse_action(text)
        with pytest.raises(FaultyOtlpError):
            FaultyOtlpServer([text])

    def test_actions_are_used_in_order_then_the_default(self, server: FaultyOtlpServer) -> None:
        server.set_script(["status:500", "status:503"], default="status:400")
        statuses = [_post(server, _request().SerializeToString())[0] for _ in range(4)]
        assert statuses == [500, 503, 400, 400]
        assert [r.action for r in server.requests()] == [
            "status:500",
            "status:503",
            "status:400",
            "status:400",
        ]
        assert server.pending_actions() == [] and server.span_ids() == set()


class TestHttp:
    def test_accepted_spans_are_counted_by_id(self, server: FaultyOtlpServer) -> None:
        body = _request(3).SerializeToString()
        status, headers, reply = _post(server, body)
        assert status == 200 and headers["Content-Type"] == PROTOBUF
        assert ExportTraceServiceResponse.FromString(reply) == ExportTraceServiceResponse()
        _post(server, body)  # the same spans again: counted twice, one id each
        _post(server, _request(2, trace=2).SerializeToString())
        assert server.span_ids() == _ids(3) | _ids(2, trace=2)
        assert server.spans_accepted == 8
        assert server.wait_for_spans(5, timeout=1.0) == server.span_ids()
        (request, *_) = server.requests()
        assert (request.transport, request.outcome, request.spans) == ("http", "200", 3)
        assert request.wire_bytes == request.body_bytes == len(body)

    def test_json_bodies_take_hex_ids(self, server: FaultyOtlpServer) -> None:
        span = {"traceId": "0a" * 16, "spanId": "0b" * 8, "name": "epoch"}
        body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
        status, headers, reply = _post(server, body, content_type="application/json")
        assert (status, headers["Content-Type"], reply) == (200, "application/json", b"{}")
        assert server.span_ids() == {("0a" * 16, "0b" * 8)}
        assert [s.name for s in server.spans()] == ["epoch"]

    def test_gzip_bodies_are_decompressed_and_both_sizes_recorded(
        self, server: FaultyOtlpServer
    ) -> None:
        raw = _request(50).SerializeToString()
        wire = gzip.compress(raw)
        status, _, _ = _post(server, wire, headers={"Content-Encoding": "gzip"})
        assert status == 200 and server.span_ids() == _ids(50)
        (request,) = server.requests()
        assert (request.wire_bytes, request.body_bytes) == (len(wire), len(raw))
        assert request.content_encoding == "gzip" and len(wire) < len(raw)

    def test_reset_closes_the_connection_with_a_tcp_reset(self, server: FaultyOtlpServer) -> None:
        server.set_script(["reset"])
        with pytest.raises(ConnectionResetError) as caught:
            _post(server, _request().SerializeToString())
        # ECONNRESET, not a plain close (RemoteDisconnected, which has no errno).
        assert caught.value.errno == errno.ECONNRESET
        assert [r.outcome for r in server.requests()] == ["reset"]
        assert _post(server, _request().SerializeToString())[0] == 200  # still serving

    @pytest.mark.parametrize(
        ("action", "status", "retry_after"),
        [
            ("status:413", 413, None),
            ("status:429", 429, "1"),
            ("status:429:7", 429, "7"),
            ("status:500", 500, None),
            ("status:503", 503, "1"),
            ("status:503:0", 503, "0"),
            ("code:UNAVAILABLE", 503, None),
            ("code:RESOURCE_EXHAUSTED:2", 429, "2"),
        ],
    )
    def test_status_actions_answer_their_status_and_retry_after(
        self, server: FaultyOtlpServer, action: str, status: int, retry_after: str | None
    ) -> None:
        server.set_script([action])
        request = urllib.request.Request(
            server.traces_url,
            data=_request().SerializeToString(),
            headers={"Content-Type": PROTOBUF},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5.0)
        with caught.value as error:
            assert error.code == status
            assert error.headers.get("Retry-After") == retry_after
            assert error.headers.get("Content-Type") == PROTOBUF
            assert action.encode() in error.read()  # the google.rpc.Status message
        assert server.span_ids() == set() and server.outcomes() == {str(status): 1}

    def test_slow_answers_ok_after_its_delay(self, server: FaultyOtlpServer) -> None:
        server.set_script(["slow:0.3"])
        started = time.monotonic()
        status, _, _ = _post(server, _request().SerializeToString())
        assert status == 200 and time.monotonic() - started >= 0.3
        assert server.span_ids() == _ids(3)

    def test_hang_never_answers_and_the_client_times_out(self, server: FaultyOtlpServer) -> None:
        server.set_script(["hang"])
        with pytest.raises(TimeoutError):
            _post(server, _request().SerializeToString(), timeout=0.3)
        assert server.outcomes() == {"hang": 1} and server.span_ids() == set()
        assert _post(server, _request().SerializeToString())[0] == 200

    def test_stop_ends_a_hanging_request_without_an_answer(self) -> None:
        errors: list[BaseException] = []
        with FaultyOtlpServer(["hang"]) as server:

            def client() -> None:
                try:
                    _post(server, _request().SerializeToString(), timeout=30.0)
                except BaseException as err:
                    errors.append(err)

            thread = threading.Thread(target=client)
            thread.start()
            server.wait_for_requests(1, timeout=5.0)
        thread.join(10.0)
        assert not thread.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], http.client.RemoteDisconnected)

    def test_too_large_bodies_get_413_without_using_an_action(self) -> None:
        with FaultyOtlpServer(["status:500"], max_body_bytes=1000) as server:
            big = _request(60).SerializeToString()
            assert len(big) > 1000
            assert _post(server, big)[0] == 413
            # Small on the wire, too large once decompressed: refused as well.
            bomb = gzip.compress(b"\0" * 5000)
            assert _post(server, bomb, headers={"Content-Encoding": "gzip"})[0] == 413
            assert _post(server, _request(3).SerializeToString())[0] == 500
            too_large = [r for r in server.requests() if r.action == "too-large"]
            assert [(r.outcome, r.wire_bytes) for r in too_large] == [
                ("413", len(big)),
                ("413", len(bomb)),
            ]
            assert too_large[1].body_bytes == 1001  # read one byte past the limit, no more

    def test_requests_that_are_not_otlp_use_no_action(self, server: FaultyOtlpServer) -> None:
        server.set_script(["status:503"])
        body = _request().SerializeToString()
        assert _post(server, body, path="/v1/metrics")[0] == 404
        assert _post(server, body, content_type="text/plain")[0] == 415
        assert _post(server, body, headers={"Content-Encoding": "br"})[0] == 415
        assert _post(server, body)[0] == 503
        assert [r.action for r in server.requests()] == ["refused"] * 3 + ["status:503"]

    def test_undecodable_bodies_get_400(self, server: FaultyOtlpServer) -> None:
        assert _post(server, b"\xff\xff\xff")[0] == 400
        bad_id = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "spanId": ""}]}]}]}
        body = json.dumps(bad_id).encode()
        assert _post(server, body, content_type="application/json")[0] == 400
        assert server.outcomes() == {"400": 2} and server.span_ids() == set()

    def test_wait_for_spans_names_what_arrived_when_it_gives_up(
        self, server: FaultyOtlpServer
    ) -> None:
        server.set_script(["status:429"])
        _post(server, _request().SerializeToString())
        with pytest.raises(FaultyOtlpError, match=r"0 distinct span id.*http:status:429->429"):
            server.wait_for_spans(1, timeout=0.2)


class TestGrpc:
    def test_accepted_spans_are_counted_by_id(
        self, server: FaultyOtlpServer, stub: trace_service_pb2_grpc.TraceServiceStub
    ) -> None:
        reply = stub.Export(_request(4), timeout=5.0)
        stub.Export(_request(4, first=2), timeout=5.0, compression=grpc.Compression.Gzip)
        assert reply == ExportTraceServiceResponse()
        assert server.span_ids() == _ids(6) and server.spans_accepted == 8
        (first, second) = server.requests()
        assert (first.transport, first.outcome, first.spans) == ("grpc", "OK", 4)
        assert (second.outcome, second.spans) == ("OK", 4)
        assert first.body_bytes == len(_request(4).SerializeToString())

    @pytest.mark.parametrize(
        ("action", "code"),
        [
            ("code:RESOURCE_EXHAUSTED", grpc.StatusCode.RESOURCE_EXHAUSTED),
            ("code:UNAVAILABLE", grpc.StatusCode.UNAVAILABLE),
            ("code:INTERNAL", grpc.StatusCode.INTERNAL),
            ("status:413", grpc.StatusCode.RESOURCE_EXHAUSTED),
            ("status:429", grpc.StatusCode.RESOURCE_EXHAUSTED),
            ("status:500", grpc.StatusCode.INTERNAL),
            ("status:503", grpc.StatusCode.UNAVAILABLE),
            ("reset", grpc.StatusCode.UNAVAILABLE),
        ],
    )
    def test_error_actions_end_the_call_with_their_code(
        self,
        server: FaultyOtlpServer,
        stub: trace_service_pb2_grpc.TraceServiceStub,
        action: str,
        code: grpc.StatusCode,
    ) -> None:
        server.set_script([action])
        with pytest.raises(grpc.RpcError) as caught:
            stub.Export(_request(), timeout=5.0)
        assert caught.value.code() == code
        assert server.span_ids() == set()
        stub.Export(_request(), timeout=5.0)  # the default again
        assert server.span_ids() == _ids(3)

    def test_retry_info_carries_the_delay(
        self, server: FaultyOtlpServer, stub: trace_service_pb2_grpc.TraceServiceStub
    ) -> None:
        error_details = pytest.importorskip("google.rpc.error_details_pb2")
        status_pb2 = pytest.importorskip("google.rpc.status_pb2")
        server.set_script(["code:RESOURCE_EXHAUSTED:3"])
        with pytest.raises(grpc.RpcError) as caught:
            stub.Export(_request(), timeout=5.0)
        metadata = dict(caught.value.trailing_metadata())
        status = status_pb2.Status.FromString(metadata["grpc-status-details-bin"])
        assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        (detail,) = status.details
        retry_info = error_details.RetryInfo()
        assert detail.Unpack(retry_info)
        assert retry_info.retry_delay.seconds == 3

    def test_hang_runs_into_the_deadline(
        self, server: FaultyOtlpServer, stub: trace_service_pb2_grpc.TraceServiceStub
    ) -> None:
        server.set_script(["hang"])
        with pytest.raises(grpc.RpcError) as caught:
            stub.Export(_request(), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert server.outcomes() == {"hang": 1}
        stub.Export(_request(), timeout=5.0)
        assert server.span_ids() == _ids(3)

    def test_too_large_requests_are_refused_by_grpc_without_using_an_action(self) -> None:
        with (
            FaultyOtlpServer(["code:INTERNAL"], max_body_bytes=1000) as server,
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        ):
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated code
            with pytest.raises(grpc.RpcError) as caught:
                stub.Export(_request(60), timeout=5.0)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(grpc.RpcError) as caught:
                stub.Export(_request(3), timeout=5.0)
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert server.pending_actions() == []
            # gRPC itself refused the large one (max_receive_message_length): no handler saw it.
            assert [r.action for r in server.requests()] == ["code:INTERNAL"]


class TestCheapFaults:
    def test_a_closed_port_refuses_connections(self) -> None:
        with ClosedPort() as closed:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", closed.port), timeout=2.0)
            with grpc.insecure_channel(f"127.0.0.1:{closed.port}") as channel:
                stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated code
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Export(_request(), timeout=2.0)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    def test_a_silent_listener_accepts_and_never_answers(self) -> None:
        with SilentListener() as silent:
            connection = http.client.HTTPConnection("127.0.0.1", silent.port, timeout=0.3)
            try:
                connection.request("POST", "/v1/traces", body=b"x")  # connects and sends
                with pytest.raises(TimeoutError):
                    connection.getresponse()
            finally:
                connection.close()


class TestEndpoints:
    def test_env_points_maeltrace_at_the_server(self, server: FaultyOtlpServer) -> None:
        http_config = ExportConfig.from_env(server.env("http/protobuf"))
        assert http_config is not None and http_config.endpoint == server.traces_url
        grpc_config = ExportConfig.from_env(server.env("grpc"))
        assert grpc_config is not None
        assert grpc_config.endpoint == f"127.0.0.1:{server.grpc_port}"
        assert not grpc_config.secure

    def test_a_stopped_server_can_come_back_on_its_ports(self) -> None:
        with FaultyOtlpServer() as server:
            ports = (server.http_port, server.grpc_port)
        with pytest.raises(ConnectionRefusedError):  # stopped means closed
            socket.create_connection(("127.0.0.1", ports[0]), timeout=2.0)
        with FaultyOtlpServer(http_port=ports[0], grpc_port=ports[1]) as again:
            assert (again.http_port, again.grpc_port) == ports
            assert _post(again, _request().SerializeToString())[0] == 200

    @pytest.mark.parametrize("kind", ["http", "grpc"])
    def test_a_taken_port_fails_the_start_and_leaves_nothing_running(self, kind: str) -> None:
        with ClosedPort() as taken:
            server = FaultyOtlpServer(**{f"{kind}_port": taken.port})  # type: ignore[arg-type]
            with pytest.raises(FaultyOtlpError, match=f"(?i)cannot bind OTLP/{kind}"), server:
                pass
            with pytest.raises(FaultyOtlpError, match="does not serve"):
                _ = server.http_port


class TestFaultChild:
    def test_expected_counts_are_printed(self) -> None:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--steps", "7", "--expected"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert json.loads(result.stdout) == expected_counts(7)
        assert expected_counts(7)["regions_per_epoch"] == 29

    def test_every_region_of_every_epoch_arrives_as_a_span(
        self, server: FaultyOtlpServer, tmp_path: Path
    ) -> None:
        env = {
            **os.environ,
            **server.env("http/protobuf"),
            "MAELTRACE_EXPORT": "1",
            "MAELTRACE_OUTPUT_DIR": str(tmp_path),
            "MAELTRACE_RUN_ID": "fault-child-self-test",
        }
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--epochs", "2", "--steps", "5", "--step-ms", "1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("started fault-child-self-test ")
        assert lines[1:] == ["epoch-done 1", "epoch-done 2", "finished"]
        counts = expected_counts(5)
        total = 2 * counts["spans_per_epoch"] + counts["run_spans"]
        assert len(server.wait_for_spans(total, timeout=10.0)) == total
        names = [span.name for span in server.spans()]
        assert names.count("epoch") == 2 and names.count("forward") == 10
