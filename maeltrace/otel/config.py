"""The OTLP export configuration: the ``OTEL_EXPORTER_OTLP_*`` variables and `ExportConfig`."""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from base64 import b64encode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from maeltrace._redact import redact_url
from maeltrace.environment import (
    OTEL_EXPORTER_OTLP_CERTIFICATE,
    OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE,
    OTEL_EXPORTER_OTLP_CLIENT_KEY,
    OTEL_EXPORTER_OTLP_COMPRESSION,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_EXPORTER_OTLP_INSECURE,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_SDK_DISABLED,
    env_flag,
    env_str,
)
from maeltrace.errors import ExportConfigError

# The OTEL_* names live in maeltrace.environment; re-exported here for old imports.
__all__ = [
    "DEFAULT_TIMEOUT_S",
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
]

GRPC: Final = "grpc"
HTTP_PROTOBUF: Final = "http/protobuf"
HTTP_JSON: Final = "http/json"
_PROTOCOLS = (GRPC, HTTP_PROTOBUF, HTTP_JSON)
_COMPRESSIONS = ("gzip", "none")

DEFAULT_TIMEOUT_S: Final = 10.0
"""The specification's default export timeout, 10 s."""

# RFC 9110 token characters, the only ones a header name may hold.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Visible ASCII, space and tab: what a header value may hold and gRPC metadata accepts.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
# A gRPC target without a scheme: host:port, an IPv4 address or [IPv6]:port, or a name that
# gRPC resolves itself (dns:, unix:, ipv4:, ipv6:, unix-abstract:, vsock:).
_GRPC_TARGET = re.compile(
    r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}|(?:dns|unix|unix-abstract|ipv4|ipv6|vsock):\S+"
)


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
        endpoint, headers = _credentials_to_header(self.endpoint, self.headers)
        object.__setattr__(self, "endpoint", endpoint)
        object.__setattr__(self, "headers", headers)
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
        protocol_source, raw_protocol = (
            ("protocol argument", protocol)
            if protocol is not None
            else _traces_variable(environ, OTEL_EXPORTER_OTLP_PROTOCOL)
        )
        chosen_protocol = _choice(
            raw_protocol, protocol_source, _PROTOCOLS, HTTP_PROTOBUF, "OTLP protocol"
        )

        endpoint_source, raw_endpoint = (
            ("endpoint argument", endpoint)
            if endpoint is not None
            else _traces_variable(environ, OTEL_EXPORTER_OTLP_ENDPOINT)
        )
        if raw_endpoint is None:
            return None
        headers_source, raw_headers = _traces_variable(environ, OTEL_EXPORTER_OTLP_HEADERS)
        headers = _parse_headers(raw_headers, headers_source) if raw_headers else ()
        # Credentials in the URL become a header before anything else reads the URL, so they
        # are sent (for gRPC too) and never printed or stored with the endpoint.
        raw_endpoint, headers = _credentials_to_header(raw_endpoint.strip(), headers)
        # The generic variable is a base that the signal's path is added to; the trace-specific
        # one is a full URL; the argument is either, told apart by its path.
        if endpoint is not None:
            url_path = urllib.parse.urlsplit(raw_endpoint).path
            signal_specific = url_path.rstrip("/").endswith("/v1/traces")
        else:
            signal_specific = endpoint_source != OTEL_EXPORTER_OTLP_ENDPOINT

        insecure_source, _ = _traces_variable(environ, OTEL_EXPORTER_OTLP_INSECURE)
        insecure = env_flag(insecure_source, environ=environ, opentelemetry=True)
        if chosen_protocol == GRPC:
            target, secure = _grpc_endpoint(raw_endpoint, endpoint_source, insecure)
        else:
            target = _http_endpoint(raw_endpoint, endpoint_source, signal_specific)
            secure = target.lower().startswith("https:")

        timeout_source, raw_timeout = _traces_variable(environ, OTEL_EXPORTER_OTLP_TIMEOUT)
        timeout_s = DEFAULT_TIMEOUT_S
        if raw_timeout is not None:
            timeout_s = _parse_timeout_ms(raw_timeout, timeout_source) / 1000.0

        compression_source, raw_compression = _traces_variable(
            environ, OTEL_EXPORTER_OTLP_COMPRESSION
        )
        compression = _choice(
            raw_compression, compression_source, _COMPRESSIONS, "none", "compression"
        )

        files: dict[str, str | None] = {}
        for variable in (
            OTEL_EXPORTER_OTLP_CERTIFICATE,
            OTEL_EXPORTER_OTLP_CLIENT_KEY,
            OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE,
        ):
            source, path = _traces_variable(environ, variable)
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

        disabled = env_flag(OTEL_SDK_DISABLED, environ=environ, opentelemetry=True)
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


def _traces_variable(env: Mapping[str, str] | None, generic: str) -> tuple[str, str | None]:
    """The trace-specific variable when set and not empty, else the generic one: (name, value).

    The specification treats an empty variable as unset.
    """
    specific = generic.replace("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", 1)
    for name in (specific, generic):
        value = env_str(name, environ=env)
        if value is not None and value.strip():
            return name, value
    return generic, None


def _credentials_to_header(
    endpoint: str, headers: Sequence[tuple[str, str]]
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``endpoint`` without its userinfo (``user:password@``), and ``headers`` with it as
    HTTP Basic credentials (``authorization``), which is what a URL's userinfo means to an
    OTLP/HTTP receiver behind basic authentication: neither urllib nor gRPC sends it, so it
    was silently dropped, and kept in the URL it was printed and stored everywhere the
    endpoint is.

    Raises:
        ExportConfigError: an ``authorization`` header is given as well (two credentials).
    """
    scheme, sep, rest = endpoint.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if not sep or "@" not in netloc:
        return endpoint, tuple(headers)
    userinfo, _, host = netloc.rpartition("@")
    if any(name.lower() == "authorization" for name, _ in headers):
        raise ExportConfigError(
            f"the endpoint {redact_url(endpoint)} carries credentials and an authorization "
            "header is set too; give one of them"
        )
    user, _, password = userinfo.partition(":")
    token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    basic = "Basic " + b64encode(token.encode("utf-8")).decode("ascii")
    cleaned = f"{scheme}://{host}{rest[len(netloc) :]}"
    return cleaned, (*headers, ("authorization", basic))


def _check_http_url(url: str, source: str) -> urllib.parse.SplitResult:
    problem = f"{source}={redact_url(url)!r} is not an http(s) URL (like http://collector:4318)"
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
            f"{source}={redact_url(target)!r} is not a gRPC target (host:port) or http(s) URL"
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
            f"{source}={redact_url(raw)!r} has a path, which gRPC cannot use; give "
            "scheme://host:port (or did you mean OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf?)"
        )
    secure = parts.scheme.lower() == "https"
    netloc = parts.netloc.rsplit("@", 1)[-1]  # the userinfo became a header (see from_env)
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
