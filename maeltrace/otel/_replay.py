"""Sending an outbox or an OTLP JSON lines file later: `replay`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO, NamedTuple

# protobuf ships no type information (types-protobuf trails protobuf 7).
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from maeltrace._files import read_lines
from maeltrace.otel._batching import DEFAULT_MAX_REQUEST_BYTES, split_traces
from maeltrace.otel._otlp_json import MAX_LINE_BYTES, traces_from_json_line
from maeltrace.otel._outbox import Outbox, is_outbox
from maeltrace.otel.config import ExportConfig, ExportConfigError
from maeltrace.otel.exporters import (
    ExportFailed,
    SpanExporter,
    count_spans,
    make_exporter,
    send_splitting,
)

__all__ = ["ReplayResult", "replay"]

# The logger export.py used before it was split, so that logging configurations naming it keep
# working for every part of export.
_log = logging.getLogger("maeltrace.otel.export")


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

    An outbox (``*.otlp.outbox``, see `maeltrace.otel._outbox`) is sent request by request, in
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

        for _, (raw, data) in read_lines(
            self.source, parse=parse, on_skip=skipped, max_line_bytes=MAX_LINE_BYTES
        ):
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
        except DecodeError as err:
            # A receiver that refused the size makes the request be split, which parses it: a
            # record whose CRC holds but whose body is no request (foreign, or forged) ends here.
            _log.warning("replay of %s: not an OTLP request, not delivered: %s", self.source, err)
            return False
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
