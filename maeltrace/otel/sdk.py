"""The SDK span path: regions become spans through the user's OpenTelemetry TracerProvider.

The fast path (`maeltrace.otel.spans`) writes OTLP bytes itself. When the user configured
OpenTelemetry's SDK (a global SDK TracerProvider, or ``Timer(tracer_provider=tp)``), the same
spans go through that provider instead, so its resource, sampler, processors and exporters
apply: `SdkSpanExporter` takes the fast path's requests, on the pipeline's sending thread, and
replays each span with the SDK's API (``start_span(start_time=...)``, ``end(end_time=...)``),
parents before children, with the same names, timestamps, attributes, events, status and
``[gpu]`` children. Nothing of this runs on the training thread.

Ids: the provider's id generator owns them. The fast path derives an epoch's trace id from
(run id, epoch) so that every rank puts the epoch into one trace; through the SDK each rank's
epoch is its own trace (the ranks stay findable by ``maeltrace.trace`` on the epoch's root and
``maeltrace.run_id``, which the SDK path adds to each root). Parent links follow the SDK's span
ids; a parent that is the user's own span (a region opened inside it) keeps that span's ids.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from maeltrace._version import __version__
from maeltrace.errors import ExportWarning, warn_safely
from maeltrace.otel import semconv
from maeltrace.otel._sdk_logs import sdk_logs_counted
from maeltrace.otel.exporters.base import Request, request_message

if TYPE_CHECKING:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage
    from opentelemetry.trace import Span, SpanContext, TracerProvider

__all__ = ["MAX_KNOWN_SPANS", "SdkSpanExporter", "check_tracer_provider", "user_tracer_provider"]

MAX_KNOWN_SPANS = 100_000
"""The most spans whose SDK context is kept for later children and links (a few epochs' worth
at the default budget of 5000 spans a trace); the oldest are forgotten first."""

_SDK_EXPORT_LOGGER = "opentelemetry.sdk.trace.export"
"""The logger of the SDK's SimpleSpanProcessor, which logs each span its exporter failed on."""


def check_tracer_provider(provider: object) -> TracerProvider | None:
    """``provider`` as an OpenTelemetry TracerProvider, or None.

    Raises:
        TypeError: it has no callable ``get_tracer``, or is a class.
    """
    if provider is None:
        return None
    if isinstance(provider, type) or not callable(getattr(provider, "get_tracer", None)):
        raise TypeError(
            "tracer_provider must be an OpenTelemetry TracerProvider (with get_tracer), not "
            f"{getattr(provider, '__name__', type(provider).__name__)}"
        )
    return provider  # type: ignore[return-value]  # checked structurally just above


def user_tracer_provider(given: TracerProvider | None = None) -> TracerProvider | None:
    """The provider the SDK path uses: ``given``, else the global one where the user set one
    (not OpenTelemetry's default proxy or no-op), else None.

    Reads the global provider only where the user imported OpenTelemetry's API: maeltrace
    imports neither the API nor the SDK for this, and never sets a global provider.
    """
    if given is not None:
        return given
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


def _empty_context() -> Any:
    from opentelemetry.context import Context

    return Context()


def _value(kv: KeyValue) -> Any:
    which = kv.value.WhichOneof("value")
    return getattr(kv.value, which) if which else ""


def _attributes(values: Sequence[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv) for kv in values}


