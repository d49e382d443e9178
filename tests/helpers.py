"""Small readers of timer records shared by the framework tests, and a runner of the apps
with the checks their tests share."""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from maeltrace import Records
from maeltrace.report import Summary

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "apps"
APP_FILES = frozenset(
    {"stats.json", "stats.md", "stats.csv", "trace.json", "traces.otlp.jsonl", "app.json"}
)
"""The files every run of an example app writes into its folder."""


def parent_keys(records: Records) -> dict[str, set[str | None]]:
    """For each key, the keys of its regions' parents (None: no parent)."""
    key_of_seq = {s: str(records.keys[k]) for s, k in zip(records.seq, records.key_id, strict=True)}
    out: dict[str, set[str | None]] = {}
    for key_id, parent in zip(records.key_id, records.parent_seq, strict=True):
        out.setdefault(str(records.keys[key_id]), set()).add(key_of_seq.get(parent))
    return out


def counts(records: Records) -> dict[str, int]:
    """Regions recorded per key, failed ones included."""
    out: dict[str, int] = {}
    for key_id in records.key_id:
        key = str(records.keys[key_id])
        out[key] = out.get(key, 0) + 1
    return out


def work_counts(records: Records) -> dict[str, list[tuple[int, int]]]:
    """Per key, the (items, tokens) of each region that has a count, in start order."""
    out: dict[str, list[tuple[int, int]]] = {}
    for seq, key_id in zip(records.seq, records.key_id, strict=True):
        if seq in records.counts:
            out.setdefault(str(records.keys[key_id]), []).append(records.counts[seq])
    return out


def exported_spans(path: Path) -> list[Any]:
    """Every span of an OTLP JSON lines file (the embedded ``traces.otlp.jsonl``)."""
    from maeltrace.otel._otlp_json import read_json_lines

    return [
        span
        for data in read_json_lines(path)
        for resource in data.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]


def orphan_names(spans: list[Any]) -> list[str]:
    """The names of the spans whose parent is not among ``spans``."""
    ids = {(span.trace_id, span.span_id) for span in spans}
    return [
        span.name
        for span in spans
        if span.parent_span_id and (span.trace_id, span.parent_span_id) not in ids
    ]


def otlp_json_span(
    trace_id: str, span_id: str, name: str, start_us: int, duration_us: int, parent_id: str = ""
) -> dict[str, Any]:
    """One span in OTLP/JSON (hex ids, 64-bit times as strings), keyed ``maeltrace.key``."""
    span: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "kind": 1,  # SPAN_KIND_INTERNAL
        "startTimeUnixNano": str(start_us * 1000),
        "endTimeUnixNano": str((start_us + duration_us) * 1000),
        "attributes": [{"key": "maeltrace.key", "value": {"stringValue": name}}],
    }
    if parent_id:
        span["parentSpanId"] = parent_id
    return span


@dataclass(frozen=True)
class SmokeTrace:
    """A two-span OTLP/JSON trace (``train_step`` with a ``forward`` child) for receivers.

    Attributes:
        trace_id, parent_id, child_id: fresh hex ids.
        parent_start_us, child_start_us: unix µs, 100 ms ago and 5 ms after that.
    """

    trace_id: str
    parent_id: str
    child_id: str
    parent_start_us: int
    child_start_us: int
    parent_duration_us = 40_000
    child_duration_us = 12_345

    @classmethod
    def new(cls) -> SmokeTrace:
        parent_start = time.time_ns() // 1000 - 100_000
        return cls(
            secrets.token_hex(16),
            secrets.token_hex(8),
            secrets.token_hex(8),
            parent_start,
            parent_start + 5_000,
        )

    def payload(self, service: str) -> dict[str, Any]:
        """The ``ExportTraceServiceRequest`` in OTLP/JSON, under ``service``."""
        spans = [
            otlp_json_span(
                self.trace_id,
                self.parent_id,
                "train_step",
                self.parent_start_us,
                self.parent_duration_us,
            ),
            otlp_json_span(
                self.trace_id,
                self.child_id,
                "forward",
                self.child_start_us,
                self.child_duration_us,
                self.parent_id,
            ),
        ]
        resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
        scope = {"scope": {"name": "maeltrace.tests"}, "spans": spans}
        return {"resourceSpans": [{"resource": resource, "scopeSpans": [scope]}]}


