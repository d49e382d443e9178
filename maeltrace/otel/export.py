"""Sending spans: OTLP over HTTP (protobuf or JSON) or gRPC, an OTLP JSON lines file, replay.

Spans arrive here already built as ``ExportTraceServiceRequest`` messages. An exporter sends one
request per `SpanExporter.export` call, retrying transient failures a bounded number of times
with exponential backoff and jitter (the OTLP exporter specification's retry rules); what still
fails raises `ExportFailed`, and the caller writes the request to a spill file with a
`JsonLinesExporter`. `replay` sends such a file later.

`ExportConfig.from_env` reads the standard ``OTEL_EXPORTER_OTLP_*`` variables, the trace-specific
``OTEL_EXPORTER_OTLP_TRACES_*`` ones winning over the generic ones, and ``OTEL_SDK_DISABLED``.
Every mistake in them raises `ExportConfigError` there, naming the variable, not later in an
export.

``grpc`` and ``urllib.request`` are imported by the exporter that needs them (together about
0.25 s), not with this module.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, NamedTuple, Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from maeltrace._version import __version__
from maeltrace.errors import MaeltraceError
from maeltrace.files import read_lines
from maeltrace.otel.batching import DEFAULT_MAX_REQUEST_BYTES, split_request, split_traces
from maeltrace.otel.otlp_json import append_json_line, traces_from_json_line, traces_to_json_line
from maeltrace.otel.outbox import Outbox, is_outbox

if TYPE_CHECKING:
    import urllib.request

__all__ = [
    "GRPC",
    "HTTP_JSON",
    "HTTP_PROTOBUF",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_SDK_DISABLED",
    "ExportConfig",
    "ExportConfigError",
    "ExportFailed",
    "GrpcExporter",
    "HttpExporter",
    "JsonLinesExporter",
    "ReplayResult",
    "Request",
    "SpanExporter",
    "count_spans",
    "make_exporter",
    "replay",
    "request_message",
    "send_splitting",
]

_log = logging.getLogger(__name__)

# -- the environment variables (OpenTelemetry specification names) ----------------------------
# Each generic OTEL_EXPORTER_OTLP_X has a trace-specific OTEL_EXPORTER_OTLP_TRACES_X that wins
# over it (see `_traces_variable`); OTEL_SDK_DISABLED has none.

OTEL_EXPORTER_OTLP_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""Base URL of the OTLP receiver. For HTTP, ``/v1/traces`` is appended to its path; the
trace-specific ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used as it is. For gRPC, ``host:port``
(TLS unless ``OTEL_EXPORTER_OTLP_INSECURE=true``) or ``http(s)://host:port``."""

OTEL_EXPORTER_OTLP_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_PROTOCOL"
"""``grpc``, ``http/protobuf`` (the default) or ``http/json``."""

OTEL_EXPORTER_OTLP_HEADERS: Final = "OTEL_EXPORTER_OTLP_HEADERS"
"""Extra request headers (gRPC metadata): ``key=value`` pairs separated by commas, values
percent-encoded (the W3C baggage format), e.g. ``api-key=s%3Dcret,x-tenant=ml``."""

OTEL_EXPORTER_OTLP_TIMEOUT: Final = "OTEL_EXPORTER_OTLP_TIMEOUT"
"""How long one export attempt may take, in milliseconds; default 10000."""

OTEL_EXPORTER_OTLP_COMPRESSION: Final = "OTEL_EXPORTER_OTLP_COMPRESSION"
"""``gzip`` or ``none`` (the default)."""

OTEL_EXPORTER_OTLP_INSECURE: Final = "OTEL_EXPORTER_OTLP_INSECURE"
"""gRPC only, for an endpoint without a scheme: ``true`` sends without TLS."""

OTEL_EXPORTER_OTLP_CERTIFICATE: Final = "OTEL_EXPORTER_OTLP_CERTIFICATE"
"""PEM file of the certificate authorities that TLS trusts, instead of the system's."""

OTEL_EXPORTER_OTLP_CLIENT_KEY: Final = "OTEL_EXPORTER_OTLP_CLIENT_KEY"
"""PEM file of the client's private key, for mutual TLS (with the client certificate)."""

OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: Final = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"
"""PEM file of the client's certificate chain, for mutual TLS (with the client key)."""

OTEL_SDK_DISABLED: Final = "OTEL_SDK_DISABLED"
"""``true`` (any case) turns export off: `ExportConfig.disabled` is set."""

