"""``maeltrace collect``: an OTLP/HTTP receiver that summarises runs and logs them to MLflow.

Endpoints (a Starlette app, served by uvicorn):

- ``POST /v1/traces``: an OTLP/HTTP trace export, ``application/x-protobuf`` (an
  ``ExportTraceServiceRequest``) or ``application/json`` (OTLP/JSON, hex ids), optionally
  ``Content-Encoding: gzip``. Answers 200 with an empty ``ExportTraceServiceResponse`` in the
  request's content type; 400 for a body that does not decode (a short message, as a
  ``google.rpc.Status`` where that module is installed, else text; JSON for JSON requests); 401
  without the right bearer token when one is configured; 413 for a body over the cap (declared or
  counted, and after gunzip); 415 for another content type or encoding.
- ``GET /health``: 200 while the service runs.
- ``GET /runs``: brief summaries of every run; ``GET /runs/{run_id}``: one run's full summary
  (per process and across ranks, see `maeltrace.collect._summaries`) with its sinks' states; 404
  for an unknown run.

When a token is configured every route needs it, ``/health`` included (health probes send the
``Authorization`` header). A gzip body is refused past `MAX_GZIP_MEMBERS` members (400) and
past `MAX_GZIP_RATIO` times its size or the body cap (413).

Each process's run span updates its run's summary; a background worker then logs the summary to
MLflow (and W&B), off the request path, with the retries and pending file of
`maeltrace.collect._mlflow_out`. The service binds 127.0.0.1 unless told otherwise; the command
refuses another address without a token unless ``--allow-no-token`` is given.
"""

# Over 600 lines: the service's engine, HTTP, serving and command line read best together;
# next split: the HTTP section (request checks, gzip bounds) into a module of its own.

from __future__ import annotations

import argparse
import contextlib
import hmac
import logging
import socket
import sys
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from maeltrace._output import output_root
from maeltrace.collect._mlflow_out import MlflowSink, WandbSink
from maeltrace.collect._summaries import RunSummaries
from maeltrace.environment import MAELTRACE_COLLECT_TOKEN, MLFLOW_TRACKING_URI, WANDB_DIR, env_str
from maeltrace.otel._otlp_json import traces_from_json_line
from maeltrace.sinks.base import PendingFile, Publisher, pending_path

if TYPE_CHECKING:
    import uvicorn
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "MAELTRACE_COLLECT_TOKEN",
    "MAX_GZIP_MEMBERS",
    "MAX_GZIP_RATIO",
    "CollectConfig",
    "CollectServer",
    "Collector",
    "add_arguments",
    "main",
    "make_app",
    "run",
    "serve",
]

_log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 4320
"""Next to the OTLP ports 4317 and 4318, which a Collector may hold already."""

DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""Request bodies above this (before or after gunzip) are refused with 413."""

MAX_GZIP_MEMBERS: Final = 64
"""Gzip members accepted in one body: exporters write one; each costs a new inflater."""

MAX_GZIP_RATIO: Final = 1000
"""How many times its size a gzip body may inflate to: OTLP spans compress 5 to 20 times; a
bomb, millions of times."""

_GZIP_PIECE: Final = 64 * 1024

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"

# google.rpc.Status codes for the error bodies (OTLP/HTTP answers errors with a Status).
_RPC_CODES: Final = {400: 3, 401: 16, 404: 5, 413: 8, 415: 3}

try:  # googleapis-common-protos, installed with MLflow's OTLP dependencies
    from google.rpc.status_pb2 import Status as _Status  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - then errors are plain text
    _Status = None


def _default_token() -> str | None:
    return env_str(MAELTRACE_COLLECT_TOKEN)


def _default_tracking_uri() -> str | None:
    return env_str(MLFLOW_TRACKING_URI)


def _default_state_dir() -> Path:
    return output_root() / "collect"


@dataclass(frozen=True, repr=False)
class CollectConfig:
    """How the summary service runs; validated when built.

    Args:
        host: the address to bind; loopback by default. Anything else exposes the service:
            set a token.
        port: the TCP port (0: any free one).
        token: the bearer token clients must send (``Authorization: Bearer <token>``); default
            ``MAELTRACE_COLLECT_TOKEN``; None accepts every client.
        max_body_bytes: the largest request body, compressed or not.
        mlflow_tracking_uri: where summaries are logged; default ``MLFLOW_TRACKING_URI``; None
            logs to no MLflow.
        mlflow_experiment: the MLflow experiment; default ``MLFLOW_EXPERIMENT_NAME``, else
            ``maeltrace``.
        wandb: also log to W&B (online or offline, as ``WANDB_MODE`` says).
        state_dir: where summaries wait that a sink could not take (``pending-mlflow.jsonl``,
            ``pending-wandb.jsonl``: `maeltrace.sinks.base.pending_path`), and W&B's files
            unless ``WANDB_DIR`` is set; default
            ``$MAELTRACE_OUTPUT_DIR/collect`` (``./maeltrace-out/collect``).
        attempts: tries per summary and sink before it goes to the pending file.
        backoff_s: wait before the second try, doubled before each later one.
        request_timeout_s: how long one MLflow HTTP request may take.
        retry_interval_s: how often pending summaries are sent again while the sink is down.
        max_runs: runs kept in memory (the least recently updated are forgotten first).

    Raises:
        ValueError: a value is out of range.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = field(default_factory=_default_token)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    mlflow_tracking_uri: str | None = field(default_factory=_default_tracking_uri)
    mlflow_experiment: str | None = None
    wandb: bool = False
    state_dir: Path = field(default_factory=_default_state_dir)
    attempts: int = 3
    backoff_s: float = 1.0
    request_timeout_s: float = 30.0
    retry_interval_s: float = 30.0
    max_runs: int = 1000

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must lie in [0, 65535], not {self.port}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be at least 1, not {self.max_body_bytes}")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty (leave it unset to accept every client)")
        if self.attempts < 1 or self.max_runs < 1:
            raise ValueError("attempts and max_runs must be at least 1")
        for name in ("backoff_s", "request_timeout_s", "retry_interval_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative")
        object.__setattr__(self, "state_dir", Path(self.state_dir))

    def __repr__(self) -> str:
        # The token is a credential: never show it.
        token = "<set>" if self.token else None
        return (
            f"CollectConfig(host={self.host!r}, port={self.port}, token={token}, "
            f"max_body_bytes={self.max_body_bytes}, "
            f"mlflow_tracking_uri={self.mlflow_tracking_uri!r}, wandb={self.wandb}, "
            f"state_dir={str(self.state_dir)!r})"
        )


# -- the engine: summaries and the worker that logs them ---------------------------------------


def _publishers(config: CollectConfig) -> list[Publisher]:
    publishers = []
    if config.mlflow_tracking_uri:
        sink = MlflowSink(
            config.mlflow_tracking_uri,
            experiment=config.mlflow_experiment,
            request_timeout_s=config.request_timeout_s,
        )
        publishers.append(
            Publisher(
                sink,
                _pending_file(config.state_dir, MlflowSink.name),
                attempts=config.attempts,
                backoff_s=config.backoff_s,
            )
        )
    if config.wandb:
        directory = None if env_str(WANDB_DIR) else str(config.state_dir)
        publishers.append(
            Publisher(
                WandbSink(directory=directory),
                _pending_file(config.state_dir, WandbSink.name),
                attempts=config.attempts,
                backoff_s=config.backoff_s,
            )
        )
    return publishers


def _pending_file(state_dir: Path, sink: str) -> PendingFile:
    """The sink's pending file; one left under its older name
    (``<sink>-pending.jsonl``) takes the new name, so that its summaries are still sent."""
    path = pending_path(state_dir, sink)
    old = state_dir / f"{sink}-pending.jsonl"
    if old.exists() and not path.exists():
        try:
            old.rename(path)
        except OSError as err:
            _log.warning("%s could not be renamed to %s: %s", old, path, err)
    return PendingFile(path)


