"""Small readers of timer records shared by the framework tests, and a runner of the apps."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maeltrace import Records
from maeltrace.report import Summary

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "apps"


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


def run_app(script: str, folder: Path, *args: str, timeout_s: float = 300) -> AppRun:
    """Runs ``apps/<script>`` in its own process, as ``maeltrace bench`` does, with the
    embedded default's export on, and reads back what it wrote into ``folder``."""
    env = dict(os.environ)
    env.pop("MAELTRACE_EXPORT", None)
    done = subprocess.run(
        [sys.executable, str(APPS / script), "--output-dir", str(folder), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    trace = json.loads((folder / "trace.json").read_text())
    return AppRun(
        folder=folder,
        info=json.loads((folder / "app.json").read_text()),
        summary=Summary.load(folder / "stats.json"),
        events=[e for e in trace["traceEvents"] if e["ph"] == "X"],
        stdout=done.stdout,
    )