GRPC: Final = "grpc"
HTTP_PROTOBUF: Final = "http/protobuf"
HTTP_JSON: Final = "http/json"
_PROTOCOLS = (GRPC, HTTP_PROTOBUF, HTTP_JSON)
_COMPRESSIONS = ("gzip", "none")

DEFAULT_TIMEOUT_S: Final = 10.0
"""The specification's default export timeout, 10 s."""

_USER_AGENT = f"maeltrace/{__version__}"
# RFC 9110 token characters, the only ones a header name may hold.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Visible ASCII, space and tab: what a header value may hold and gRPC metadata accepts.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
# A gRPC target without a scheme: host:port, an IPv4 address or [IPv6]:port, or a name that
# gRPC resolves itself (dns:, unix:, ipv4:, ipv6:, unix-abstract:, vsock:).
_GRPC_TARGET = re.compile(
    r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}|(?:dns|unix|unix-abstract|ipv4|ipv6|vsock):\S+"
)
# Span batches are mostly random ids: level 1 compresses 20,000 spans (1.7 MB) in 16 ms to within
# 2 % of level 6 (53 ms) and 9 (215 ms), so the export thread spends little CPU on it.
_GZIP_LEVEL = 1
# An OTLP response is a few bytes (partial success) or an error Status; more is not read.
_MAX_RESPONSE_BYTES = 64 * 1024


class ExportConfigError(MaeltraceError, ValueError):
    """The export configuration is wrong: an endpoint, protocol, header string, timeout,
    compression or file that cannot be used.

    Raised when the configuration is read or an exporter is built, never during an export; the
    message names the environment variable (or argument) that holds the bad value.
    """