class SdkSpanExporter:
    """A `maeltrace.otel.exporters.SpanExporter` that hands spans to an OpenTelemetry
    TracerProvider (the SDK path), with a tracer named ``maeltrace``, its version and
    `maeltrace.otel.semconv.SCHEMA_URL`.

    It never raises: a span the user's pipeline fails on (a processor raising, or the SDK
    logging its exporter's failure on this thread) is counted in `errors` and warned about once
    (`maeltrace.errors.ExportWarning`); the spans after it are still given to the provider.

    Args:
        provider: the user's TracerProvider; maeltrace never shuts it down.
        root_attributes: added to each span without a parent (the run id, the rank).
        run_span: the fast path's id of the process's run span and its start (wall clock,
            ns). Regions outside epochs are its children, but it ends, and reaches the
            exporter, last: it is started when its first child comes, and ended when it comes.
    """

    def __init__(
        self,
        provider: TracerProvider,
        root_attributes: dict[str, Any] | None = None,
        *,
        run_span: tuple[bytes, int] | None = None,
    ) -> None:
        from opentelemetry.trace import SpanKind

        self.provider = provider
        self._tracer = provider.get_tracer(
            semconv.SCOPE_NAME, __version__, schema_url=semconv.SCHEMA_URL
        )
        self._kind = SpanKind.INTERNAL
        self._root_attributes = dict(root_attributes or {})
        # The fast path's span id of each span replayed, to the SDK span's context.
        self._known: collections.OrderedDict[bytes, SpanContext] = collections.OrderedDict()
        self._warned = False
        self._run_span = run_span
        self._open_run: Span | None = None
        self.errors = 0
        """Spans the user's pipeline failed on."""
        self.spans_started = 0
        """Spans given to the provider."""

    def export(self, request: Request) -> None:
        """Replays every span of ``request`` through the provider, parents first."""
        try:
            message = request_message(request)
        except Exception as exc:  # a corrupt outbox record: never into training
            self._fail(exc)
            return
        with self._sdk_logs_counted():
            for resource_spans in message.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self._replay(scope_spans.spans)

    def shutdown(self) -> None:
        """Forgets the spans' contexts; the provider stays the user's to shut down."""
        self._known.clear()

    def _replay(self, spans: Sequence[SpanMessage]) -> None:
        here = {s.span_id for s in spans}
        todo = list(spans)
        while todo:
            # The fast path writes parents first; a child found before its parent waits a turn.
            later = []
            for span in todo:
                parent = span.parent_span_id
                if parent in here and parent not in self._known and parent != span.span_id:
                    later.append(span)
                else:
                    self._start(span)
            if len(later) == len(todo):  # their parents failed: start them anyway
                for span in later:
                    self._start(span)
                return
            todo = later

    def _context(self, trace_id: bytes, span_id: bytes) -> SpanContext:
        from opentelemetry.trace import SpanContext, TraceFlags

        known = self._known.get(span_id)
        if known is not None:
            return known
        if self._run_span is not None and span_id == self._run_span[0]:
            if self._open_run is None:
                self._open_run = self._tracer.start_span(
                    semconv.RUN_SPAN_NAME,
                    context=_empty_context(),
                    kind=self._kind,
                    attributes=self._root_attributes,
                    start_time=self._run_span[1],
                )
            return self._open_run.get_span_context()
        # The user's own span (a region opened inside it), known only by its ids.
        return SpanContext(
            int.from_bytes(trace_id, "big"),
            int.from_bytes(span_id, "big"),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )

    def _start(self, message: SpanMessage) -> None:
        from opentelemetry.context import Context
        from opentelemetry.trace import (
            Link,
            NonRecordingSpan,
            Status,
            StatusCode,
            set_span_in_context,
        )

        try:
            if self._open_run is not None and message.span_id == self._run_span_id():
                self._end_run(message)
                return
            context = Context()  # never the sending thread's current span
            attributes = _attributes(message.attributes)
            if message.parent_span_id:
                parent = self._context(message.trace_id, message.parent_span_id)
                context = set_span_in_context(NonRecordingSpan(parent), context)
            else:
                attributes.update(self._root_attributes)
            links = [
                Link(self._context(link.trace_id, link.span_id), _attributes(link.attributes))
                for link in message.links
            ]
            span = self._tracer.start_span(
                message.name,
                context=context,
                kind=self._kind,
                attributes=attributes,
                links=links,
                start_time=message.start_time_unix_nano,
            )
            for event in message.events:
                span.add_event(
                    event.name, _attributes(event.attributes), timestamp=event.time_unix_nano
                )
            if message.status.code == message.status.STATUS_CODE_ERROR:
                span.set_status(Status(StatusCode.ERROR, message.status.message))
            self.spans_started += 1
            self._known[message.span_id] = span.get_span_context()
            if len(self._known) > MAX_KNOWN_SPANS:
                self._known.popitem(last=False)
            span.end(end_time=message.end_time_unix_nano)
        except Exception as exc:  # the user's processor raised: never into training
            self._fail(exc)

    def _run_span_id(self) -> bytes | None:
        return self._run_span[0] if self._run_span is not None else None

    def _end_run(self, message: SpanMessage) -> None:
        """Ends the run span started early for its children, as the fast path built it."""
        span, self._open_run = self._open_run, None
        assert span is not None
        span.set_attributes(_attributes(message.attributes))
        for link in message.links:
            span.add_link(self._context(link.trace_id, link.span_id), _attributes(link.attributes))
        self.spans_started += 1
        span.end(end_time=message.end_time_unix_nano)

    def _fail(self, exc: BaseException | None, what: str | None = None) -> None:
        self.errors += 1
        if self._warned:
            return
        self._warned = True
        cause = what or f"{type(exc).__name__}: {exc}"
        warn_safely(
            f"maeltrace: your OpenTelemetry TracerProvider failed on a span ({cause}); later "
            "failures are only counted, and regions are still recorded",
            ExportWarning,
        )

    def _sdk_logs_counted(self) -> AbstractContextManager[None]:
        """While spans are replayed on this thread, the SDK's log of an exporter failing (one
        record per span under its SimpleSpanProcessor) becomes one warning and a count."""
        return sdk_logs_counted((_SDK_EXPORT_LOGGER,), self._fail)
