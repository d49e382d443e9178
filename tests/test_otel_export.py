"""Export over OTLP/HTTP and OTLP/gRPC to real servers on loopback, configuration from the
environment, the JSON lines exporter, and replay."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import logging
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from maeltrace.otel._otlp_json import (
    append_json_line,
    read_json_lines,
    traces_from_json_line,
    traces_to_json_line,
)
from maeltrace.otel.export import (
    ExportConfig,
    ExportConfigError,
    ExportFailed,
    GrpcExporter,
    HttpExporter,
    JsonLinesExporter,
    count_spans,
    make_exporter,
    replay,
)

HOST = "127.0.0.1"


def make_request(spans: int = 2, name: str = "step") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "train"
    scope = rs.scope_spans.add()
    scope.scope.name = "maeltrace"
    for i in range(spans):
        span = scope.spans.add(
            trace_id=bytes(range(16)),
            span_id=(i + 1).to_bytes(8, "big"),
            name=f"{name}-{i}",
            start_time_unix_nano=1_700_000_000_000_000_000 + i,
            end_time_unix_nano=1_700_000_000_000_000_500 + i,
        )
        span.attributes.add(key="maeltrace.epoch").value.int_value = i
    return request


def free_port() -> int:
    """A port nothing listens on (bound and released: connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class NoSleep:
    """Records the delays the exporter asks for instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


# -- an OTLP/HTTP receiver ---------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def request(self) -> ExportTraceServiceRequest:
        body = gzip.decompress(self.body) if self.headers.get("content-encoding") else self.body
        if self.headers["content-type"] == "application/json":
            data = traces_from_json_line(body.decode("utf-8"))
            return ExportTraceServiceRequest(resource_spans=data.resource_spans)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        return request


@dataclass
class HttpReceiver:
    """Records each POST and answers with the next scripted reply (200 when none is left).

    A reply is a status code, (status, headers, body), "close" (drop the connection without an
    answer) or "hang" (answer nothing until the test ends).
    """

    port: int = 0
    scheme: str = "http"
    replies: queue.Queue[Any] = field(default_factory=queue.Queue)
    received: list[Received] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    def script(self, *replies: Any) -> None:
        for reply in replies:
            self.replies.put(reply)

    def env(self, **extra: str) -> dict[str, str]:
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.base_url, **extra}


def _handler(receiver: HttpReceiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            receiver.received.append(Received(self.path, headers, body))
            try:
                reply = receiver.replies.get_nowait()
            except queue.Empty:
                reply = 200
            if reply == "close":
                self.close_connection = True
                return
            if reply == "hang":
                receiver.stop.wait(10)
                self.close_connection = True
                return
            status, extra, payload = reply if isinstance(reply, tuple) else (reply, {}, None)
            if payload is None:
                payload = ExportTraceServiceResponse().SerializeToString()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    return Handler


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    server = http.server.ThreadingHTTPServer((HOST, 0), _handler(receiver))
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def http_exporter(environ: dict[str, str], **kwargs: Any) -> HttpExporter:
    config = ExportConfig.from_env(environ)
    assert config is not None
    return HttpExporter(config, **kwargs)


# -- an OTLP/gRPC receiver ---------------------------------------------------------------------


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    """Records each call and answers with the next scripted reply (OK when none is left).

    A reply is None (OK), a status code, or (code, trailing metadata).
    """

    def __init__(self) -> None:
        self.replies: queue.Queue[Any] = queue.Queue()
        self.received: list[tuple[ExportTraceServiceRequest, dict[str, str]]] = []

    def Export(self, request: ExportTraceServiceRequest, context: Any) -> Any:
        self.received.append((request, dict(context.invocation_metadata())))
        try:
            reply = self.replies.get_nowait()
        except queue.Empty:
            reply = None
        if reply is not None:
            code, trailing = reply if isinstance(reply, tuple) else (reply, ())
            context.set_trailing_metadata(trailing)
            context.abort(code, f"scripted {code.name}")
        return ExportTraceServiceResponse()


@dataclass
class GrpcReceiver:
    port: int
    service: TraceService


def _grpc_server(credentials: Any = None) -> tuple[Any, int, TraceService]:
    service = TraceService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    if credentials is None:
        port = server.add_insecure_port(f"{HOST}:0")
    else:
        port = server.add_secure_port(f"{HOST}:0", credentials)
    server.start()
    return server, port, service


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    server, port, service = _grpc_server()
    try:
        yield GrpcReceiver(port, service)
    finally:
        server.stop(None).wait(5)


def grpc_exporter(environ: dict[str, str], **kwargs: Any) -> GrpcExporter:
    config = ExportConfig.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **environ})
    assert config is not None
    return GrpcExporter(config, **kwargs)


class ByteCounter:
    """A TCP relay in front of a server that counts the bytes clients send through it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sent = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.05)  # accept() is not woken by close(): poll a flag
        self._closed = threading.Event()
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            upstream = socket.create_connection((HOST, self.upstream_port))
            self._sockets += [client, upstream]
            for src, dst, counted in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, counted), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    with self._lock:
                        self.sent += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):  # the other pump closed it first
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        for sock in self._sockets:
            sock.close()


