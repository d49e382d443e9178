"""Fault injection: a real training-loop process against endpoints that misbehave, and kills.

Each case runs ``tests/fault_child.py`` in its own process with export to an OTLP receiver of our
own that hangs, resets, refuses, throttles or answers slowly (`tests.services.faulty_otlp`), and
checks what the never-harm promise says: training finishes normally where it was not killed,
every finished epoch's spans are delivered or in the outbox (replayed into a real Jaeger and
counted by distinct span id), and no request exceeds the size limit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maeltrace.cli import main as cli_main
from maeltrace.otel._outbox import OUTBOX_SUFFIX, read_outbox
from tests.fault_child import SCRIPT, expected_counts
from tests.helpers import outbox_span_names
from tests.services.faulty_otlp import ClosedPort, FaultyOtlpServer, SilentListener
from tests.services.jaeger import JaegerService

STEPS = 20
EPOCHS = 4
PER_EPOCH = expected_counts(STEPS)["spans_per_epoch"]
ALL_SPANS = EPOCHS * PER_EPOCH + 1  # and the run span at close
LIMIT = 16 * 1024  # a small request limit, so that each epoch needs several requests


def _env(tmp_path: Path, otlp: dict[str, str], run_id: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(otlp)
    env.update(
        MAELTRACE_EXPORT="1",
        MAELTRACE_OUTPUT_DIR=str(tmp_path / "out"),
        MAELTRACE_RUN_ID=run_id,
        MAELTRACE_MAX_REQUEST_BYTES=str(LIMIT),
        OTEL_SERVICE_NAME=run_id,
        OTEL_EXPORTER_OTLP_TIMEOUT="1000",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(SCRIPT), "--epochs", str(EPOCHS), "--steps", str(STEPS), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def _outboxes(tmp_path: Path, run_id: str) -> list[Path]:
    return sorted((tmp_path / "out" / run_id).glob(f"*{OUTBOX_SUFFIX}"))


def _replay_into(jaeger: JaegerService, folder: Path) -> None:
    assert cli_main(["replay", str(folder), "--endpoint", jaeger.otlp_http_endpoint]) == 0


def _jaeger_span_ids(jaeger: JaegerService, service: str, count: int) -> set[str]:
    traces = jaeger.wait_for_spans(service, count, timeout=30)
    return {span["spanID"] for trace in traces for span in trace["spans"]}


class TestMisbehavingEndpoint:
    @pytest.mark.parametrize(
        ("protocol", "script"),
        [
            ("http/protobuf", ["hang"]),
            ("http/protobuf", ["reset", "reset"]),
            ("http/protobuf", ["status:500"] * 3),
            ("http/protobuf", ["status:429:1"]),
            ("http/protobuf", ["slow:1.5"]),
            ("http/json", ["status:503", "reset"]),
            ("grpc", ["code:UNAVAILABLE"] * 3),
            ("grpc", ["hang"]),
            ("grpc", ["code:RESOURCE_EXHAUSTED"]),
        ],
    )
    def test_training_finishes_and_every_span_arrives_once_the_endpoint_recovers(
        self, tmp_path: Path, protocol: str, script: list[str]
    ) -> None:
        run_id = f"fault-{protocol.replace('/', '-')}-{script[0].replace(':', '-')}"
        with FaultyOtlpServer(script=script, default="ok", max_body_bytes=LIMIT) as server:
            started = time.monotonic()
            child = _run(_env(tmp_path, server.env(protocol), run_id))
            assert child.returncode == 0, child.stderr
            assert "finished" in child.stdout
            # What the endpoint refused outright (a 500 is no transient error in OTLP) stays in
            # the outbox for replay; everything else was delivered.
            kept = [n for path in _outboxes(tmp_path, run_id) for n in outbox_span_names(path)]
            assert bool(kept) == (script[0] == "status:500")
            ids = server.wait_for_spans(ALL_SPANS - len(kept), timeout=20)
            assert len(ids) == ALL_SPANS - len(kept)
            assert max(r.body_bytes for r in server.requests() if r.accepted) <= LIMIT
        assert time.monotonic() - started < 45

    def test_a_receiver_with_a_smaller_limit_gets_the_batches_halved(self, tmp_path: Path) -> None:
        with FaultyOtlpServer(default="ok", max_body_bytes=LIMIT // 4) as server:
            child = _run(_env(tmp_path, server.env(), "fault-413"))
            assert child.returncode == 0, child.stderr
            assert len(server.wait_for_spans(ALL_SPANS, timeout=20)) == ALL_SPANS
            assert server.outcomes()["413"] > 0
        assert "not delivered" not in child.stderr

    def test_epochs_piled_up_behind_a_slow_endpoint_leave_in_bounded_requests(
        self, tmp_path: Path
    ) -> None:
        with FaultyOtlpServer(default="slow:0.3", max_body_bytes=LIMIT) as server:
            child = _run(_env(tmp_path, server.env(), "fault-pile"), "--step-ms", "0.2")
            assert child.returncode == 0, child.stderr
            assert len(server.wait_for_spans(ALL_SPANS, timeout=30)) == ALL_SPANS
            assert max(r.body_bytes for r in server.requests() if r.accepted) <= LIMIT


class TestDownForGood:
    @pytest.mark.parametrize("kind", [ClosedPort, SilentListener])
    def test_every_span_waits_in_the_outbox_and_replays_into_jaeger(
        self, tmp_path: Path, jaeger: JaegerService, kind: type[ClosedPort]
    ) -> None:
        run_id = f"down-{kind.__name__}-{os.getpid()}"
        with kind() as down:
            started = time.monotonic()
            child = _run(_env(tmp_path, down.env(), run_id))
            elapsed = time.monotonic() - started
        assert child.returncode == 0, child.stderr
        assert elapsed < 30  # the exit's close waits at most 10 s
        assert "send them with `maeltrace replay" in child.stderr
        (outbox,) = _outboxes(tmp_path, run_id)
        assert len(outbox_span_names(outbox)) == ALL_SPANS
        _replay_into(jaeger, outbox.parent)
        assert len(_jaeger_span_ids(jaeger, run_id, ALL_SPANS)) == ALL_SPANS
        assert outbox_span_names(outbox) == []


class TestKilled:
    @pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
    @pytest.mark.parametrize("endpoint", ["closed", "silent"])
    def test_every_finished_epoch_survives_a_kill_at_a_random_point(
        self, tmp_path: Path, jaeger: JaegerService, sig: signal.Signals, endpoint: str
    ) -> None:
        rng = random.Random(f"{sig}-{endpoint}")
        run_id = f"killed-{sig.name}-{endpoint}-{os.getpid()}"
        holder = ClosedPort() if endpoint == "closed" else SilentListener()
        with holder as down:
            env = _env(tmp_path, down.env(), run_id)
            argv = [sys.executable, str(SCRIPT), "--epochs", "50", "--steps", str(STEPS)]
            with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True) as child:
                assert child.stdout is not None
                finished = 0
                target = rng.randint(1, 3)
                while finished < target:
                    line = child.stdout.readline()
                    assert line, "the child ended early"
                    if line.startswith("epoch-done"):
                        finished = int(line.split()[1])
                time.sleep(rng.uniform(0.0, 0.05))  # somewhere inside the next epoch
                child.send_signal(sig)
                status = child.wait(timeout=30)
                for line in child.stdout.read().splitlines():  # epochs ended before the signal
                    if line.startswith("epoch-done"):
                        finished = int(line.split()[1])
        assert status == -sig
        entries = [e for path in _outboxes(tmp_path, run_id) for e in read_outbox(path)]
        stored = sum(e.spans for e in entries)
        assert stored >= finished * PER_EPOCH
        _replay_into(jaeger, tmp_path / "out" / run_id)
        assert len(_jaeger_span_ids(jaeger, run_id, stored)) == stored