@dataclass(frozen=True)
class AppRun:
    """What one run of an example app left in its folder.

    Attributes:
        folder: the run's folder.
        info: its ``app.json``.
        summary: its ``stats.json``.
        events: the complete events (``"ph": "X"``) of its ``trace.json``.
        stdout: what it printed.
    """

    folder: Path
    info: dict[str, Any]
    summary: Summary
    events: list[dict[str, Any]]
    stdout: str

    def counts(self, clock: str = "cpu") -> dict[str, int]:
        """Samples per key in the statistics, of the CPU rows or of the device rows."""
        return {
            str(row.key): row.stats.count
            for row in self.summary.rows
            if row.device == (clock != "cpu") and not row.compiled
        }

    def parent_keys(self) -> dict[str, set[str | None]]:
        """For each key, the keys of its regions' parents, from the CPU events of the trace."""
        cpu = [e for e in self.events if e["cat"] == "cpu"]
        key_of_seq = {e["args"]["seq"]: e["args"]["key"] for e in cpu}
        out: dict[str, set[str | None]] = {}
        for event in cpu:
            parent = key_of_seq.get(event["args"].get("parent_seq"))
            out.setdefault(event["args"]["key"], set()).add(parent)
        return out

    def children_in_order(self, parent: str) -> list[list[str]]:
        """For each CPU region of key ``parent``, in start order, its children's keys in start
        order."""
        cpu = [e for e in self.events if e["cat"] == "cpu"]
        parents = sorted(
            (e for e in cpu if e["args"]["key"] == parent), key=lambda e: float(e["ts"])
        )
        children: dict[int, list[tuple[float, str]]] = {e["args"]["seq"]: [] for e in parents}
        for event in cpu:
            parent_seq = event["args"].get("parent_seq")
            if parent_seq in children:
                children[parent_seq].append((float(event["ts"]), event["args"]["key"]))
        return [[key for _, key in sorted(children[e["args"]["seq"]])] for e in parents]

    def total_s(self, key: str) -> float:
        """Total time of the CPU row of ``key``, in seconds."""
        (row,) = (r for r in self.summary.rows if str(r.key) == key and not r.device)
        return row.stats.total

    def files_written(self) -> set[str]:
        """Which of `APP_FILES` the run wrote, not empty."""
        return {
            name
            for name in APP_FILES
            if (self.folder / name).is_file() and (self.folder / name).stat().st_size > 0
        }


def app_process(
    script: str, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs ``apps/<script>`` with ``args`` in its own process from the repository root, and
    returns how it ended, whatever its exit status.

    Args:
        env: its environment; default this process's.
    """
    return subprocess.run(
        [sys.executable, str(APPS / script), *args],
        cwd=ROOT,
        env=dict(os.environ if env is None else env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def run_app(script: str, folder: Path, *args: str, timeout_s: float = 300) -> AppRun:
    """Runs ``apps/<script>`` in its own process, as ``maeltrace bench`` does, with the
    embedded default's export on, and reads back what it wrote into ``folder``."""
    env = dict(os.environ)
    env.pop("MAELTRACE_EXPORT", None)
    done = app_process(script, "--output-dir", str(folder), *args, env=env, timeout_s=timeout_s)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    trace = json.loads((folder / "trace.json").read_text())
    return AppRun(
        folder=folder,
        info=json.loads((folder / "app.json").read_text()),
        summary=Summary.load(folder / "stats.json"),
        events=[e for e in trace["traceEvents"] if e["ph"] == "X"],
        stdout=done.stdout,
    )


def shared_app_run(
    tmp_path_factory: pytest.TempPathFactory, script: str, *args: str, epochs: int, batches: int
) -> Iterator[AppRun]:
    """One run of an app at ``--size tiny`` with ``epochs`` and ``batches``, for a module-scoped
    fixture to yield from: its tests read it without running the app again.

    The environment is what the autouse fixtures give each test (no OTLP settings of the
    machine, an output root in a temporary folder), which a module-scoped fixture does not get.
    """
    folder = tmp_path_factory.mktemp(script.removesuffix(".py")) / "run"
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith("OTEL_")]:
            env.delenv(name)
        env.setenv("MAELTRACE_OUTPUT_DIR", str(folder.parent / "maeltrace-out"))
        size = ["--size", "tiny", "--epochs", str(epochs), "--batches", str(batches)]
        yield run_app(script, folder, *size, *args)