# -- HTTP --------------------------------------------------------------------------------------


def test_http_protobuf_body_and_headers_arrive(http_receiver: HttpReceiver) -> None:
    exporter = http_exporter(
        http_receiver.env(OTEL_EXPORTER_OTLP_HEADERS="api-key=s%3Dcret%2C1 , X-Tenant=ml,")
    )
    request = make_request()
    exporter.export(request)
    exporter.shutdown()

    (received,) = http_receiver.received
    assert received.path == "/v1/traces"
    assert received.headers["content-type"] == "application/x-protobuf"
    assert "content-encoding" not in received.headers
    assert received.headers["api-key"] == "s=cret,1"
    assert received.headers["x-tenant"] == "ml"
    assert received.headers["user-agent"].startswith("maeltrace/")
    assert received.request() == request


def test_http_json_body(http_receiver: HttpReceiver) -> None:
    exporter = http_exporter(http_receiver.env(OTEL_EXPORTER_OTLP_PROTOCOL="http/json"))
    request = make_request(3)
    exporter.export(request)
    (received,) = http_receiver.received
    assert received.headers["content-type"] == "application/json"
    assert received.body.decode() == traces_to_json_line(request)
    assert received.request() == request


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_http_gzip(http_receiver: HttpReceiver, protocol: str) -> None:
    exporter = http_exporter(
        http_receiver.env(
            OTEL_EXPORTER_OTLP_COMPRESSION="gzip", OTEL_EXPORTER_OTLP_PROTOCOL=protocol
        )
    )
    request = make_request(50)
    exporter.export(request)
    (received,) = http_receiver.received
    assert received.headers["content-encoding"] == "gzip"
    assert len(received.body) < len(gzip.decompress(received.body)) / 3
    assert received.request() == request


def test_http_retries_503_then_succeeds(http_receiver: HttpReceiver) -> None:
    http_receiver.script(503, 502, 200)
    sleep = NoSleep()
    exporter = http_exporter(http_receiver.env(), backoff_s=0.2, sleep=sleep)
    request = make_request()
    exporter.export(request)
    assert len(http_receiver.received) == 3
    assert all(r.request() == request for r in http_receiver.received)
    # Exponential backoff with jitter: each delay within [50 %, 100 %] of 0.2 s, 0.4 s.
    first, second = sleep.delays
    assert 0.1 <= first <= 0.2 and 0.2 <= second <= 0.4


def test_http_honours_retry_after_up_to_the_cap(http_receiver: HttpReceiver) -> None:
    http_receiver.script((429, {"Retry-After": "2"}, b""), (503, {"Retry-After": "3600"}, b""), 200)
    sleep = NoSleep()
    exporter = http_exporter(http_receiver.env(), max_delay_s=5.0, sleep=sleep)
    exporter.export(make_request())
    assert sleep.delays == [2.0, 5.0]


def test_http_gives_up_after_max_attempts(http_receiver: HttpReceiver) -> None:
    http_receiver.script(503, 503, 503, 503)
    exporter = http_exporter(http_receiver.env(), max_attempts=3, sleep=NoSleep())
    with pytest.raises(ExportFailed, match="HTTP 503") as failed:
        exporter.export(make_request())
    assert failed.value.retryable and failed.value.attempts == 3
    assert len(http_receiver.received) == 3


