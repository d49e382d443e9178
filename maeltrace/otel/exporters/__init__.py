"""Exporters: OTLP over HTTP (protobuf or JSON) or gRPC, and an OTLP JSON lines file."""

from __future__ import annotations

from maeltrace.errors import ExportFailed
from maeltrace.otel.config import GRPC, ExportConfig
from maeltrace.otel.exporters.base import (
    Request,
    SpanExporter,
    count_spans,
    request_message,
    send_splitting,
)
from maeltrace.otel.exporters.json_lines import JsonLinesExporter
from maeltrace.otel.exporters.otlp_grpc import GrpcExporter
from maeltrace.otel.exporters.otlp_http import HttpExporter

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


def make_exporter(config: ExportConfig) -> SpanExporter:
    """The exporter for a configuration's protocol, with the default retries.

    Raises:
        ExportConfigError: the configuration is disabled (check ``config.disabled`` first), or
            its TLS files cannot be loaded.
    """
    if config.protocol == GRPC:
        return GrpcExporter(config)
    return HttpExporter(config)
