"""What every exporter shares: the request, the `SpanExporter` protocol, retries, splitting."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from maeltrace._version import __version__
from maeltrace.errors import ExportFailed
from maeltrace.otel._batching import split_request
from maeltrace.otel.config import OTEL_SDK_DISABLED, ExportConfig, ExportConfigError

__all__ = [
    "USER_AGENT",
    "AttemptError",
    "Request",
    "RetryingExporter",
    "SpanExporter",
    "count_spans",
    "request_message",
    "send_splitting",
]

USER_AGENT = f"maeltrace/{__version__}"
"""The user agent of the network exporters."""


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


class AttemptError(Exception):
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


class RetryingExporter:
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
            except AttemptError as err:
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
