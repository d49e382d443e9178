"""An OTLP trace receiver that misbehaves on purpose, for fault-injection tests.

:class:`FaultyOtlpServer` serves OTLP/HTTP (``POST /v1/traces``, protobuf or JSON bodies, gzip
or identity ``Content-Encoding``) and OTLP/gRPC (``TraceService/Export``) on free loopback
ports, in this process, on threads. Each request gets the next action of a script, and once the
script is used up the default action. Actions (strings, checked when the script is set):

``ok``
    accept: decode the spans, count them, answer 200 (gRPC OK) with an empty response.
``slow:S``
    wait S seconds (a float), then accept as ``ok``. The spans count as accepted even when the
    client gave up meanwhile, as a real backend would have ingested them.
``hang``
    read the request and never answer, until the client goes away or the server stops (then
    the connection is closed without an answer; gRPC: the call ends UNAVAILABLE).
``reset``
    read the request, then close the connection abruptly (``SO_LINGER`` 0: a TCP RST, so the
    client sees ``ECONNRESET``). gRPC has no way to reset from a handler; there the call ends
    UNAVAILABLE, which is how a gRPC client reports a reset connection.
``status:N`` or ``status:N:R``
    answer HTTP status N (400-599) with a ``google.rpc.Status`` body, and with ``R`` a
    ``Retry-After: R`` header; ``status:429`` and ``status:503`` send ``Retry-After: 1`` unless
    R is given. gRPC answers the matching code (413 and 429 RESOURCE_EXHAUSTED, 500 INTERNAL,
    503 UNAVAILABLE, 400 INVALID_ARGUMENT, ...), with a ``RetryInfo`` detail when R is given.
``code:NAME`` or ``code:NAME:R``
    gRPC status code NAME (``RESOURCE_EXHAUSTED``, ``UNAVAILABLE``, ``INTERNAL``, any
    ``grpc.StatusCode`` but OK), with a ``RetryInfo`` of R seconds if given; over HTTP the
    matching status (429, 503, 500, ...).

A request larger than ``max_body_bytes`` (on the wire or decompressed) is answered 413 over
HTTP and RESOURCE_EXHAUSTED over gRPC without using up an action. gRPC refuses it itself, as
real receivers do (``grpc.max_receive_message_length``; gRPC's own default is 4 MiB when no
limit is given), so such a gRPC request reaches no handler and is not in :meth:`requests`.

Every other request is recorded (:class:`Request`); the spans of accepted ones are kept
(:class:`AcceptedSpan`), and :meth:`FaultyOtlpServer.wait_for_spans` waits for a number of
distinct span ids. :class:`ClosedPort` (a port that refuses connections) and
:class:`SilentListener` (one that accepts connections and never answers) cover the cheap cases.

Typical use::

    with FaultyOtlpServer(script=["hang", "status:429:2"], default="ok") as server:
        env = {**os.environ, **server.env("http/protobuf")}
        ...  # run the child with env
        ids = server.wait_for_spans(81, timeout=30)

Only the standard library, grpcio and opentelemetry-proto are used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import select
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Final, Self

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.services.process import HOST

__all__ = [
    "GRPC_METHOD",
    "GRPC_SERVICE",
    "TRACES_PATH",
    "AcceptedSpan",
    "ClosedPort",
    "FaultyOtlpError",
    "FaultyOtlpServer",
    "Request",
    "SilentListener",
    "otlp_env",
    "parse_action",
]

TRACES_PATH: Final = "/v1/traces"
GRPC_SERVICE: Final = "opentelemetry.proto.collector.trace.v1.TraceService"
GRPC_METHOD: Final = "Export"

PROTOBUF: Final = "application/x-protobuf"
JSON_TYPE: Final = "application/json"

# How often a waiting handler looks whether its client left or the server stops.
_POLL_S = 0.05
# Seconds stop() waits for the handler threads (they all end within _POLL_S once told to).
_JOIN_S = 10.0
_READ_CHUNK = 1 << 16
# The HTTP status a gRPC code maps to, and back (OTLP specification's tables, loosely).
_CODE_TO_HTTP: Final = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_HTTP_TO_CODE: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_RETRY_AFTER: Final = {429: 1, 503: 1}


class FaultyOtlpError(RuntimeError):
    """A bad script or argument, a server that cannot start, or data that never arrived."""


# -- actions -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Action:
    text: str
    kind: str  # ok, slow, hang, reset, status, code
    seconds: float = 0.0
    http_status: int = 200
    grpc_code: str = "OK"
    retry_after_s: int | None = None


def parse_action(text: str) -> _Action:
    """Checks one action string (see the module docstring) and returns its parsed form.

    Raises:
        FaultyOtlpError: the string is not an action.
    """
    kind, _, rest = text.partition(":")
    args = rest.split(":") if rest else []
    try:
        if kind in ("ok", "hang", "reset") and not args:
            return _Action(text, kind)
        if kind == "slow" and len(args) == 1 and float(args[0]) >= 0:
            return _Action(text, kind, seconds=float(args[0]))
        if kind == "status" and 1 <= len(args) <= 2 and 400 <= int(args[0]) <= 599:
            status = int(args[0])
            retry = int(args[1]) if len(args) == 2 else _DEFAULT_RETRY_AFTER.get(status)
            if retry is not None and retry < 0:
                raise ValueError(retry)
            return _Action(
                text,
                kind,
                http_status=status,
                grpc_code=_HTTP_TO_CODE.get(status, "UNKNOWN"),
                retry_after_s=retry,
            )
        if kind == "code" and 1 <= len(args) <= 2:
            name = args[0].upper()
            if name == "OK" or name not in grpc.StatusCode.__members__:
                raise ValueError(name)
            retry = int(args[1]) if len(args) == 2 else None
            if retry is not None and retry < 0:
                raise ValueError(retry)
            return _Action(
                text,
                kind,
                http_status=_CODE_TO_HTTP.get(name, 500),
                grpc_code=name,
                retry_after_s=retry,
            )
    except ValueError:
        pass
    raise FaultyOtlpError(
        f"{text!r} is not an action: use ok, hang, reset, slow:S, status:N[:R] (N 400-599) "
        "or code:NAME[:R] (a grpc.StatusCode name)"
    )


# -- records -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
    """One request the server received (and did not refuse inside gRPC itself).

    Attributes:
        transport: ``http`` or ``grpc``.
        action: the action it got, as written in the script, or ``too-large`` (over
            ``max_body_bytes``, no action used), ``bad-request`` (an ``ok``/``slow`` request
            whose body did not decode: HTTP 400, gRPC INVALID_ARGUMENT) or ``refused`` (HTTP:
            wrong path, method, content type or encoding; no action used).
        outcome: what the client was answered: an HTTP status (``"200"``, ``"413"``), a gRPC
            code name (``"OK"``), ``hang`` or ``reset``.
        wire_bytes: the body's size as sent (compressed, if it was); None for gRPC, whose
            framing Python does not see.
        body_bytes: the body's size decompressed (for a too-large one, as far as it was read).
        content_type: the ``Content-Type`` (``application/grpc`` for gRPC).
        content_encoding: ``gzip`` or None.
        spans: spans in the body when it decoded, else 0 (counted as accepted only if
            ``outcome`` is ``"200"`` or ``"OK"``).
        received_s: ``time.monotonic()`` when the body was read.
    """

    transport: str
    action: str
    outcome: str
    wire_bytes: int | None
    body_bytes: int
    content_type: str
    content_encoding: str | None
    spans: int
    received_s: float

    @property
    def accepted(self) -> bool:
        """Whether the spans were accepted (answered 200 / OK)."""
        return self.outcome in ("200", "OK")


class AcceptedSpan(tuple[str, str, str]):
    """One accepted span: ``(trace_id, span_id, name)``, ids as lower-case hex."""

    __slots__ = ()

    @property
    def trace_id(self) -> str:
        return self[0]

    @property
    def span_id(self) -> str:
        return self[1]

    @property
    def name(self) -> str:
        return self[2]


def _spans_from_protobuf(body: bytes) -> list[AcceptedSpan]:
    request = ExportTraceServiceRequest.FromString(body)
    spans: list[AcceptedSpan] = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if len(span.trace_id) != 16 or len(span.span_id) != 8:
                    raise ValueError(f"span {span.name!r} has an id of the wrong length")
                spans.append(AcceptedSpan((span.trace_id.hex(), span.span_id.hex(), span.name)))
    return spans


def _member(obj: Any, camel: str, snake: str) -> Any:
    # OTLP/JSON receivers take lowerCamelCase and should take the proto's snake_case names too.
    value = obj.get(camel, obj.get(snake)) if isinstance(obj, dict) else None
    return [] if value is None else value


def _hex_id(value: Any, size: int) -> str:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise ValueError(f"{value!r} is not a {size}-byte hex id")
    return bytes.fromhex(value).hex()


def _spans_from_json(body: bytes) -> list[AcceptedSpan]:
    # Decoded by hand, not with maeltrace's own reader: OTLP/JSON ids are hex, not base64.
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    spans: list[AcceptedSpan] = []
    for resource_spans in _member(data, "resourceSpans", "resource_spans"):
        for scope_spans in _member(resource_spans, "scopeSpans", "scope_spans"):
            for span in _member(scope_spans, "spans", "spans"):
                if not isinstance(span, dict):
                    raise ValueError("a span is not a JSON object")
                spans.append(
                    AcceptedSpan(
                        (
                            _hex_id(_member(span, "traceId", "trace_id"), 16),
                            _hex_id(_member(span, "spanId", "span_id"), 8),
                            str(span.get("name", "")),
                        )
                    )
                )
    return spans


# -- google.rpc.Status and RetryInfo, encoded by hand (googleapis-common-protos is no dependency)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _rpc_status(code: int, message: str, retry_after_s: int | None) -> bytes:
    """A serialised ``google.rpc.Status``, with a ``google.rpc.RetryInfo`` detail if asked."""
    out = (_varint(1 << 3) + _varint(code) if code else b"") + _field(2, message.encode())
    if retry_after_s is not None:
        duration = _varint(1 << 3) + _varint(retry_after_s) if retry_after_s else b""
        retry_info = _field(1, duration)
        detail = _field(1, b"type.googleapis.com/google.rpc.RetryInfo") + _field(2, retry_info)
        out += _field(3, detail)
    return out


# -- the recording core, shared by both transports ---------------------------------------------


class _State:
    """The script, the records and the accepted spans, under one lock."""

    def __init__(self, script: Iterable[str], default: str, max_body_bytes: int | None) -> None:
        self.lock = threading.Condition()
        self.stopping = threading.Event()
        self.max_body_bytes = max_body_bytes
        self.script: list[_Action] = []
        self.default = parse_action(default)
        self.set_script(script, default)
        self.records: list[Request] = []
        self.spans: list[AcceptedSpan] = []
        self.ids: set[tuple[str, str]] = set()

    def set_script(self, script: Iterable[str], default: str | None) -> None:
        actions = [parse_action(text) for text in script]
        new_default = parse_action(default) if default is not None else None
        with self.lock:
            self.script = actions
            if new_default is not None:
                self.default = new_default

    def next_action(self) -> _Action:
        with self.lock:
            return self.script.pop(0) if self.script else self.default

    def too_large(self, size: int) -> bool:
        return self.max_body_bytes is not None and size > self.max_body_bytes

    def record(self, request: Request, spans: Sequence[AcceptedSpan] = ()) -> None:
        with self.lock:
            self.records.append(request)
            if request.accepted:
                self.spans.extend(spans)
                self.ids.update((span[0], span[1]) for span in spans)
            self.lock.notify_all()


# -- OTLP/HTTP ---------------------------------------------------------------------------------


class _HttpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = False  # stop() joins them: each ends within _POLL_S once told to
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        self.state = state
        self.connections: set[socket.socket] = set()
        self.to_reset: set[socket.socket] = set()
        self.guard = threading.Lock()
        super().__init__(address, _HttpHandler)

    def shutdown_request(self, request: Any) -> None:
        with self.guard:
            self.connections.discard(request)
            reset = request in self.to_reset
            self.to_reset.discard(request)
        if not reset:
            super().shutdown_request(request)
            return
        # No shutdown() first: that would send a FIN. With a zero linger time close() sends RST.
        with contextlib.suppress(OSError):
            request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.close()

    def close_connections(self) -> None:
        """Wakes every handler blocked reading its connection (a kept-alive idle one)."""
        with self.guard:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real receivers
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        with self.server.guard:
            self.server.connections.add(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # the base class names it format
        pass  # the records say what happened; stderr stays quiet under pytest

    def do_GET(self) -> None:
        self._refuse(405, "only POST is served")

    def do_PUT(self) -> None:
        self._refuse(405, "only POST is served")

    def do_POST(self) -> None:
        state = self.server.state
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        length_text = self.headers.get("Content-Length")
        if self.path.split("?")[0] != TRACES_PATH:
            self._refuse(404, f"no such path; POST to {TRACES_PATH}", content_type)
            return
        if length_text is None or not length_text.strip().isdigit():
            self._refuse(411, "a Content-Length is required", content_type)
            return
        wire_bytes = int(length_text)
        if state.too_large(wire_bytes):
            self._drain(wire_bytes)
            self._too_large(wire_bytes, wire_bytes, content_type, encoding)
            return
        wire = self.rfile.read(wire_bytes)
        received = time.monotonic()
        if len(wire) < wire_bytes:
            self.close_connection = True  # the client went away mid-body
            return
        if content_type not in (PROTOBUF, JSON_TYPE):
            self._refuse(
                415, f"Content-Type {content_type!r} is not OTLP", content_type, body_read=True
            )
            return
        if encoding not in ("gzip", "identity"):
            self._refuse(
                415, f"Content-Encoding {encoding!r} is not served", content_type, body_read=True
            )
            return
        if encoding == "gzip":
            try:
                body = self._gunzip(wire)
            except (zlib.error, EOFError, OSError) as err:
                self._refuse(400, f"bad gzip body: {err}", content_type, body_read=True)
                return
            if state.too_large(len(body)):
                self._too_large(wire_bytes, len(body), content_type, encoding)
                return
        else:
            body = wire

        def record(action: str, outcome: str, spans: int = 0) -> Request:
            return Request(
                transport="http",
                action=action,
                outcome=outcome,
                wire_bytes=wire_bytes,
                body_bytes=len(body),
                content_type=content_type,
                content_encoding="gzip" if encoding == "gzip" else None,
                spans=spans,
                received_s=received,
            )

        action = state.next_action()
        if action.kind == "hang":
            state.record(record(action.text, "hang"))
            self._hang()
            return
        if action.kind == "reset":
            state.record(record(action.text, "reset"))
            with self.server.guard:
                self.server.to_reset.add(self.connection)
            self.close_connection = True
            return
        if action.kind in ("status", "code"):
            state.record(record(action.text, str(action.http_status)))
            self._error(action.http_status, action, content_type)
            return
        try:
            spans = (
                _spans_from_json(body) if content_type == JSON_TYPE else _spans_from_protobuf(body)
            )
        except Exception as err:  # whatever the decoder raises, the client gets a 400
            state.record(record("bad-request", "400"))
            self._send(
                400, _status_body(3, f"cannot decode: {err}", None, content_type), content_type
            )
            return
        if action.kind == "slow" and state.stopping.wait(action.seconds):
            state.record(record(action.text, "hang", len(spans)))
            self.close_connection = True  # stopped while waiting: no answer
            return
        state.record(record(action.text, "200", len(spans)), spans)
        ok = (
            b"{}" if content_type == JSON_TYPE else ExportTraceServiceResponse().SerializeToString()
        )
        self._send(200, ok, content_type)

    # -- helpers -----------------------------------------------------------------------------

    def _gunzip(self, wire: bytes) -> bytes:
        limit = self.server.state.max_body_bytes
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        # Read one byte past the limit at most: enough to know it is too large, and no bomb.
        body = inflater.decompress(wire, 0 if limit is None else limit + 1)
        if limit is None or len(body) <= limit:
            body += inflater.flush()
            if not inflater.eof:
                raise EOFError("the gzip stream is truncated")
        return body

    def _drain(self, size: int) -> None:
        # Read the whole body, so the client sees the 413 instead of a reset while sending.
        left = size
        while left > 0:
            chunk = self.rfile.read(min(left, _READ_CHUNK))
            if not chunk:
                break
            left -= len(chunk)

    def _too_large(
        self, wire_bytes: int, body_bytes: int, content_type: str, encoding: str
    ) -> None:
        state = self.server.state
        state.record(
            Request(
                transport="http",
                action="too-large",
                outcome="413",
                wire_bytes=wire_bytes,
                body_bytes=body_bytes,
                content_type=content_type,
                content_encoding="gzip" if encoding == "gzip" else None,
                spans=0,
                received_s=time.monotonic(),
            )
        )
        message = f"request body too large: over {state.max_body_bytes} bytes"
        self._send(413, _status_body(8, message, None, content_type), content_type)

    def _refuse(
        self, status: int, message: str, content_type: str = "", *, body_read: bool = False
    ) -> None:
        length = self.headers.get("Content-Length", "0").strip()
        if not length.isdigit():
            self.close_connection = True  # where the next request starts is unknown
        elif not body_read:
            self._drain(int(length))
        self.server.state.record(
            Request(
                transport="http",
                action="refused",
                outcome=str(status),
                wire_bytes=int(length) if length.isdigit() else None,
                body_bytes=0,
                content_type=content_type,
                content_encoding=None,
                spans=0,
                received_s=time.monotonic(),
            )
        )
        self._send(status, message.encode(), "text/plain")

    def _error(self, status: int, action: _Action, content_type: str) -> None:
        code = grpc.StatusCode[action.grpc_code].value[0]
        body = _status_body(code, f"{action.text} (scripted)", action.retry_after_s, content_type)
        headers = {}
        if action.retry_after_s is not None:
            headers["Retry-After"] = str(action.retry_after_s)
        self._send(status, body, content_type, headers)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type or "text/plain")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client left; nothing to tell it

    def _hang(self) -> None:
        """Waits without answering until the client closes its end or the server stops."""
        self.close_connection = True
        while not self.server.state.stopping.wait(_POLL_S):
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return  # the client closed its end (timed out or died)
            except OSError:
                return


def _status_body(code: int, message: str, retry_after_s: int | None, content_type: str) -> bytes:
    """An OTLP/HTTP error body: ``google.rpc.Status`` as protobuf, or as JSON for JSON."""
    if content_type == JSON_TYPE:
        return json.dumps({"code": code, "message": message}).encode()
    return _rpc_status(code, message, retry_after_s)


# -- OTLP/gRPC ---------------------------------------------------------------------------------


class _GrpcHandler:
    def __init__(self, state: _State) -> None:
        self.state = state

    def export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        state = self.state
        received = time.monotonic()

        def record(action: str, outcome: str, spans: int = 0) -> Request:
            return Request(
                transport="grpc",
                action=action,
                outcome=outcome,
                wire_bytes=None,
                body_bytes=len(body),
                content_type="application/grpc",
                content_encoding=None,
                spans=spans,
                received_s=received,
            )

        if state.too_large(len(body)):  # gRPC refuses these first; kept for a larger limit
            state.record(record("too-large", "RESOURCE_EXHAUSTED"))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "request too large")
        action = state.next_action()
        if action.kind == "hang":
            state.record(record(action.text, "hang"))
            while context.is_active() and not state.stopping.wait(_POLL_S):
                pass
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
        if action.kind == "reset":
            state.record(record(action.text, "reset"))
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (scripted)")
        if action.kind in ("status", "code"):
            state.record(record(action.text, action.grpc_code))
            code = grpc.StatusCode[action.grpc_code]
            message = f"{action.text} (scripted)"
            if action.retry_after_s is not None:
                details = _rpc_status(code.value[0], message, action.retry_after_s)
                context.set_trailing_metadata((("grpc-status-details-bin", details),))
            context.abort(code, message)
        try:
            spans = _spans_from_protobuf(body)
        except Exception as err:  # whatever the decoder raises, the client gets an error
            state.record(record("bad-request", "INVALID_ARGUMENT"))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot decode: {err}")
        if action.kind == "slow" and state.stopping.wait(action.seconds):
            state.record(record(action.text, "hang", len(spans)))
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
        state.record(record(action.text, "OK", len(spans)), spans)
        reply: bytes = ExportTraceServiceResponse().SerializeToString()
        return reply


# -- the server --------------------------------------------------------------------------------


def otlp_env(endpoint: str, protocol: str = "http/protobuf") -> dict[str, str]:
    """The ``OTEL_EXPORTER_OTLP_*`` variables that point an exporter at ``endpoint``.

    Args:
        endpoint: a base URL ``http://host:port`` (HTTP gets ``/v1/traces`` added by the
            exporter; for gRPC the ``http`` scheme means plaintext).
        protocol: ``grpc``, ``http/protobuf`` or ``http/json``.
    """
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}


class FaultyOtlpServer:
    """An OTLP/HTTP and OTLP/gRPC trace receiver following a script; a context manager.

    Entering the ``with`` block (or ``start()``) binds both listeners on 127.0.0.1 and serves on
    threads; leaving it (or ``stop()``, also after an exception) ends every hanging request,
    closes every connection and joins every thread.

    Args:
        script: actions for the first requests, one each, in arrival order over both
            transports (see the module docstring).
        default: the action of every request after the script.
        max_body_bytes: larger requests are refused (HTTP 413, gRPC RESOURCE_EXHAUSTED) without
            using an action; None: no limit over HTTP, gRPC's default 4 MiB.
        http_port: the HTTP port; 0 lets the OS choose. Pass a former server's port to bring
            an endpoint back where a client expects it.
        grpc_port: the gRPC port; 0 lets the OS choose.
        grpc_enabled: whether to serve gRPC at all (its server costs a few threads).

    Raises:
        FaultyOtlpError: an action is malformed (here), or a port cannot be bound (at start).
    """

    def __init__(
        self,
        script: Iterable[str] = (),
        *,
        default: str = "ok",
        max_body_bytes: int | None = None,
        http_port: int = 0,
        grpc_port: int = 0,
        grpc_enabled: bool = True,
    ) -> None:
        if max_body_bytes is not None and max_body_bytes < 1:
            raise FaultyOtlpError(f"max_body_bytes must be positive, not {max_body_bytes}")
        self._state = _State(script, default, max_body_bytes)
        self._requested_ports = (http_port, grpc_port)
        self._grpc_enabled = grpc_enabled
        self._http: _HttpServer | None = None
        self._http_thread: threading.Thread | None = None
        self._grpc: grpc.Server | None = None
        self._grpc_pool: ThreadPoolExecutor | None = None
        self._ports: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Binds and serves; on failure stops what started.

        Raises:
            FaultyOtlpError: already started, or a port cannot be bound.
        """
        if self._http is not None:
            raise FaultyOtlpError("the server is started already")
        self._state.stopping.clear()
        try:
            self._start_http()
            if self._grpc_enabled:
                self._start_grpc()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_http(self) -> None:
        try:
            self._http = _HttpServer((HOST, self._requested_ports[0]), self._state)
        except OSError as err:
            raise FaultyOtlpError(
                f"cannot bind OTLP/HTTP to port {self._requested_ports[0]}: {err}"
            ) from err
        self._ports["http"] = self._http.server_address[1]
        self._http_thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": _POLL_S},
            name="faulty-otlp-http",
            daemon=True,
        )
        self._http_thread.start()

    def _start_grpc(self) -> None:
        limit = self._state.max_body_bytes
        options: list[tuple[str, Any]] = [("grpc.so_reuseport", 0)]
        if limit is not None:
            options.append(("grpc.max_receive_message_length", limit))
        self._grpc_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="faulty-otlp-grpc")
        self._grpc = grpc.server(self._grpc_pool, options=options)
        handler = _GrpcHandler(self._state)
        self._grpc.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    GRPC_SERVICE,
                    # No (de)serialisers: the handler gets and returns bytes, so it sees sizes.
                    {GRPC_METHOD: grpc.unary_unary_rpc_method_handler(handler.export)},
                ),
            )
        )
        try:
            port = self._grpc.add_insecure_port(f"{HOST}:{self._requested_ports[1]}")
        except RuntimeError as err:  # grpcio raises this when it cannot bind
            raise FaultyOtlpError(
                f"cannot bind OTLP/gRPC to port {self._requested_ports[1]}: {err}"
            ) from err
        if port == 0:  # older grpcio returns 0 instead of raising
            raise FaultyOtlpError(f"cannot bind OTLP/gRPC to port {self._requested_ports[1]}")
        self._ports["grpc"] = port
        self._grpc.start()

    def stop(self) -> None:
        """Ends hanging and slow requests (no answer), closes connections, joins threads.

        Records and spans stay readable afterwards; a stopped server can be started again
        (on the same ports if they were given).
        """
        self._state.stopping.set()
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(_JOIN_S)
            self._grpc = None
        if self._grpc_pool is not None:
            self._grpc_pool.shutdown(wait=True, cancel_futures=True)
            self._grpc_pool = None
        if self._http is not None:
            self._http.shutdown()  # serve_forever returns within poll_interval
            self._http.close_connections()
            self._http.server_close()  # joins the handler threads
            self._http = None
        if self._http_thread is not None:
            self._http_thread.join(_JOIN_S)
            self._http_thread = None
        self._ports.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- endpoints ---------------------------------------------------------------------------

    def _port(self, kind: str) -> int:
        try:
            return self._ports[kind]
        except KeyError:
            raise FaultyOtlpError(f"the server does not serve {kind} now") from None

    @property
    def http_port(self) -> int:
        """The OTLP/HTTP port."""
        return self._port("http")

    @property
    def grpc_port(self) -> int:
        """The OTLP/gRPC port."""
        return self._port("grpc")

    @property
    def otlp_http_endpoint(self) -> str:
        """Base URL of the OTLP/HTTP receiver, for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://{HOST}:{self.http_port}"

    @property
    def traces_url(self) -> str:
        """Full URL that spans are posted to, for ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``."""
        return f"{self.otlp_http_endpoint}{TRACES_PATH}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        """URL of the OTLP/gRPC receiver (the ``http`` scheme means plaintext)."""
        return f"http://{HOST}:{self.grpc_port}"

    def env(self, protocol: str = "http/protobuf") -> dict[str, str]:
        """The ``OTEL_EXPORTER_OTLP_*`` variables that point an exporter here.

        Args:
            protocol: ``grpc``, ``http/protobuf`` or ``http/json``.
        """
        endpoint = self.otlp_grpc_endpoint if protocol == "grpc" else self.otlp_http_endpoint
        return otlp_env(endpoint, protocol)

    # -- script ------------------------------------------------------------------------------

    def set_script(self, script: Iterable[str], default: str | None = None) -> None:
        """Replaces the actions still to come, and the default if given.

        Raises:
            FaultyOtlpError: an action is malformed (nothing is changed then).
        """
        self._state.set_script(script, default)

    def pending_actions(self) -> list[str]:
        """The script's actions not used yet."""
        with self._state.lock:
            return [action.text for action in self._state.script]

    # -- what was received -------------------------------------------------------------------

    def requests(self) -> list[Request]:
        """Every request recorded so far, in the order their actions were taken."""
        with self._state.lock:
            return list(self._state.records)

    def outcomes(self) -> Counter[str]:
        """How many requests got each outcome (``"200"``, ``"413"``, ``"hang"``, ``"OK"``...)."""
        return Counter(request.outcome for request in self.requests())

    def spans(self) -> list[AcceptedSpan]:
        """Every accepted span in arrival order, repeats included."""
        with self._state.lock:
            return list(self._state.spans)

    def span_ids(self) -> set[tuple[str, str]]:
        """The distinct ``(trace_id hex, span_id hex)`` pairs accepted."""
        with self._state.lock:
            return set(self._state.ids)

    @property
    def spans_accepted(self) -> int:
        """Spans accepted, repeats included."""
        with self._state.lock:
            return len(self._state.spans)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[Request]:
        """Waits until at least ``count`` requests are recorded; returns them all.

        Raises:
            FaultyOtlpError: fewer after ``timeout`` seconds.
        """
        return self._wait(
            lambda: len(self._state.records) >= count, timeout, f"{count} request(s)"
        )[0]

    def wait_for_spans(self, count: int, timeout: float = 10.0) -> set[tuple[str, str]]:
        """Waits until at least ``count`` distinct span ids are accepted; returns them.

        Raises:
            FaultyOtlpError: fewer after ``timeout`` seconds (the message lists the requests).
        """
        return self._wait(lambda: len(self._state.ids) >= count, timeout, f"{count} span id(s)")[1]

    def _wait(
        self, done: Any, timeout: float, what: str
    ) -> tuple[list[Request], set[tuple[str, str]]]:
        deadline = time.monotonic() + timeout
        with self._state.lock:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FaultyOtlpError(
                        f"waited {timeout:.1f} s for {what}: {len(self._state.ids)} distinct "
                        f"span id(s) accepted, {len(self._state.records)} request(s): "
                        f"{self._summary()}"
                    )
                self._state.lock.wait(left)
            return list(self._state.records), set(self._state.ids)

    def _summary(self) -> str:
        shown = [f"{r.transport}:{r.action}->{r.outcome}" for r in self._state.records[-20:]]
        return ", ".join(shown) or "none"