class ExportFailed(MaeltraceError):
    """An export did not reach the receiver, after the exporter's own retries.

    Args:
        message: what went wrong, for people.
        retryable: whether trying again later may succeed (the receiver was down, overloaded or
            too slow), as opposed to a refusal that a retry would get again (a bad request, an
            authentication failure, a too-large batch).
        attempts: how many attempts the exporter made.
        too_large: the receiver refused the request for its size (HTTP 413, gRPC
            RESOURCE_EXHAUSTED): the same spans in smaller requests may pass.

    Attributes:
        retryable: as given.
        attempts: as given.
        too_large: as given.
    """

    def __init__(
        self, message: str, *, retryable: bool, attempts: int = 1, too_large: bool = False
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.attempts = attempts
        self.too_large = too_large


def count_spans(data: TracesData | ExportTraceServiceRequest) -> int:
    """The number of spans in a ``TracesData`` or an export request."""
    return sum(len(ss.spans) for rs in data.resource_spans for ss in rs.scope_spans)


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ExportConfig:
    """Where and how spans are sent; validated when built.

    Args:
        protocol: ``grpc``, ``http/protobuf`` or ``http/json``.
        endpoint: for HTTP, the full URL that requests are posted to (``.../v1/traces``); for
            gRPC, the target, ``host:port`` (or a name that gRPC resolves, such as
            ``unix:/path``), without a scheme.
        secure: whether to use TLS. For gRPC as given (default True, the specification's
            default); for HTTP it is set from the URL's scheme, whatever is given.
        headers: extra request headers (gRPC metadata), as (name, value) pairs. Names are kept
            in lower case, as gRPC requires.
        timeout_s: how long one attempt may take, in seconds.
        compression: ``gzip`` or ``none``.
        certificate: PEM file of the certificate authorities to trust, instead of the system's.
        client_key: PEM file of the client's private key, for mutual TLS.
        client_certificate: PEM file of the client's certificate chain, for mutual TLS.
        disabled: export is turned off (``OTEL_SDK_DISABLED=true``); `make_exporter` refuses such
            a configuration.

    Raises:
        ExportConfigError: a value is unusable; the message says which and why.
    """

    protocol: str
    endpoint: str
    secure: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = DEFAULT_TIMEOUT_S
    compression: str = "none"
    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None
    disabled: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in _PROTOCOLS:
            raise ExportConfigError(f"protocol {self.protocol!r} is not one of {_PROTOCOLS}")
        if self.protocol == GRPC:
            _check_grpc_target(self.endpoint, "endpoint")
        else:
            _check_http_url(self.endpoint, "endpoint")
            # The scheme decides for HTTP; keep the flag true to it.
            secure = urllib.parse.urlsplit(self.endpoint).scheme.lower() == "https"
            object.__setattr__(self, "secure", secure)
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ExportConfigError(f"timeout_s={self.timeout_s!r} is not a positive number")
        if self.compression not in _COMPRESSIONS:
            raise ExportConfigError(f"compression {self.compression!r} is not one of gzip, none")
        headers = tuple((name.lower(), value) for name, value in self.headers)
        for name, value in headers:
            _check_header(name, value, "headers")
        object.__setattr__(self, "headers", headers)
        for label, path in (
            ("certificate", self.certificate),
            ("client_key", self.client_key),
            ("client_certificate", self.client_certificate),
        ):
            if path is not None and not os.path.isfile(path):
                raise ExportConfigError(f"{label}={path!r} is not a file")
        if (self.client_key is None) != (self.client_certificate is None):
            raise ExportConfigError("client_key and client_certificate go together; give both")

    def __repr__(self) -> str:
        # Header values are often credentials: show only their names.
        names = ", ".join(name for name, _ in self.headers)
        return (
            f"ExportConfig(protocol={self.protocol!r}, endpoint={self.endpoint!r}, "
            f"secure={self.secure}, headers=[{names}], timeout_s={self.timeout_s}, "
            f"compression={self.compression!r}, certificate={self.certificate!r}, "
            f"client_key={self.client_key!r}, client_certificate={self.client_certificate!r}, "
            f"disabled={self.disabled})"
        )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        endpoint: str | None = None,
        protocol: str | None = None,
    ) -> ExportConfig | None:
        """Reads the configuration from the ``OTEL_EXPORTER_OTLP_*`` environment variables.

        Each setting comes from the trace-specific variable (``OTEL_EXPORTER_OTLP_TRACES_X``)
        when that is set and not empty, else from the generic one (``OTEL_EXPORTER_OTLP_X``).
        Unlike OpenTelemetry's SDKs there is no default endpoint: with none configured, spans
        are not sent anywhere, and None is returned.

        Args:
            environ: the variables; default ``os.environ``.
            endpoint: an endpoint that wins over the variables (a command line's
                ``--endpoint``). For HTTP, a URL whose path ends in ``/v1/traces`` is used as it
                is, and any other gets ``/v1/traces`` added like the generic variable (the rule
                of earlier OTLP specifications), so both ``http://host:4318`` and
                ``http://host:4318/v1/traces`` work. For gRPC, as the variables take it.
            protocol: a protocol that wins over the variables.

        Returns:
            The configuration, or None when no endpoint is configured. A configuration with
            ``OTEL_SDK_DISABLED=true`` comes back with ``disabled`` set (all the other variables
            are still checked).

        Raises:
            ExportConfigError: a variable holds an unusable value; the message names it.
        """
        env = os.environ if environ is None else environ

        protocol_source, raw_protocol = (
            ("protocol argument", protocol)
            if protocol is not None
            else _traces_variable(env, OTEL_EXPORTER_OTLP_PROTOCOL)
        )
        chosen_protocol = _choice(
            raw_protocol, protocol_source, _PROTOCOLS, HTTP_PROTOBUF, "OTLP protocol"
        )

        endpoint_source, raw_endpoint = (
            ("endpoint argument", endpoint)
            if endpoint is not None
            else _traces_variable(env, OTEL_EXPORTER_OTLP_ENDPOINT)
        )
        if raw_endpoint is None:
            return None
        raw_endpoint = raw_endpoint.strip()
        # The generic variable is a base that the signal's path is added to; the trace-specific
        # one is a full URL; the argument is either, told apart by its path.
        if endpoint is not None:
            url_path = urllib.parse.urlsplit(raw_endpoint).path
            signal_specific = url_path.rstrip("/").endswith("/v1/traces")
        else:
            signal_specific = endpoint_source != OTEL_EXPORTER_OTLP_ENDPOINT

        insecure_source, raw_insecure = _traces_variable(env, OTEL_EXPORTER_OTLP_INSECURE)
        insecure = _spec_bool(insecure_source, raw_insecure)
        if chosen_protocol == GRPC:
            target, secure = _grpc_endpoint(raw_endpoint, endpoint_source, insecure)
        else:
            target = _http_endpoint(raw_endpoint, endpoint_source, signal_specific)
            secure = target.lower().startswith("https:")

        headers_source, raw_headers = _traces_variable(env, OTEL_EXPORTER_OTLP_HEADERS)
        headers = _parse_headers(raw_headers, headers_source) if raw_headers else ()

        timeout_source, raw_timeout = _traces_variable(env, OTEL_EXPORTER_OTLP_TIMEOUT)
        timeout_s = DEFAULT_TIMEOUT_S
        if raw_timeout is not None:
            timeout_s = _parse_timeout_ms(raw_timeout, timeout_source) / 1000.0

        compression_source, raw_compression = _traces_variable(env, OTEL_EXPORTER_OTLP_COMPRESSION)
        compression = _choice(
            raw_compression, compression_source, _COMPRESSIONS, "none", "compression"
        )

        files: dict[str, str | None] = {}
        for variable in (
            OTEL_EXPORTER_OTLP_CERTIFICATE,
            OTEL_EXPORTER_OTLP_CLIENT_KEY,
            OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE,
        ):
            source, path = _traces_variable(env, variable)
            if path is not None and not os.path.isfile(path):
                raise ExportConfigError(f"{source}={path!r} is not a file")
            files[variable] = path
        if (files[OTEL_EXPORTER_OTLP_CLIENT_KEY] is None) != (
            files[OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE] is None
        ):
            raise ExportConfigError(
                f"{OTEL_EXPORTER_OTLP_CLIENT_KEY} and {OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE} "
                "go together (mutual TLS); set both or neither"
            )

        disabled = _spec_bool(OTEL_SDK_DISABLED, env.get(OTEL_SDK_DISABLED))
        return cls(
            protocol=chosen_protocol,
            endpoint=target,
            secure=secure,
            headers=headers,
            timeout_s=timeout_s,
            compression=compression,
            certificate=files[OTEL_EXPORTER_OTLP_CERTIFICATE],
            client_key=files[OTEL_EXPORTER_OTLP_CLIENT_KEY],
            client_certificate=files[OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE],
            disabled=disabled,
        )


