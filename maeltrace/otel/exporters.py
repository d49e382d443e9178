"""Exporters: OTLP over HTTP (protobuf or JSON) or gRPC, and an OTLP JSON lines file."""

from __future__ import annotations

import errno
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from maeltrace._version import __version__
from maeltrace.errors import ExportFailed
from maeltrace.otel.batching import split_request
from maeltrace.otel.config import (
    GRPC,
    HTTP_JSON,
    HTTP_PROTOBUF,
    OTEL_SDK_DISABLED,
    ExportConfig,
    ExportConfigError,
)
from maeltrace.otel.otlp_json import append_json_line, traces_to_json_line

if TYPE_CHECKING:
    # grpc and urllib.request (together about 0.25 s) are imported by the exporter that needs
    # them, not with this module.
    import urllib.request

__all__ = [
    "ExportFailed",
    "GrpcExporter",
    "HttpExporter",
    "JsonLinesExporter",
    "Request",
    "SpanExporter",
    "count_spans",
    "make_exporter",
    "request_message",
    "send_splitting",
]

# The logger export.py used before it was split, so that logging configurations naming it keep
# working for every part of export.
_log = logging.getLogger("maeltrace.otel.export")

_USER_AGENT = f"maeltrace/{__version__}"
# Span batches are mostly random ids: level 1 compresses 20,000 spans (1.7 MB) in 16 ms to within
# 2 % of level 6 (53 ms) and 9 (215 ms), so the export thread spends little CPU on it.
_GZIP_LEVEL = 1
# An OTLP response is a few bytes (partial success) or an error Status; more is not read.
_MAX_RESPONSE_BYTES = 64 * 1024


def count_spans(data: TracesData | ExportTraceServiceRequest) -> int:
    """The number of spans in a ``TracesData`` or an export request."""
    return sum(len(ss.spans) for rs in data.resource_spans for ss in rs.scope_spans)


Request = ExportTraceServiceRequest | bytes
"""An export request: the message, or its serialised bytes (what the pipeline and the outbox
hold, sent as they are over OTLP/gRPC and OTLP/HTTP protobuf)."""


def request_message(request: Request) -> ExportTraceServiceRequest:
    """The request as a message, parsing it if it is serialised."""
    if isinstance(request, bytes):
        message: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(request)
        return message
    return request


class SpanExporter(Protocol):
    """Something that sends export requests somewhere.

    `export` either delivers the request or raises `ExportFailed` (and nothing else), after
    whatever retries the exporter makes, within a bounded time.
    """

    def export(self, request: Request) -> None:
        """Sends one request (a message or its serialised bytes).

        Raises:
            ExportFailed: it was not delivered.
        """

    def shutdown(self) -> None:
        """Releases connections; exports afterwards fail."""