def test_http_400_is_not_retried(http_receiver: HttpReceiver) -> None:
    # A google.rpc.Status{code: 3, message: "bad span"}, as an OTLP receiver answers.
    status = b"\x08\x03\x12\x08bad span"
    http_receiver.script((400, {}, status))
    sleep = NoSleep()
    exporter = http_exporter(http_receiver.env(), sleep=sleep)
    with pytest.raises(ExportFailed, match=r"HTTP 400.*bad span") as failed:
        exporter.export(make_request())
    assert not failed.value.retryable and failed.value.attempts == 1
    assert len(http_receiver.received) == 1 and sleep.delays == []


def test_http_redirect_is_not_followed(http_receiver: HttpReceiver) -> None:
    http_receiver.script((307, {"Location": "/elsewhere"}, b""))
    exporter = http_exporter(http_receiver.env(), sleep=NoSleep())
    with pytest.raises(ExportFailed, match="HTTP 307") as failed:
        exporter.export(make_request())
    assert not failed.value.retryable
    assert [r.path for r in http_receiver.received] == ["/v1/traces"]


def test_http_closed_connection_is_retried(http_receiver: HttpReceiver) -> None:
    http_receiver.script("close", "close", 200)
    exporter = http_exporter(http_receiver.env(), sleep=NoSleep())
    exporter.export(make_request())
    assert len(http_receiver.received) == 3


def test_http_closed_connection_every_time_fails_retryably(http_receiver: HttpReceiver) -> None:
    http_receiver.script("close", "close")
    exporter = http_exporter(http_receiver.env(), max_attempts=2, sleep=NoSleep())
    with pytest.raises(ExportFailed) as failed:
        exporter.export(make_request())
    assert failed.value.retryable and failed.value.attempts == 2


def test_http_timeout_bounds_an_attempt(http_receiver: HttpReceiver) -> None:
    http_receiver.script("hang", "hang")
    exporter = http_exporter(
        http_receiver.env(OTEL_EXPORTER_OTLP_TIMEOUT="300"), max_attempts=2, sleep=NoSleep()
    )
    assert exporter.max_export_s == pytest.approx(2 * 0.3 + 5.0)
    start = time.monotonic()
    with pytest.raises(ExportFailed) as failed:
        exporter.export(make_request())
    assert time.monotonic() - start < 2.0
    assert failed.value.retryable and failed.value.attempts == 2


def test_http_connection_refused_fails_quickly() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://{HOST}:{free_port()}/v1/traces",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
    }
    exporter = http_exporter(environ, backoff_s=0.05)  # real sleeps
    start = time.monotonic()
    with pytest.raises(ExportFailed, match="refused") as failed:
        exporter.export(make_request())
    assert time.monotonic() - start < 3.0
    assert failed.value.retryable and failed.value.attempts == 3