# -- the cheap cases ---------------------------------------------------------------------------


class _PortHolder:
    """A socket on 127.0.0.1 held open for the ``with`` block; see the subclasses."""

    def __init__(self) -> None:
        self._socket: socket.socket | None = None
        self._port = 0

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((HOST, 0))
        return sock

    def __enter__(self) -> Self:
        self._socket = self._bind()
        self._port = self._socket.getsockname()[1]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    @property
    def port(self) -> int:
        """The port held."""
        if self._socket is None:
            raise FaultyOtlpError(f"{type(self).__name__} is not entered")
        return self._port

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``: a base URL for HTTP, a plaintext target for gRPC."""
        return f"http://{HOST}:{self.port}"

    def env(self, protocol: str = "http/protobuf") -> dict[str, str]:
        """The ``OTEL_EXPORTER_OTLP_*`` variables that point an exporter here."""
        return otlp_env(self.endpoint, protocol)


class ClosedPort(_PortHolder):
    """A port that refuses connections (``ECONNREFUSED``) while the ``with`` block lasts.

    The port is bound but not listening, so nothing else can take it meanwhile and the kernel
    answers every connection attempt with a reset.
    """


class SilentListener(_PortHolder):
    """A port that accepts connections and never answers, while the ``with`` block lasts.

    It listens and never calls ``accept``: the kernel completes the handshakes (up to the
    backlog) and buffers what clients send, so a client waits for an answer until its own
    timeout. Past the backlog, new connection attempts themselves wait.

    Args:
        backlog: connections the kernel completes before new ones wait.
    """

    def __init__(self, backlog: int = 64) -> None:
        super().__init__()
        self._backlog = backlog

    def _bind(self) -> socket.socket:
        sock = super()._bind()
        sock.listen(self._backlog)
        return sock
