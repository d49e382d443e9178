"""OTLP over HTTP, protobuf or JSON: `HttpExporter`."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from maeltrace.errors import ExportFailed
from maeltrace.otel._otlp_json import traces_to_json_line
from maeltrace.otel.config import HTTP_JSON, HTTP_PROTOBUF, ExportConfig, ExportConfigError
from maeltrace.otel.exporters.base import (
    USER_AGENT,
    AttemptError,
    Request,
    RetryingExporter,
    request_message,
)

if TYPE_CHECKING:
    # urllib.request is imported when the exporter is made, not with this module.
    import urllib.request

__all__ = ["HttpExporter"]

# The logger export.py used before it was split, so that logging configurations naming it keep
# working for every part of export.
_log = logging.getLogger("maeltrace.otel.export")

# Span batches are mostly random ids: level 1 compresses 20,000 spans (1.7 MB) in 16 ms to within
# 2 % of level 6 (53 ms) and 9 (215 ms), so the export thread spends little CPU on it.
_GZIP_LEVEL = 1
# An OTLP response is a few bytes (partial success) or an error Status; more is not read.
_MAX_RESPONSE_BYTES = 64 * 1024


class HttpExporter(RetryingExporter):
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
        headers = {"User-Agent": USER_AGENT}
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
            raise AttemptError(
                f"HTTP {err.code} {err.reason}{detail}",
                retryable=retryable,
                retry_after_s=retry_after,
                too_large=err.code == 413,
            ) from err
        except urllib.error.URLError as err:
            # Raised for connect-time trouble; the reason is the underlying OSError.
            reason = err.reason
            retryable = not isinstance(reason, ssl.SSLCertVerificationError)
            raise AttemptError(f"{reason}", retryable=retryable) from err
        except ssl.SSLCertVerificationError as err:
            raise AttemptError(f"{err}", retryable=False) from err
        except (OSError, http.client.HTTPException) as err:
            # Reset or closed connections, timeouts while sending or reading.
            raise AttemptError(f"{type(err).__name__}: {err}", retryable=True) from err
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