def test_http_logs_partial_success(
    http_receiver: HttpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    response = ExportTraceServiceResponse()
    response.partial_success.rejected_spans = 2
    response.partial_success.error_message = "too old"
    http_receiver.script((200, {}, response.SerializeToString()))
    exporter = http_exporter(http_receiver.env())
    with caplog.at_level(logging.WARNING, logger="maeltrace.otel.export"):
        exporter.export(make_request())
    assert "rejected 2 spans: too old" in caplog.text


def test_export_after_shutdown_fails(http_receiver: HttpReceiver) -> None:
    exporter = http_exporter(http_receiver.env())
    exporter.shutdown()
    with pytest.raises(ExportFailed, match="shut down") as failed:
        exporter.export(make_request())
    assert not failed.value.retryable and http_receiver.received == []


# -- TLS ---------------------------------------------------------------------------------------


@dataclass
class Certificate:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, its own authority."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return Certificate(cert, key)


@pytest.fixture
def https_receiver(certificate: Certificate) -> Iterator[HttpReceiver]:
    receiver = HttpReceiver(scheme="https")
    server = http.server.ThreadingHTTPServer((HOST, 0), _handler(receiver))
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert, certificate.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_https_with_certificate_file(
    https_receiver: HttpReceiver, certificate: Certificate
) -> None:
    exporter = http_exporter(
        https_receiver.env(OTEL_EXPORTER_OTLP_CERTIFICATE=str(certificate.cert))
    )
    assert exporter.config.secure
    request = make_request()
    exporter.export(request)
    assert https_receiver.received[0].request() == request


def test_https_untrusted_certificate_is_not_retried(https_receiver: HttpReceiver) -> None:
    sleep = NoSleep()
    exporter = http_exporter(https_receiver.env(), sleep=sleep)
    with pytest.raises(ExportFailed, match="CERTIFICATE_VERIFY_FAILED") as failed:
        exporter.export(make_request())
    assert not failed.value.retryable and sleep.delays == []


def test_grpc_tls_with_certificate_file(certificate: Certificate) -> None:
    credentials = grpc.ssl_server_credentials(
        [(certificate.key.read_bytes(), certificate.cert.read_bytes())]
    )
    server, port, service = _grpc_server(credentials)
    try:
        exporter = grpc_exporter(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://{HOST}:{port}",
                "OTEL_EXPORTER_OTLP_CERTIFICATE": str(certificate.cert),
            }
        )
        request = make_request()
        exporter.export(request)
        exporter.shutdown()
        assert service.received[0][0] == request
    finally:
        server.stop(None).wait(5)


# -- gRPC --------------------------------------------------------------------------------------


def test_grpc_request_and_metadata_arrive(grpc_receiver: GrpcReceiver) -> None:
    exporter = grpc_exporter(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{grpc_receiver.port}",
            "OTEL_EXPORTER_OTLP_HEADERS": "Api-Key=s%3Dcret,x-tenant=ml",
        }
    )
    assert not exporter.config.secure and exporter.config.endpoint == f"{HOST}:{grpc_receiver.port}"
    request = make_request(4)
    exporter.export(request)
    exporter.shutdown()
    ((received, metadata),) = grpc_receiver.service.received
    assert received == request
    assert metadata["api-key"] == "s=cret" and metadata["x-tenant"] == "ml"
    assert "maeltrace/" in metadata["user-agent"]


def test_grpc_target_without_scheme_and_insecure(grpc_receiver: GrpcReceiver) -> None:
    exporter = grpc_exporter(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"{HOST}:{grpc_receiver.port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        }
    )
    exporter.export(make_request())
    exporter.export(make_request())  # the channel is reused
    exporter.shutdown()
    assert len(grpc_receiver.service.received) == 2


def test_grpc_gzip_shrinks_what_goes_over_the_wire(grpc_receiver: GrpcReceiver) -> None:
    relay = ByteCounter(grpc_receiver.port)
    try:
        request = make_request(1, name="x" * 200_000)  # compresses to almost nothing
        sizes = {}
        for compression in ("none", "gzip"):
            exporter = grpc_exporter(
                {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{relay.port}",
                    "OTEL_EXPORTER_OTLP_COMPRESSION": compression,
                }
            )
            before = relay.sent
            exporter.export(request)
            exporter.shutdown()
            sizes[compression] = relay.sent - before
    finally:
        relay.close()
    assert all(received == request for received, _ in grpc_receiver.service.received)
    assert sizes["none"] > 200_000 > 20 * sizes["gzip"]


def test_grpc_retries_unavailable_then_succeeds(grpc_receiver: GrpcReceiver) -> None:
    grpc_receiver.service.replies.put(grpc.StatusCode.UNAVAILABLE)
    grpc_receiver.service.replies.put(grpc.StatusCode.DEADLINE_EXCEEDED)
    sleep = NoSleep()
    exporter = grpc_exporter(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{grpc_receiver.port}"}, sleep=sleep
    )
    exporter.export(make_request())
    exporter.shutdown()
    assert len(grpc_receiver.service.received) == 3 and len(sleep.delays) == 2