def app_run_fixture(
    name: str, script: str, *args: str, epochs: int, batches: int
) -> Callable[[pytest.TempPathFactory], Iterator[AppRun]]:
    """A module-scoped fixture called ``name`` giving the tests of a module one
    `shared_app_run` of ``apps/<script>`` with ``args``; assign it to ``name`` in the module."""

    def app_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppRun]:
        yield from shared_app_run(tmp_path_factory, script, *args, epochs=epochs, batches=batches)

    app_run.__doc__ = f"One tiny run of {script}, shared by the tests of the module."
    return pytest.fixture(scope="module", name=name)(app_run)


def assert_ran_on_the_cpu_and_wrote_its_files(
    run: AppRun, *, name: str, framework: str, seed_app: str, epochs: int, batches: int
) -> None:
    """Checks what every app's run on the CPU shares: its ``app.json`` names it and its
    configuration, no row is a GPU row, it wrote `APP_FILES`, it recorded exactly the keys it
    lists, and its results are finite numbers."""
    assert run.info["name"] == name
    assert run.info["seed_app"] == seed_app
    assert run.info["framework"] == framework
    assert run.info["framework_version"]
    assert run.info["config"]["device"] == "cpu"
    assert run.info["config"]["epochs"] == epochs
    assert run.info["config"]["batches"] == batches
    assert run.info["expected"] == {"epoch": epochs, "batch": epochs * batches}
    assert run.counts("gpu") == {}
    assert not any(row.device for row in run.summary.rows)
    assert run.files_written() == APP_FILES
    # Every key the app lists is recorded, and every key recorded is listed.
    assert set(run.info["regions"]) == set(run.counts())
    result = run.info["result"]
    assert result
    assert all(math.isfinite(value) for value in result.values())


def step_counts(epochs: int, batches: int, *step_keys: str) -> dict[str, int]:
    """Samples per key of a loop timing ``epoch``, and in it ``io`` and ``batch`` per batch,
    with each of ``step_keys`` once in each batch."""
    steps = epochs * batches
    return {"epoch": epochs, "io": steps, "batch": steps} | dict.fromkeys(step_keys, steps)


def step_parents(*step_keys: str) -> dict[str, set[str | None]]:
    """Parents per key of the loop that `step_counts` counts."""
    return {"epoch": {None}, "io": {"epoch"}, "batch": {"epoch"}} | {
        key: {"batch"} for key in step_keys
    }


def assert_times_a_step_per_batch(run: AppRun, *step_keys: str, epochs: int, batches: int) -> None:
    """Checks the regions of a custom loop: ``epoch`` regions, in each an ``io`` region then a
    ``batch`` region per batch, and in each batch ``step_keys`` once each, in that order; the
    app lists exactly these keys, in this order."""
    assert run.counts() == step_counts(epochs, batches, *step_keys)
    assert run.parent_keys() == step_parents(*step_keys)
    assert run.children_in_order("epoch") == [["io", "batch"] * batches] * epochs
    assert run.children_in_order("batch") == [list(step_keys)] * (epochs * batches)
    assert run.info["regions"] == ["epoch", "io", "batch", *step_keys]


def outbox_span_names(path: Path) -> list[str]:
    """The names of the spans still pending in an outbox (not acknowledged by the endpoint)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from maeltrace.otel._outbox import read_outbox

    return [
        span.name
        for entry in read_outbox(path)
        for rs in ExportTraceServiceRequest.FromString(entry.body).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str = "64k", *, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs at ``folder`` for the block, always unmounted after it (CI runs as root;
    elsewhere the test is skipped, saying why)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small file system with")
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


HOSTILE_PIECES = (
    b"[" * 3000,
    b"1e999",
    b"9" * 400,
    b"NaN",
    b"\xff",
    b"\n",
    b'"',
    b"{}",
    b"\x0f\xff\xff",
)
"""Byte strings that have broken parsers: deep nesting, overflowing and overlong numbers, NaN,
invalid UTF-8, a line break, a stray quote, an empty object, a huge protobuf varint."""


def mutate_bytes(data: bytes, draw: Callable[[Any], Any], *, longest_cut: int = 64) -> bytes:
    """``data`` with one to four byte-level changes drawn by hypothesis's ``draw``: a bit
    flipped, the end cut off, a `HOSTILE_PIECES` piece inserted, or a run deleted."""
    from hypothesis import strategies as st

    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if kind == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = draw(st.sampled_from(HOSTILE_PIECES))
        elif out:
            del out[at : at + draw(st.integers(1, longest_cut))]
    return bytes(out)