def _choice(raw: str | None, source: str, allowed: Sequence[str], default: str, what: str) -> str:
    """One of ``allowed`` (case and spaces ignored), or ``default`` when ``raw`` is None."""
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in allowed:
        choices = ", ".join(allowed[:-1]) + " or " + allowed[-1]
        raise ExportConfigError(f"{source}={raw!r} is not a supported {what}; use {choices}")
    return value


def _traces_variable(env: Mapping[str, str], generic: str) -> tuple[str, str | None]:
    """The trace-specific variable when set and not empty, else the generic one: (name, value).

    The specification treats an empty variable as unset.
    """
    specific = generic.replace("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", 1)
    for name in (specific, generic):
        value = env.get(name)
        if value is not None and value.strip():
            return name, value
    return generic, None


def _spec_bool(name: str, raw: str | None) -> bool:
    # The specification: only "true" (any case) is true; anything but "false", empty or unset
    # is also false, with a warning, never an error.
    value = (raw or "").strip().lower()
    if value not in ("true", "false", ""):
        _log.warning("%s=%r is not true or false; taken as false", name, raw)
    return value == "true"


def _check_http_url(url: str, source: str) -> urllib.parse.SplitResult:
    problem = f"{source}={url!r} is not an http(s) URL (like http://collector:4318)"
    if not url or any(c.isspace() for c in url):
        raise ExportConfigError(problem)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises for a port that is not a number in range
    except ValueError:
        raise ExportConfigError(problem) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ExportConfigError(problem)
    if port == 0:
        raise ExportConfigError(problem)
    return parts


def _http_endpoint(raw: str, source: str, signal_specific: bool) -> str:
    parts = _check_http_url(raw, source)
    if signal_specific:
        return raw
    # The generic endpoint is a base: the signal's path goes after whatever path it has.
    path = parts.path.rstrip("/") + "/v1/traces"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _check_grpc_target(target: str, source: str) -> None:
    if not _GRPC_TARGET.fullmatch(target):
        raise ExportConfigError(
            f"{source}={target!r} is not a gRPC target (host:port) or http(s) URL"
        )


def _grpc_endpoint(raw: str, source: str, insecure: bool) -> tuple[str, bool]:
    """The gRPC target and whether it uses TLS: a URL's scheme decides, else ``insecure``."""
    if "://" not in raw:
        _check_grpc_target(raw, source)
        return raw, not insecure
    parts = _check_http_url(raw, source)
    if parts.path not in ("", "/"):
        # gRPC's method path is fixed; a path here means an HTTP endpoint was meant.
        raise ExportConfigError(
            f"{source}={raw!r} has a path, which gRPC cannot use; give scheme://host:port "
            "(or did you mean OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf?)"
        )
    secure = parts.scheme.lower() == "https"
    netloc = parts.netloc.rsplit("@", 1)[-1]  # user info has no meaning for gRPC
    if parts.port is None:
        netloc = f"{netloc}:{443 if secure else 80}"
    _check_grpc_target(netloc, source)
    return netloc, secure