def test_grpc_invalid_argument_is_not_retried(grpc_receiver: GrpcReceiver) -> None:
    grpc_receiver.service.replies.put(grpc.StatusCode.INVALID_ARGUMENT)
    sleep = NoSleep()
    exporter = grpc_exporter(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{grpc_receiver.port}"}, sleep=sleep
    )
    with pytest.raises(ExportFailed, match="INVALID_ARGUMENT") as failed:
        exporter.export(make_request())
    exporter.shutdown()
    assert not failed.value.retryable and failed.value.attempts == 1 and sleep.delays == []


def test_grpc_resource_exhausted_is_not_retried(grpc_receiver: GrpcReceiver) -> None:
    grpc_receiver.service.replies.put(grpc.StatusCode.RESOURCE_EXHAUSTED)
    sleep = NoSleep()
    exporter = grpc_exporter(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{grpc_receiver.port}"}, sleep=sleep
    )
    with pytest.raises(ExportFailed, match="RESOURCE_EXHAUSTED") as failed:
        exporter.export(make_request())
    exporter.shutdown()
    assert not failed.value.retryable and sleep.delays == []
    assert len(grpc_receiver.service.received) == 1


def test_grpc_message_over_the_servers_limit_is_not_retried(grpc_receiver: GrpcReceiver) -> None:
    sleep = NoSleep()
    exporter = grpc_exporter(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{grpc_receiver.port}"}, sleep=sleep
    )
    too_big = make_request(1, name="x" * (5 * 1024 * 1024))  # the default limit is 4 MiB
    with pytest.raises(ExportFailed, match="RESOURCE_EXHAUSTED") as failed:
        exporter.export(too_big)
    exporter.shutdown()
    assert not failed.value.retryable and sleep.delays == []


def test_grpc_connection_refused_fails_quickly() -> None:
    exporter = grpc_exporter(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{free_port()}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
        },
        backoff_s=0.05,  # real sleeps
    )
    start = time.monotonic()
    with pytest.raises(ExportFailed, match="UNAVAILABLE") as failed:
        exporter.export(make_request())
    exporter.shutdown()
    assert time.monotonic() - start < 3.0
    assert failed.value.retryable and failed.value.attempts == 3


# -- configuration -----------------------------------------------------------------------------


def test_no_endpoint_means_no_config() -> None:
    assert ExportConfig.from_env({}) is None
    assert ExportConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}) is None  # empty is unset


def test_defaults_and_generic_endpoint_paths() -> None:
    config = ExportConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert config is not None
    assert config.protocol == "http/protobuf"
    assert config.endpoint == "http://collector:4318/v1/traces"
    assert config.timeout_s == 10.0 and config.compression == "none"
    assert config.headers == () and not config.secure and not config.disabled
    based = ExportConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://h/otlp/"})
    assert based is not None
    assert based.endpoint == "https://h/otlp/v1/traces" and based.secure


def test_signal_specific_variables_win() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/custom",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=generic",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "a=traces,b=2",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "GZIP",
    }
    config = ExportConfig.from_env(environ)
    assert config is not None
    assert config.endpoint == "http://traces:9999/custom"  # used as it is
    assert config.protocol == "http/json"
    assert config.headers == (("a", "traces"), ("b", "2"))
    assert config.timeout_s == 2.5 and config.compression == "gzip"


def test_arguments_win_over_the_environment() -> None:
    environ = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env:4318/v1/traces"}
    config = ExportConfig.from_env(environ, endpoint="http://arg:1234/x", protocol="http/json")
    assert config is not None
    assert config.endpoint == "http://arg:1234/x/v1/traces" and config.protocol == "http/json"
    # A full URL is used as it is.
    config = ExportConfig.from_env(environ, endpoint="http://arg:1234/v1/traces")
    assert config is not None and config.endpoint == "http://arg:1234/v1/traces"
    grpc_config = ExportConfig.from_env({}, endpoint="arg:4317", protocol="grpc")
    assert grpc_config is not None and grpc_config.endpoint == "arg:4317" and grpc_config.secure


