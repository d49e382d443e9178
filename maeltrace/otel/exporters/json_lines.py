"""OTLP JSON lines: `JsonLinesExporter`, the embedded default output and the spill file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from maeltrace.errors import ExportFailed
from maeltrace.otel._otlp_json import append_json_line
from maeltrace.otel.exporters.base import Request, request_message

__all__ = ["JsonLinesExporter"]


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
