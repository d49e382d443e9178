"""OTLP over gRPC: `GrpcExporter`."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from maeltrace.otel.config import GRPC, ExportConfig, ExportConfigError
from maeltrace.otel.exporters.base import USER_AGENT, AttemptError, Request, RetryingExporter

__all__ = ["GrpcExporter"]

# The logger export.py used before it was split, so that logging configurations naming it keep
# working for every part of export.
_log = logging.getLogger("maeltrace.otel.export")


# gRPC status codes (their numbers are fixed by gRPC) that the OTLP specification retries:
# CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS. The specification
# retries RESOURCE_EXHAUSTED (8) only with a RetryInfo, whose generated class (in
# googleapis-common-protos) is not a dependency: it is not retried. A too-large message gets
# that code too, which no retry fixes.
_GRPC_RETRYABLE = frozenset({1, 4, 10, 11, 14, 15})

_GRPC_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class GrpcExporter(RetryingExporter):
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
                raise AttemptError("exporter is shut down", retryable=False)
            if self._stub is None or self._pid != os.getpid():
                options = [
                    ("grpc.primary_user_agent", USER_AGENT),
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
            raise AttemptError(
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
