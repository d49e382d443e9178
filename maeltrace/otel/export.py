"""The old home of OTLP export, kept so that ``maeltrace.otel.export.*`` imports keep working.

Configuration lives in `maeltrace.otel.config`, the exporters in `maeltrace.otel.exporters` and
`replay` in `maeltrace.otel._replay`.
"""

from __future__ import annotations

from maeltrace.otel._replay import ReplayResult, replay
from maeltrace.otel.config import (
    DEFAULT_TIMEOUT_S,
    GRPC,
    HTTP_JSON,
    HTTP_PROTOBUF,
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
    ExportConfig,
    ExportConfigError,
)
from maeltrace.otel.exporters import (
    ExportFailed,
    GrpcExporter,
    HttpExporter,
    JsonLinesExporter,
    Request,
    SpanExporter,
    count_spans,
    make_exporter,
    request_message,
    send_splitting,
)

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
