"""The trainers' callbacks (Lightning, the Hugging Face Trainer) read back from a real Jaeger
v2: one root per trace, no span whose parent Jaeger cannot find (its "invalid parent span IDs"
warning), the validation pass inside its epoch's trace, and the counts the embedded file has."""

from __future__ import annotations

import importlib
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("lightning", reason="lightning is not installed")

from maeltrace import Timer  # noqa: E402
from maeltrace.errors import MaeltraceWarning  # noqa: E402
from tests.services.jaeger import JaegerService, count_spans  # noqa: E402
from tests.test_lightning import (  # noqa: E402
    BATCHES,
    EPOCHS,
    VAL_BATCHES,
    _loader,
    _module,
    _trainer,
)

# Per epoch: the epoch, its io waits and batches, each batch's forward, backward and optimizer
# step, and one validation pass with its batches.
SPANS_PER_EPOCH = 1 + BATCHES * 5 + 1 + VAL_BATCHES


def _service(monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"maeltrace-trainer-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("OTEL_SERVICE_NAME", name)
    return name


def _checked_tree(trace: dict[str, Any]) -> dict[str, Counter[str]]:
    """operationName of each parent -> Counter of its children's; fails on what Jaeger flags."""
    assert not trace.get("warnings"), trace["warnings"]
    spans = trace["spans"]
    names = {span["spanID"]: span["operationName"] for span in spans}
    tree: dict[str, Counter[str]] = {}
    for span in spans:
        assert not span.get("warnings"), (span["operationName"], span["warnings"])
        parents = [r["spanID"] for r in span["references"] if r["refType"] == "CHILD_OF"]
        assert all(parent in names for parent in parents), span["operationName"]
        parent = names[parents[0]] if parents else "(root)"
        tree.setdefault(parent, Counter())[span["operationName"]] += 1
    return tree


def test_a_lightning_fit_reads_back_from_jaeger_with_one_root_per_epoch(
    jaeger: JaegerService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service = _service(monkeypatch)
    pl = importlib.import_module("lightning.pytorch")
    from maeltrace.lightning import TimerCallback

    timer = Timer(
        export=True, endpoint=jaeger.otlp_grpc_endpoint, protocol="grpc", output_dir=tmp_path
    )
    trainer = _trainer(pl, tmp_path, TimerCallback(timer), num_sanity_val_steps=0)
    with warnings.catch_warnings(record=True) as caught:
        # Lightning's own advice and deprecations are not under test; maeltrace's warnings are.
        warnings.simplefilter("always")
        trainer.fit(_module(pl), _loader(BATCHES, 0), _loader(VAL_BATCHES, 1))
        timer.close()
    assert not [w for w in caught if issubclass(w.category, MaeltraceWarning)]
    assert timer.export_health.spans_pending == 0
    exported = timer.export_health.spans_exported
    assert exported == EPOCHS * SPANS_PER_EPOCH + 1  # and the run span

    traces = jaeger.wait_for_spans(service, exported)
    assert count_spans(traces) == exported
    epochs = [t for t in traces if any(s["operationName"] == "epoch" for s in t["spans"])]
    assert len(epochs) == EPOCHS
    for trace in epochs:
        assert _checked_tree(trace) == {
            "(root)": Counter({"epoch": 1}),
            "epoch": Counter({"io": BATCHES, "batch": BATCHES, "validation": 1}),
            "batch": Counter({"forward": BATCHES, "backward": BATCHES, "optimizer": BATCHES}),
            "validation": Counter({"validation_batch": VAL_BATCHES}),
        }
    (run_trace,) = [t for t in traces if t not in epochs]
    assert _checked_tree(run_trace) == {"(root)": Counter({"run": 1})}


def test_a_hugging_face_trainer_reads_back_from_jaeger_with_one_root_per_epoch(
    jaeger: JaegerService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("transformers", reason="transformers is not installed")
    from maeltrace.transformers import TimerCallback
    from tests import test_transformers as hf

    service = _service(monkeypatch)
    timer = Timer(
        export=True, endpoint=jaeger.otlp_grpc_endpoint, protocol="grpc", output_dir=tmp_path
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hf._trainer(tmp_path, TimerCallback(timer)).train()
        timer.close()
    assert not [w for w in caught if issubclass(w.category, MaeltraceWarning)]
    exported = timer.export_health.spans_exported
    # Per epoch as Lightning's, evaluation at the epoch's end inside it; and the run span.
    per_epoch = 1 + hf.BATCHES * 5 + 1 + hf.VAL_BATCHES
    assert exported == hf.EPOCHS * per_epoch + 1

    traces = jaeger.wait_for_spans(service, exported)
    epochs = [t for t in traces if any(s["operationName"] == "epoch" for s in t["spans"])]
    assert len(epochs) == hf.EPOCHS
    for trace in epochs:
        assert _checked_tree(trace) == {
            "(root)": Counter({"epoch": 1}),
            "epoch": Counter({"io": hf.BATCHES, "batch": hf.BATCHES, "validation": 1}),
            "batch": Counter(
                {"forward": hf.BATCHES, "backward": hf.BATCHES, "optimizer": hf.BATCHES}
            ),
            "validation": Counter({"validation_batch": hf.VAL_BATCHES}),
        }