class Collector:
    """Summaries of the runs received, and a worker thread that logs changed ones.

    Args:
        config: the service's configuration.
        publishers: where summaries go; default from ``config`` (MLflow, W&B).

    Attributes:
        summaries: every run's summary.
        publishers: as given.
    """

    def __init__(self, config: CollectConfig, publishers: Sequence[Publisher] | None = None):
        self.config = config
        self.summaries = RunSummaries(max_runs=config.max_runs)
        self.publishers = list(_publishers(config) if publishers is None else publishers)
        self._dirty: OrderedDict[str, None] = OrderedDict()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.requests = 0
        """Export requests taken in."""

    # -- input ---------------------------------------------------------------------------------

    def ingest(self, message: ExportTraceServiceRequest | TracesData) -> list[str]:
        """Takes in one export request; returns the runs whose statistics changed, which the
        worker then logs."""
        changed = self.summaries.add(message)
        with self._cond:
            self.requests += 1
            for run_id in changed:
                self._dirty[run_id] = None
            if changed:
                self._cond.notify_all()
        return changed

    def sink_states(self, run_id: str) -> dict[str, dict[str, str | None]]:
        """Per sink, the run's state (``logged``, ``pending``, ``failed: ...``, or ``queued``
        before the first try) and its id there."""
        with self._cond:
            queued = run_id in self._dirty or self._busy
        out: dict[str, dict[str, str | None]] = {}
        for publisher in self.publishers:
            state = publisher.states.get(run_id)
            out[publisher.sink.name] = {
                "state": "queued" if queued or state is None else state,
                "id": publisher.ids.get(run_id),
            }
        return out

    # -- the worker ----------------------------------------------------------------------------

    def start(self) -> None:
        """Restores the pending summaries into memory (new processes of those runs add to them)
        and starts the worker, which first sends what is pending."""
        if self._thread is not None:
            return
        for publisher in self.publishers:
            if publisher.pending is None:
                continue
            for summary in publisher.pending_summaries().values():
                try:
                    self.summaries.restore(summary)
                except ValueError as err:
                    _log.warning("%s: unreadable summary: %s", publisher.pending.path, err)
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="maeltrace-collect", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Logs the runs still queued, then stops the worker (waiting at most ``timeout_s``)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Waits until no run is queued or being logged; returns whether that happened."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._dirty or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _has_pending(self) -> bool:
        return any(p.has_pending() for p in self.publishers)

    def _work(self) -> None:
        self._resend()
        while True:
            with self._cond:
                if not self._dirty and not self._stopping:
                    # Wake for new run spans, or on the retry timer while summaries wait.
                    timeout = self.config.retry_interval_s if self._has_pending() else None
                    self._cond.wait(timeout)
                if not self._dirty and self._stopping:
                    return
                run_ids = list(self._dirty)
                self._dirty.clear()
                self._busy = True
            try:
                if run_ids:
                    self._publish(run_ids)
                else:
                    self._resend()
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _publish(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            summary = self.summaries.get(run_id)
            if summary is None:
                continue
            for publisher in self.publishers:
                try:
                    publisher.publish(summary)
                except Exception:  # a bug in a sink must not stop the worker
                    _log.exception("logging the summary of %s to %s", run_id, publisher.sink.name)

    def _resend(self) -> None:
        for publisher in self.publishers:
            try:
                publisher.resend()
            except Exception:
                _log.exception("sending pending summaries to %s", publisher.sink.name)


# -- HTTP --------------------------------------------------------------------------------------


class _Refusal(Exception):
    """A request the service answers with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _error(status: int, message: str, media_type: str) -> Response:
    """An OTLP/HTTP error answer: a ``google.rpc.Status`` in the request's encoding."""
    code = _RPC_CODES.get(status, 2)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if media_type == JSON:
        return JSONResponse({"code": code, "message": message}, status, headers=headers)
    if media_type == PROTOBUF and _Status is not None:
        body = _Status(code=code, message=message).SerializeToString()
        return Response(body, status, headers=headers, media_type=PROTOBUF)
    return PlainTextResponse(message, status, headers=headers)


async def _read_body(request: Request, cap: int) -> bytes:
    """The body, refusing one over ``cap`` bytes (declared or counted) with 413.

    A body over the cap by no more than the cap again is read to its end and dropped before the
    answer: closing a connection with unread data resets it, and the client would see a
    connection error instead of the 413 that tells it not to retry.
    """
    declared = request.headers.get("content-length")
    drain_limit = 2 * cap
    if declared is not None:
        if not declared.isdigit():
            raise _Refusal(400, "Content-Length is not a number")
        if int(declared) > drain_limit:
            raise _Refusal(413, f"the body is over the limit of {cap} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > drain_limit:
            break
        if size <= cap:
            chunks.append(chunk)
    if size > cap:
        raise _Refusal(413, f"the body is over the limit of {cap} bytes")
    return b"".join(chunks)


def _gunzip(body: bytes, cap: int) -> bytes:
    """Inflates a gzip body, refusing more than `MAX_GZIP_MEMBERS` members (400), and output
    over ``cap`` or over `MAX_GZIP_RATIO` times the body (413).

    Linear in the body: the input goes in pieces of `_GZIP_PIECE` bytes, so what a member
    leaves unread (``unused_data``, a copy) is at most one piece, not the rest of the body.
    """
    limit = min(cap, MAX_GZIP_RATIO * len(body))
    out = bytearray()
    view = memoryview(body)
    position = 0
    leftover = b""  # what the previous member left unread
    members = 0
    while True:
        members += 1
        if members > MAX_GZIP_MEMBERS:
            raise _Refusal(400, f"the gzip body has more than {MAX_GZIP_MEMBERS} members")
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        while not inflater.eof:
            if leftover:
                piece: bytes | memoryview = leftover
                leftover = b""
            elif position < len(body):
                piece = view[position : position + _GZIP_PIECE]
                position += len(piece)
            else:
                raise _Refusal(400, "the gzip body is truncated")
            try:
                # At most one byte over the limit: enough to know it is over, never a bomb's
                # worth. Input left unconsumed then does not matter: the body is refused.
                out += inflater.decompress(piece, limit + 1 - len(out))
            except zlib.error as err:
                raise _Refusal(400, f"the gzip body does not inflate: {err}") from None
            if len(out) > cap:
                raise _Refusal(413, f"the body inflates to over the limit of {cap} bytes")
            if len(out) > limit:
                raise _Refusal(
                    413, f"the gzip body inflates to over {MAX_GZIP_RATIO} times its size"
                )
        leftover = inflater.unused_data
        if not leftover and position >= len(body):
            return bytes(out)


def _decode(body: bytes, media_type: str, gzipped: bool, cap: int) -> ExportTraceServiceRequest:
    """The export request in a body; 400 for anything that does not decode."""
    if gzipped:
        body = _gunzip(body, cap)
    if media_type == PROTOBUF:
        try:
            request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(body)
            return request
        except DecodeError as err:
            raise _Refusal(400, f"not an OTLP ExportTraceServiceRequest: {err}") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refusal(400, "the JSON body is not UTF-8") from None
    try:
        data = traces_from_json_line(text)
    except ValueError as err:
        raise _Refusal(400, str(err)[:300]) from None
    except RecursionError:
        raise _Refusal(400, "the JSON body is nested too deeply") from None
    # TracesData and ExportTraceServiceRequest share their wire form (resource_spans = 1).
    converted: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(
        data.SerializeToString()
    )
    return converted


def make_app(config: CollectConfig, collector: Collector | None = None) -> Starlette:
    """The service as an ASGI app; its lifespan starts and stops the collector's worker.

    Args:
        config: the configuration (token, body cap, sinks).
        collector: the engine; default a new one from ``config``. Also at
            ``app.state.collector``.
    """
    engine = collector if collector is not None else Collector(config)
    token = config.token.encode("utf-8") if config.token else None
    cap = config.max_body_bytes

    def authorised(request: Request) -> bool:
        if token is None:
            return True
        scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
        # Header values arrive as latin-1 text: back to their bytes, compared in constant time.
        given = value.strip().encode("latin-1", "replace")
        return scheme.lower() == "bearer" and hmac.compare_digest(given, token)

    async def traces(request: Request) -> Response:
        media_type = _media_type(request)
        if not authorised(request):
            return _error(401, "a valid bearer token is required", media_type)
        if media_type not in (PROTOBUF, JSON):
            return _error(415, f"use {PROTOBUF} or {JSON}, not {media_type!r}", media_type)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            return _error(415, f"Content-Encoding {encoding!r}: only gzip is accepted", media_type)
        try:
            body = await _read_body(request, cap)
            message = await run_in_threadpool(_decode, body, media_type, encoding == "gzip", cap)
        except _Refusal as refusal:
            return _error(refusal.status, refusal.message, media_type)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        await run_in_threadpool(engine.ingest, message)
        if media_type == JSON:
            return Response(b"{}", media_type=JSON)
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type=PROTOBUF)

    async def health(request: Request) -> Response:
        # Behind the token too: an open route tells a scanner what listens here. Probes send
        # the header (Kubernetes: httpGet.httpHeaders).
        if not authorised(request):
            return _error(401, "a valid bearer token is required", JSON)
        return JSONResponse({"status": "ok"})

    async def runs(request: Request) -> Response:
        if not authorised(request):
            return _error(401, "a valid bearer token is required", JSON)
        return JSONResponse(engine.summaries.runs())

    async def one_run(request: Request) -> Response:
        if not authorised(request):
            return _error(401, "a valid bearer token is required", JSON)
        run_id = request.path_params["run_id"]
        summary = engine.summaries.get(run_id)
        if summary is None:
            return _error(404, f"no run {run_id!r} has reported", JSON)
        summary["sinks"] = engine.sink_states(run_id)
        return JSONResponse(summary)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(engine.stop)

    app = Starlette(
        routes=[
            Route("/v1/traces", traces, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/runs", runs, methods=["GET"]),
            Route("/runs/{run_id:path}", one_run, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.collector = engine
    return app


# -- serving -----------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a port in use fails with a plain OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _uvicorn_server(
    app: Starlette, config: CollectConfig, *, configure_logging: bool
) -> uvicorn.Server:
    import uvicorn

    options: dict[str, Any] = {}
    if not configure_logging:
        options["log_config"] = None  # embedded: leave the host program's logging alone
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            server_header=False,
            timeout_graceful_shutdown=10,
            **options,
        )
    )


def serve(config: CollectConfig) -> None:
    """Runs the service in this thread until interrupted (Ctrl-C, SIGTERM).

    Raises:
        OSError: the address cannot be bound (for instance the port is in use).
    """
    sock = _bind(config.host, config.port)
    host = f"[{config.host}]" if ":" in config.host else config.host
    _log.info("listening on http://%s:%d/v1/traces", host, sock.getsockname()[1])
    server: uvicorn.Server = _uvicorn_server(make_app(config), config, configure_logging=True)
    server.run(sockets=[sock])


class CollectServer:
    """The service in a background thread of this process (tests, notebooks).

    Args:
        config: the configuration; ``port=0`` takes any free port.

    Example::

        with CollectServer(CollectConfig(port=0, mlflow_tracking_uri=None)) as server:
            timer = maeltrace.Timer(export=True, endpoint=server.url)
            ...
    """

    def __init__(self, config: CollectConfig) -> None:
        self.config = config
        self.collector = Collector(config)
        self.app = make_app(config, self.collector)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = config.port

    @property
    def url(self) -> str:
        """The service's base URL (an OTLP/HTTP endpoint; ``/v1/traces`` is added by clients)."""
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> Self:
        """Binds, starts serving and waits until the service answers.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: the server did not start within ``timeout_s``.
        """
        sock = _bind(self.config.host, self.config.port)
        self.port = sock.getsockname()[1]
        server: uvicorn.Server = _uvicorn_server(self.app, self.config, configure_logging=False)
        self._server = server
        self._thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name="maeltrace-collect-http",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the summary service did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stops serving (the worker logs what is queued first) and waits for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- the command line --------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``maeltrace collect`` to a parser (the CLI's subcommand)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    parser.add_argument(
        "--token",
        help=f"bearer token clients must send; default ${MAELTRACE_COLLECT_TOKEN} (safer: "
        "the command line is visible to other users)",
    )
    parser.add_argument(
        "--allow-no-token",
        action="store_true",
        help="listen beyond loopback without a token (anyone who reaches the port can send "
        "spans and read summaries); refused otherwise",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body, before and after gunzip (default %(default)s)",
    )
    parser.add_argument(
        "--mlflow-uri",
        help=f"MLflow tracking URI; default ${MLFLOW_TRACKING_URI}; 'none' logs to no MLflow",
    )
    parser.add_argument(
        "--experiment", help="MLflow experiment; default $MLFLOW_EXPERIMENT_NAME, else maeltrace"
    )
    parser.add_argument("--wandb", action="store_true", help="also log to W&B (per $WANDB_MODE)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="folder of the pending files; default $MAELTRACE_OUTPUT_DIR/collect",
    )
    parser.add_argument(
        "--retry-interval",
        type=float,
        default=30.0,
        help="seconds between tries to send pending summaries (default %(default)s)",
    )


def _config_from(args: argparse.Namespace) -> CollectConfig:
    uri = args.mlflow_uri if args.mlflow_uri is not None else _default_tracking_uri()
    if uri is not None and uri.strip().lower() in ("", "none", "off"):
        uri = None
    return CollectConfig(
        host=args.host,
        port=args.port,
        token=args.token or _default_token(),
        max_body_bytes=args.max_body_bytes,
        mlflow_tracking_uri=uri,
        mlflow_experiment=args.experiment,
        wandb=args.wandb,
        state_dir=args.state_dir or _default_state_dir(),
        retry_interval_s=args.retry_interval,
    )


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def run(args: argparse.Namespace) -> int:
    """Runs ``maeltrace collect`` with parsed options; returns the exit status."""
    try:
        config = _config_from(args)
    except ValueError as err:
        print(f"maeltrace collect: {err}", file=sys.stderr)
        return 2
    open_to_all = not _is_loopback(config.host) and config.token is None
    if open_to_all and not getattr(args, "allow_no_token", False):
        # Refused before anything binds: an open service on a network takes anyone's spans.
        print(
            f"maeltrace collect: error: refusing to listen on {config.host} without a token: "
            f"set {MAELTRACE_COLLECT_TOKEN} (or --token), or pass --allow-no-token",
            file=sys.stderr,
        )
        return 2
    logger = logging.getLogger("maeltrace.collect")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("maeltrace collect: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    if open_to_all:
        print(
            f"maeltrace collect: warning: listening on {config.host} without a token; "
            "anyone who reaches it can send spans and read summaries (--allow-no-token)",
            file=sys.stderr,
        )
    logger.info(
        "MLflow: %s; W&B: %s; pending summaries in %s",
        config.mlflow_tracking_uri or "off",
        "on" if config.wandb else "off",
        config.state_dir,
    )
    try:
        serve(config)
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the Ctrl-C
        return 130
    except OSError as err:
        where = f"{config.host}:{config.port}"
        print(f"maeltrace collect: cannot listen on {where}: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``maeltrace collect [options]``: parses ``argv`` (default ``sys.argv[1:]``) and serves
    until interrupted; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="maeltrace collect",
        description="Receives maeltrace's OTLP/HTTP spans, summarises each run per rank and "
        "across ranks, and logs the summaries to MLflow (and W&B).",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