class _AttemptError(Exception):
    """One attempt failed; whether to retry, after how long if the receiver said, and whether
    the receiver refused the request for its size."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after_s: float | None = None,
        too_large: bool = False,
    ):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.too_large = too_large


class _RetryingExporter:
    """What the network exporters share: the retry loop and its bounds.

    Args:
        config: the configuration.
        max_attempts: attempts per export, at least 1.
        backoff_s: the delay before the first retry; it doubles for each further one, and is
            drawn from [50 %, 100 %] of that (jitter, so that many processes failing at once do
            not retry in step).
        max_delay_s: the most that one delay can be, also when the receiver asks for a longer
            one (HTTP ``Retry-After``, gRPC ``RetryInfo``).
        sleep: how to wait (tests pass one that does not).
    """

    _name = "OTLP"
    _protocols: tuple[str, ...] = ()

    def __init__(
        self,
        config: ExportConfig,
        *,
        max_attempts: int = 3,
        backoff_s: float = 0.2,
        max_delay_s: float = 5.0,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if config.protocol not in self._protocols:
            raise ExportConfigError(
                f"{type(self).__name__} needs the {' or '.join(self._protocols)} protocol, "
                f"not {config.protocol}"
            )
        if config.disabled:
            raise ExportConfigError(
                f"export is disabled ({OTEL_SDK_DISABLED}=true); check config.disabled first"
            )
        if max_attempts < 1:
            raise ExportConfigError(f"max_attempts={max_attempts} must be at least 1")
        if not (backoff_s >= 0 and max_delay_s >= 0):
            raise ExportConfigError("backoff_s and max_delay_s cannot be negative")
        self.config = config
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_delay_s = max_delay_s
        self._sleep = sleep
        self._random = random.Random()
        self._shut_down = False
        self._prepare(config)

    def _prepare(self, config: ExportConfig) -> None:
        """Sets up the transport; each exporter has its own."""

    @property
    def max_export_s(self) -> float:
        """The longest that one `export` call can take, in seconds: every attempt timing out
        and every delay at its cap (plus the time to encode the request)."""
        return self.max_attempts * self.config.timeout_s + (self.max_attempts - 1) * (
            self.max_delay_s
        )

    def _run(self, attempt: Callable[[], None]) -> None:
        if self._shut_down:
            raise ExportFailed(f"{self._name} exporter is shut down", retryable=False)
        for number in range(1, self.max_attempts + 1):
            try:
                attempt()
                return
            except _AttemptError as err:
                if not err.retryable or number == self.max_attempts:
                    raise ExportFailed(
                        f"{self._name} export to {self.config.endpoint} failed: {err} "
                        f"(attempt {number} of {self.max_attempts})",
                        retryable=err.retryable,
                        attempts=number,
                        too_large=err.too_large,
                    ) from err.__cause__
                self._sleep(self._delay(number, err.retry_after_s))
            except Exception as err:
                # Whatever a library raises that was not foreseen: report it, don't retry it.
                raise ExportFailed(
                    f"{self._name} export to {self.config.endpoint} failed unexpectedly: "
                    f"{type(err).__name__}: {err}",
                    retryable=False,
                    attempts=number,
                ) from err

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_delay_s)
        exponential = self.backoff_s * 2.0 ** (attempt - 1)
        return min(exponential * self._random.uniform(0.5, 1.0), self.max_delay_s)


class HttpExporter(_RetryingExporter):
    """Sends spans over OTLP/HTTP, as protobuf (``http/protobuf``) or JSON (``http/json``).

    Each export is one POST of the whole request. A 2xx answer is success (spans the receiver
    rejected in a partial success are logged); 429, 502, 503 and 504, refused or reset
    connections and timeouts are retried, after the ``Retry-After`` the receiver sent if any,
    else after an exponential backoff with jitter; any other answer fails at once, and so do
    TLS certificate errors. Redirects are not followed (OTLP receivers do not send them; a POST
    must not silently turn into a GET).

    Time: at most ``max_attempts`` attempts, each with ``config.timeout_s`` as the socket
    timeout of its connect, send and each read, and at most ``max_delay_s`` between attempts:
    an export returns within `max_export_s` (max_attempts * timeout_s + (max_attempts - 1) *
    max_delay_s; 40 s with the defaults), except that name resolution is the resolver's and a
    receiver that trickles its answer a byte at a time can stretch an attempt.

    Proxies come from the usual ``https_proxy``/``http_proxy``/``no_proxy`` variables.

    Args:
        config: an ``http/protobuf`` or ``http/json`` configuration.
        max_attempts: attempts per export, at least 1.
        backoff_s: the delay before the first retry; doubled for each further one, with jitter.
        max_delay_s: the most that one delay can be, ``Retry-After`` included.
        sleep: how to wait between attempts.

    Raises:
        ExportConfigError: the configuration is for gRPC or disabled, or its TLS files cannot
            be loaded.
    """

    _name = "OTLP/HTTP"
    _protocols = (HTTP_PROTOBUF, HTTP_JSON)

    def _prepare(self, config: ExportConfig) -> None:
        self._opener = _http_opener(config)
        headers = {"User-Agent": _USER_AGENT}
        headers.update(config.headers)
        # After the user's: these describe the body and must be right.
        headers["Content-Type"] = (
            "application/json" if config.protocol == HTTP_JSON else "application/x-protobuf"
        )
        if config.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        self._headers = headers

    def export(self, request: Request) -> None:
        """Posts one request, retrying as the class describes.

        Raises:
            ExportFailed: it was not delivered; ``retryable`` says whether a later try may be.
        """
        try:
            body = self._encode(request)
        except Exception as err:
            raise ExportFailed(f"cannot encode the request: {err}", retryable=False) from err
        self._run(lambda: self._post(body))

    def shutdown(self) -> None:
        """Makes later exports fail; there is no connection to close (one per request)."""
        self._shut_down = True

    def _encode(self, request: Request) -> bytes:
        if self.config.protocol == HTTP_JSON:
            body = traces_to_json_line(request_message(request)).encode("utf-8")
        elif isinstance(request, bytes):
            body = request
        else:
            body = request.SerializeToString()
        if self.config.compression == "gzip":
            import gzip

            body = gzip.compress(body, compresslevel=_GZIP_LEVEL, mtime=0)
        return body

    def _post(self, body: bytes) -> None:
        import http.client
        import ssl
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self.config.endpoint, data=body, headers=self._headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self.config.timeout_s) as response:
                payload = response.read(_MAX_RESPONSE_BYTES)
                content_type = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            with err:
                detail = _http_error_detail(err)
                retryable = err.code in (429, 502, 503, 504)
                retry_after = _retry_after_s(err.headers.get("Retry-After")) if retryable else None
            raise _AttemptError(
                f"HTTP {err.code} {err.reason}{detail}",
                retryable=retryable,
                retry_after_s=retry_after,
                too_large=err.code == 413,
            ) from err
        except urllib.error.URLError as err:
            # Raised for connect-time trouble; the reason is the underlying OSError.
            reason = err.reason
            retryable = not isinstance(reason, ssl.SSLCertVerificationError)
            raise _AttemptError(f"{reason}", retryable=retryable) from err
        except ssl.SSLCertVerificationError as err:
            raise _AttemptError(f"{err}", retryable=False) from err
        except (OSError, http.client.HTTPException) as err:
            # Reset or closed connections, timeouts while sending or reading.
            raise _AttemptError(f"{type(err).__name__}: {err}", retryable=True) from err
        _log_partial_success(payload, content_type)


def _http_opener(config: ExportConfig) -> urllib.request.OpenerDirector:
    import ssl
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # the 3xx then fails as an HTTPError

    handlers: list[urllib.request.BaseHandler] = [NoRedirect()]
    if config.secure:
        try:
            context = ssl.create_default_context(cafile=config.certificate)
            if config.client_certificate is not None:
                context.load_cert_chain(config.client_certificate, config.client_key)
        except (OSError, ssl.SSLError) as err:
            raise ExportConfigError(f"cannot load the TLS files: {err}") from err
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def _http_error_detail(err: Any) -> str:
    try:
        body: bytes = err.read(_MAX_RESPONSE_BYTES)
    except Exception:  # the answer is lost already; the status says enough
        return ""
    message = _status_message(body) if body else ""
    return f": {message}" if message else ""


def _status_message(body: bytes) -> str:
    """Something printable of an error body (OTLP sends a protobuf ``google.rpc.Status``,
    whose generated class is not a dependency; its message is mostly readable as it is)."""
    text = body[:300].decode("utf-8", "replace")
    printable = "".join(ch for ch in text if ch.isprintable())
    return printable.strip()


def _retry_after_s(raw: str | None) -> float | None:
    """A ``Retry-After`` value in seconds: a number of seconds or an HTTP date."""
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _log_partial_success(payload: bytes, content_type: str) -> None:
    # A 2xx may still report spans the receiver dropped; they are not ours to retry (the
    # specification says not to), but people should hear of it.
    rejected, message = 0, ""
    try:
        if content_type.startswith("application/json") or payload.lstrip().startswith(b"{"):
            import json

            partial = json.loads(payload or b"{}").get("partialSuccess") or {}
            rejected = int(partial.get("rejectedSpans") or 0)
            message = str(partial.get("errorMessage") or "")
        elif payload:
            response = ExportTraceServiceResponse.FromString(payload)
            rejected = response.partial_success.rejected_spans
            message = response.partial_success.error_message
    except Exception:  # an answer we cannot read is still a success
        return
    if rejected or message:
        _log.warning("OTLP receiver rejected %d spans: %s", rejected, message or "no reason")


# gRPC status codes (their numbers are fixed by gRPC) that the OTLP specification retries:
# CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS. The specification
# retries RESOURCE_EXHAUSTED (8) only with a RetryInfo, whose generated class (in
# googleapis-common-protos) is not a dependency: it is not retried. A too-large message gets
# that code too, which no retry fixes.
_GRPC_RETRYABLE = frozenset({1, 4, 10, 11, 14, 15})

_GRPC_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class GrpcExporter(_RetryingExporter):
    """Sends spans over OTLP/gRPC (``TraceService/Export``).

    The channel is made at the first export, in the process that exports (gRPC channels do not
    survive a fork; a process forked afterwards makes its own), and reused. Status codes that
    the OTLP specification calls transient (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, CANCELLED,
    OUT_OF_RANGE, DATA_LOSS) are retried after an exponential backoff with jitter; any other
    code (RESOURCE_EXHAUSTED included: see `_GRPC_RETRYABLE`) fails at once; RESOURCE_EXHAUSTED
    is marked ``too_large``, since receivers give it for messages over their size limit. Calls
    do not wait for the channel to become ready: a receiver that is down fails an attempt at once.

    Time: ``config.timeout_s`` is each attempt's gRPC deadline, and at most ``max_delay_s``
    passes between attempts: an export returns within `max_export_s` (max_attempts *
    timeout_s + (max_attempts - 1) * max_delay_s; 40 s with the defaults).

    Receivers refuse messages over their limit (4 MiB by default, for the Collector too) with
    RESOURCE_EXHAUSTED: keep batches under it.

    Args:
        config: a ``grpc`` configuration.
        max_attempts: attempts per export, at least 1.
        backoff_s: the delay before the first retry; doubled for each further one, with jitter.
        max_delay_s: the most that one delay can be, ``RetryInfo`` included.
        sleep: how to wait between attempts.

    Raises:
        ExportConfigError: the configuration is for HTTP or disabled, or its TLS files cannot be
            read.
    """

    _name = "OTLP/gRPC"
    _protocols = (GRPC,)

    def _prepare(self, config: ExportConfig) -> None:
        import grpc  # type: ignore[import-untyped]  # grpcio ships no type information

        self._grpc: Any = grpc
        self._credentials: Any = None
        if config.secure:
            try:
                self._credentials = grpc.ssl_channel_credentials(
                    root_certificates=_read(config.certificate),
                    private_key=_read(config.client_key),
                    certificate_chain=_read(config.client_certificate),
                )
            except OSError as err:
                raise ExportConfigError(f"cannot read the TLS files: {err}") from err
        # gRPC metadata names a binary value with a "-bin" suffix and wants it as bytes.
        self._metadata = tuple(
            (name, value.encode() if name.endswith("-bin") else value)
            for name, value in config.headers
        )
        self._compression = grpc.Compression.Gzip if config.compression == "gzip" else None
        self._lock = threading.Lock()
        self._channel: Any = None
        self._stub: Any = None
        self._pid = 0

    def export(self, request: Request) -> None:
        """Sends one request, retrying as the class describes.

        Raises:
            ExportFailed: it was not delivered; ``retryable`` says whether a later try may be.
        """
        body = request if isinstance(request, bytes) else request.SerializeToString()
        self._run(lambda: self._call(body))

    def shutdown(self) -> None:
        """Closes the channel; later exports fail."""
        with self._lock:
            self._shut_down = True
            if self._channel is not None and self._pid == os.getpid():
                self._channel.close()
            self._channel = self._stub = None

    def _stub_now(self) -> Any:
        with self._lock:
            if self._shut_down:
                raise _AttemptError("exporter is shut down", retryable=False)
            if self._stub is None or self._pid != os.getpid():
                options = [
                    ("grpc.primary_user_agent", _USER_AGENT),
                    # Calls fail at once while the channel waits to reconnect, and gRPC's wait
                    # grows to 2 minutes: a receiver back up would get nothing for that long.
                    ("grpc.max_reconnect_backoff_ms", 5000),
                ]
                if self._credentials is None:
                    channel = self._grpc.insecure_channel(self.config.endpoint, options=options)
                else:
                    channel = self._grpc.secure_channel(
                        self.config.endpoint, self._credentials, options=options
                    )
                self._channel, self._pid = channel, os.getpid()
                # Requests arrive serialised (the outbox holds bytes): no serializer.
                self._stub = channel.unary_unary(
                    _GRPC_EXPORT_METHOD,
                    request_serializer=None,
                    response_deserializer=ExportTraceServiceResponse.FromString,
                )
            return self._stub

    def _call(self, body: bytes) -> None:
        export = self._stub_now()
        try:
            response = export(
                body,
                metadata=self._metadata,
                timeout=self.config.timeout_s,
                compression=self._compression,
                wait_for_ready=False,
            )
        except self._grpc.RpcError as err:
            code = err.code()
            number = code.value[0] if code is not None else -1
            name = code.name if code is not None else "UNKNOWN"
            raise _AttemptError(
                f"{name}: {err.details()}",
                retryable=number in _GRPC_RETRYABLE,
                too_large=name == "RESOURCE_EXHAUSTED",
            ) from err
        partial = response.partial_success
        if partial.rejected_spans or partial.error_message:
            _log.warning(
                "OTLP receiver rejected %d spans: %s",
                partial.rejected_spans,
                partial.error_message or "no reason",
            )


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


class JsonLinesExporter:
    """Appends each request to an OTLP JSON lines file, one ``TracesData`` line per request.

    Used for the embedded default output and for the spill file of the network exporters; the
    Collector's ``otlpjsonfile`` receiver reads the file, and so does `replay`. Each line is
    written whole in one ``write`` with ``O_APPEND`` (see `append_json_line`), so several
    threads or processes may share a file.

    Args:
        path: the file; its folder must exist when spans are exported.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def export(self, request: Request) -> None:
        """Appends the request as one line.

        Raises:
            ExportFailed: the file cannot be written; ``retryable`` when the disk is full.
        """
        try:
            append_json_line(self.path, request_message(request))
        except OSError as err:
            full = err.errno in (errno.ENOSPC, errno.EDQUOT)
            raise ExportFailed(f"cannot append to {self.path}: {err}", retryable=full) from err
        except Exception as err:
            raise ExportFailed(f"cannot encode the request: {err}", retryable=False) from err

    def shutdown(self) -> None:
        """Nothing to release: the file is opened for each line."""


def send_splitting(exporter: SpanExporter, body: bytes) -> int:
    """Sends a serialised request, halving it while the receiver refuses its size (HTTP 413,
    gRPC RESOURCE_EXHAUSTED) until the parts pass or a single span is refused.

    Returns:
        How many times a request was halved.

    Raises:
        ExportFailed: a part was not delivered (the parts before it were: sending the whole
            request again repeats them, under the same span ids).
    """
    try:
        exporter.export(body)
    except ExportFailed as err:
        halves = split_request(body) if err.too_large else None
        if halves is None:
            raise
        return 1 + sum(send_splitting(exporter, half) for half in halves)
    return 0


def make_exporter(config: ExportConfig) -> SpanExporter:
    """The exporter for a configuration's protocol, with the default retries.

    Raises:
        ExportConfigError: the configuration is disabled (check ``config.disabled`` first), or
            its TLS files cannot be loaded.
    """
    if config.protocol == GRPC:
        return GrpcExporter(config)
    return HttpExporter(config)