def _parse_headers(raw: str, source: str) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    for item in raw.split(","):
        if not item.strip():
            continue  # "a=1,,b=2" and a trailing comma are harmless
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ExportConfigError(
                f"{source} must be comma-separated key=value pairs; {item.strip()!r} is not one"
            )
        headers.append((name.lower(), urllib.parse.unquote(value.strip())))
        _check_header(*headers[-1], source)
    return tuple(headers)


def _check_header(name: str, value: str, source: str) -> None:
    if not _HEADER_NAME.fullmatch(name):
        raise ExportConfigError(f"{source}: {name!r} is not a valid header name")
    if not _HEADER_VALUE.fullmatch(value):
        # Also catches a %0D%0A that would split the request, once decoded.
        raise ExportConfigError(
            f"{source}: the value of header {name!r} holds characters other than printable "
            "ASCII (percent-decoded)"
        )


def _parse_timeout_ms(raw: str, source: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        # 0 would mean no limit to some SDKs; here every export must end.
        raise ExportConfigError(
            f"{source}={raw!r} is not a timeout in milliseconds (a positive number)"
        )
    return value


# -- exporters ---------------------------------------------------------------------------------


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


# -- replay ------------------------------------------------------------------------------------


class ReplayResult(NamedTuple):
    """What `replay` did.

    Attributes:
        sent_lines: lines delivered.
        sent_spans: spans in them.
        failed_lines: lines not delivered, all copied to ``failed_path``; malformed ones
            included. Zero means the whole file was delivered.
        malformed_lines: of the failed lines, those that are not OTLP JSON (a line cut short by
            a crash, say); they were not sent, and replaying them again will not help.
        failed_path: the file the failed lines went to, or None when there were none.
    """

    sent_lines: int
    sent_spans: int
    failed_lines: int
    malformed_lines: int = 0
    failed_path: Path | None = None

    @property
    def complete(self) -> bool:
        """Whether every line was delivered, so that the file may be deleted."""
        return self.failed_lines == 0


def replay(
    path: str | os.PathLike[str],
    exporter_or_config: SpanExporter | ExportConfig,
    *,
    batch_lines: int = 1,
    failed_path: str | os.PathLike[str] | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> ReplayResult:
    """Sends the spans of an outbox, or of an OTLP JSON lines file (the embedded default's
    traces file, or a spill file of an older version), to an exporter.

    An outbox (``*.otlp.outbox``, see `maeltrace.otel.outbox`) is sent request by request, in
    order, and each request the receiver accepts is acknowledged in the outbox itself, so a
    second replay sends only what is still pending; ``failed_path`` and ``batch_lines`` do not
    apply. The outbox must not be in use by a running timer (`OutboxBusy` otherwise).

    A JSON lines file is sent ``batch_lines`` lines per request. The file itself is never
    changed or deleted: lines that are not delivered are copied to ``failed_path``, which is
    overwritten when the first such line comes (it holds a subset of the file's lines, so
    nothing is lost by that) and not created when none does. A line cut short (a crash or a
    full disk while it was written) or that is not OTLP JSON is skipped with one warning and
    copied there too. A line larger than ``max_request_bytes`` (written by an older version) is
    sent in parts.

    For both, once the receiver fails in a way a retry may cure (down, overloaded), the rest is
    kept without trying it, instead of each waiting out its own timeouts; a refusal of one
    request (a 400) does not stop the others, and a request refused for its size (HTTP 413,
    gRPC RESOURCE_EXHAUSTED) is halved and sent again.

    Typical use of a JSON lines file::

        result = replay(traces, config)
        if not result.complete:
            result.failed_path.replace(traces)  # keep only what is still unsent

    Args:
        path: the outbox or OTLP JSON lines file.
        exporter_or_config: where to send; an `ExportConfig` gets an exporter from
            `make_exporter`, shut down at the end (an exporter passed in is left open).
        batch_lines: how many lines to send per request, at least 1.
        failed_path: where the lines that were not delivered go; default ``<path>.failed``.
        max_request_bytes: the most bytes of one request.

    Returns:
        The counts, and where the failed lines went.

    Raises:
        OSError: the file cannot be read, or ``failed_path`` cannot be written (the file still
            holds every line then).
        OutboxBusy: the outbox is in use.
        ExportConfigError: the configuration is disabled, or ``batch_lines`` is below 1.
    """
    if batch_lines < 1:
        raise ExportConfigError(f"batch_lines={batch_lines} must be at least 1")
    source = Path(path)
    outbox = Outbox(source) if is_outbox(source) else None
    failed_to = Path(failed_path) if failed_path is not None else Path(f"{source}.failed")
    if isinstance(exporter_or_config, ExportConfig):
        try:
            exporter: SpanExporter = make_exporter(exporter_or_config)
        except BaseException:
            if outbox is not None:
                outbox.close()
            raise
        owned = True
    else:
        exporter, owned = exporter_or_config, False
    replayer = _Replayer(source, exporter, failed_to)
    try:
        if outbox is not None:
            replayer.send_outbox(outbox)
        else:
            replayer.send_lines(batch_lines, max_request_bytes)
    finally:
        replayer.close()
        if outbox is not None:
            outbox.close()
        if owned:
            exporter.shutdown()
    return ReplayResult(
        sent_lines=replayer.sent_lines,
        sent_spans=replayer.sent_spans,
        failed_lines=replayer.failed,
        malformed_lines=replayer.malformed,
        failed_path=failed_to if replayer.failed and outbox is None else None,
    )


class _Replayer:
    """The state of one `replay`: counts, the failed-lines file, whether the receiver is down."""

    def __init__(self, source: Path, exporter: SpanExporter, failed_to: Path) -> None:
        self.source = source
        self.exporter = exporter
        self.failed_to = failed_to
        self.sent_lines = self.sent_spans = self.failed = self.malformed = 0
        self.receiver_down = False
        self._failed_file: BinaryIO | None = None

    def send_outbox(self, outbox: Outbox) -> None:
        for entry in outbox.pending():
            if self.receiver_down:
                self.failed += 1
                continue
            if self._deliver(entry.body, 1):
                outbox.acknowledge(entry)
                self.sent_lines += 1
                self.sent_spans += entry.spans
            else:
                self.failed += 1

    def send_lines(self, batch_lines: int, max_request_bytes: int) -> None:
        batch: list[bytes] = []
        request = ExportTraceServiceRequest()

        def skipped(number: int, raw: bytes, why: str) -> None:
            self.keep([raw])
            self.malformed += 1

        def parse(raw: bytes) -> tuple[bytes, TracesData]:
            return raw, traces_from_json_line(raw.decode("utf-8"))

        for _, (raw, data) in read_lines(self.source, parse=parse, on_skip=skipped):
            if self.receiver_down:
                self.keep([raw])
                continue
            if data.ByteSize() > max_request_bytes:
                if batch:
                    self.send(batch, request)
                    batch, request = [], ExportTraceServiceRequest()
                parts = split_traces(data, max_request_bytes)
                if all(self._deliver(part.SerializeToString(), 0) for part in parts):
                    self.sent_lines += 1
                    self.sent_spans += count_spans(data)
                else:
                    self.keep([raw])
                continue
            batch.append(raw)
            request.resource_spans.extend(data.resource_spans)
            if len(batch) >= batch_lines:
                self.send(batch, request)
                batch, request = [], ExportTraceServiceRequest()
        if batch:
            self.send(batch, request)

    def _deliver(self, body: bytes, lines: int) -> bool:
        """Sends one request (halving it while it is too large); False when it failed."""
        try:
            send_splitting(self.exporter, body)
        except ExportFailed as err:
            _log.warning("replay of %s: not delivered: %s", self.source, err)
            # A receiver that is down or overloaded would fail the rest too, each after its
            # own timeouts and retries.
            self.receiver_down = err.retryable
            return False
        return True

    def send(self, lines: list[bytes], request: ExportTraceServiceRequest) -> None:
        if self.receiver_down or not self._deliver(request.SerializeToString(), len(lines)):
            self.keep(lines)
            return
        self.sent_lines += len(lines)
        self.sent_spans += count_spans(request)

    def keep(self, lines: list[bytes]) -> None:
        if self._failed_file is None:
            self._failed_file = open(self.failed_to, "wb")  # noqa: SIM115  (closed by close())
        for line in lines:
            self._failed_file.write(line if line.endswith(b"\n") else line + b"\n")
        self.failed += len(lines)

    def close(self) -> None:
        if self._failed_file is not None:
            self._failed_file.close()