@pytest.mark.parametrize(
    ("endpoint", "insecure", "target", "secure"),
    [
        ("https://collector:4317", "true", "collector:4317", True),  # the scheme wins
        ("http://collector:4317/", "false", "collector:4317", False),
        ("collector:4317", "", "collector:4317", True),
        ("collector:4317", "TRUE", "collector:4317", False),
        ("http://[::1]:4317", "", "[::1]:4317", False),
        ("https://collector", "", "collector:443", True),
        ("unix:/run/otel.sock", "true", "unix:/run/otel.sock", False),
    ],
)
def test_grpc_endpoints(endpoint: str, insecure: str, target: str, secure: bool) -> None:
    config = ExportConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_INSECURE": insecure,
        }
    )
    assert config is not None
    assert (config.endpoint, config.secure) == (target, secure)


@pytest.mark.parametrize(
    ("environ", "variable", "problem"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "htp:/x"}, "OTEL_EXPORTER_OTLP_ENDPOINT", "http(s) URL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT", "URL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:99999"}, "OTEL_EXPORTER_OTLP_ENDPOINT", "URL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://"}, "_TRACES_ENDPOINT", "URL"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "h:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc "},
            None,
            None,
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "nope", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "gRPC target",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318/v1/traces",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            },
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "has a path",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_EXPORTER_OTLP_PROTOCOL": "http"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "not a supported OTLP protocol",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_EXPORTER_OTLP_HEADERS": "a"},
            "OTEL_EXPORTER_OTLP_HEADERS",
            "key=value",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "=v"},
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "key=value",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_EXPORTER_OTLP_HEADERS": "a b=1"},
            "OTEL_EXPORTER_OTLP_HEADERS",
            "header name",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h",
                "OTEL_EXPORTER_OTLP_HEADERS": "a=1%0D%0AHost: evil",
            },
            "OTEL_EXPORTER_OTLP_HEADERS",
            "printable ASCII",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_EXPORTER_OTLP_TIMEOUT": "10s"},
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "milliseconds",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0"},
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "positive",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"},
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "gzip or none",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_EXPORTER_OTLP_CERTIFICATE": "/no"},
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "not a file",
        ),
    ],
)
def test_bad_values_name_their_variable(
    environ: dict[str, str], variable: str | None, problem: str | None
) -> None:
    if variable is None:  # the control case: surrounding spaces are fine
        assert ExportConfig.from_env(environ) is not None
        return
    with pytest.raises(ExportConfigError) as raised:
        ExportConfig.from_env(environ)
    message = str(raised.value)
    assert problem is not None and variable in message and problem in message
    assert isinstance(raised.value, ValueError)


def test_client_key_needs_client_certificate(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not checked here")
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://h",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(key),
    }
    with pytest.raises(ExportConfigError, match="OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"):
        ExportConfig.from_env(environ)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ExportConfigError, match="protocol"):
        ExportConfig(protocol="carrier-pigeon", endpoint="http://h")
    with pytest.raises(ExportConfigError, match="timeout_s"):
        ExportConfig(protocol="http/protobuf", endpoint="http://h/v1/traces", timeout_s=0)
    with pytest.raises(ExportConfigError, match="gRPC target"):
        ExportConfig(protocol="grpc", endpoint="http://h:4317")
    config = ExportConfig(protocol="http/json", endpoint="https://h/v1/traces", secure=False)
    assert config.secure  # an HTTP URL's scheme decides


def test_repr_hides_header_values() -> None:
    config = ExportConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cret"}
    )
    assert "api-key" in repr(config) and "s3cret" not in repr(config)


def test_sdk_disabled(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_SDK_DISABLED": "True"}
    config = ExportConfig.from_env(environ)
    assert config is not None and config.disabled
    with pytest.raises(ExportConfigError, match="OTEL_SDK_DISABLED"):
        make_exporter(config)
    # The specification: only "true" is true; other words are false, with a warning.
    with caplog.at_level(logging.WARNING, logger="maeltrace.otel.export"):
        config = ExportConfig.from_env({**environ, "OTEL_SDK_DISABLED": "yes"})
    assert config is not None and not config.disabled
    assert "OTEL_SDK_DISABLED" in caplog.text


def test_make_exporter_picks_the_protocol() -> None:
    http_config = ExportConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h"})
    grpc_config = ExportConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert http_config is not None and grpc_config is not None
    assert isinstance(make_exporter(http_config), HttpExporter)
    exporter = make_exporter(grpc_config)
    assert isinstance(exporter, GrpcExporter)
    exporter.shutdown()
    with pytest.raises(ExportConfigError):
        GrpcExporter(http_config)
    with pytest.raises(ExportConfigError):
        HttpExporter(grpc_config)
    with pytest.raises(ExportConfigError, match="max_attempts"):
        HttpExporter(http_config, max_attempts=0)


# -- JSON lines and replay ---------------------------------------------------------------------


def test_count_spans() -> None:
    request = make_request(3)
    request.resource_spans.add().scope_spans.add().spans.add()
    assert count_spans(request) == 4
    assert count_spans(TracesData(resource_spans=request.resource_spans)) == 4
    assert count_spans(ExportTraceServiceRequest()) == 0


def test_json_lines_exporter(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    exporter = JsonLinesExporter(path)
    first, second = make_request(1), make_request(2)
    exporter.export(first)
    exporter.export(second)
    exporter.shutdown()
    assert [line.resource_spans for line in read_json_lines(path)] == [
        first.resource_spans,
        second.resource_spans,
    ]
    with pytest.raises(ExportFailed, match="cannot append") as failed:
        JsonLinesExporter(tmp_path / "missing" / "t.jsonl").export(first)
    assert not failed.value.retryable


def spill_file(folder: Path, sizes: tuple[int, ...] = (1, 2, 3)) -> tuple[Path, list[TracesData]]:
    path = folder / "spill.jsonl"
    lines = [
        TracesData(resource_spans=make_request(n, name=f"line{i}").resource_spans)
        for i, n in enumerate(sizes)
    ]
    for data in lines:
        append_json_line(path, data)
    return path, lines


def test_replay_sends_every_line(http_receiver: HttpReceiver, tmp_path: Path) -> None:
    path, lines = spill_file(tmp_path)
    before = path.read_bytes()
    config = ExportConfig.from_env(http_receiver.env())
    assert config is not None
    result = replay(path, config)
    assert (result.sent_lines, result.sent_spans, result.failed_lines) == (3, 6, 0)
    assert result.complete and result.failed_path is None
    assert [r.request().resource_spans for r in http_receiver.received] == [
        data.resource_spans for data in lines
    ]
    assert path.read_bytes() == before  # never changed nor deleted
    assert not Path(f"{path}.failed").exists()


def test_replay_in_batches(http_receiver: HttpReceiver, tmp_path: Path) -> None:
    path, _ = spill_file(tmp_path)
    exporter = http_exporter(http_receiver.env())
    result = replay(path, exporter, batch_lines=2)
    assert (result.sent_lines, result.sent_spans) == (3, 6)
    assert [count_spans(r.request()) for r in http_receiver.received] == [3, 3]


def test_replay_to_a_down_endpoint_keeps_every_line(tmp_path: Path) -> None:
    path, _ = spill_file(tmp_path)
    before = path.read_bytes()
    sleep = NoSleep()
    exporter = http_exporter(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{free_port()}"}, sleep=sleep
    )
    result = replay(path, exporter)
    assert (result.sent_lines, result.sent_spans, result.failed_lines) == (0, 0, 3)
    assert not result.complete
    assert result.failed_path == Path(f"{path}.failed")
    assert result.failed_path.read_bytes() == before
    assert path.read_bytes() == before
    # Once the receiver was found down, the other lines were kept without trying them.
    assert len(sleep.delays) == exporter.max_attempts - 1


def test_replay_keeps_refused_and_malformed_lines(
    http_receiver: HttpReceiver, tmp_path: Path
) -> None:
    path, lines = spill_file(tmp_path)
    with open(path, "ab") as file:
        file.write(b'{"resourceSpans": [')  # cut short, no newline
    http_receiver.script(400)  # the first line is refused; the others go on
    failed_path = tmp_path / "unsent.jsonl"
    result = replay(path, http_exporter(http_receiver.env()), failed_path=failed_path)
    assert (result.sent_lines, result.sent_spans) == (2, 5)
    assert (result.failed_lines, result.malformed_lines) == (2, 1)
    kept = failed_path.read_bytes().splitlines(keepends=True)
    assert kept[0] == (traces_to_json_line(lines[0]) + "\n").encode()
    assert kept[1] == b'{"resourceSpans": [\n'
