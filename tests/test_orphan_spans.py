"""No orphan spans: a cancelled region is nobody's parent, in the records and every span."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from maeltrace import Timer, TimeType
from maeltrace.records import NO_PARENT
from tests.helpers import exported_spans

# tests/conftest.py runs every test here against the compiled and the pure-Python recorder.
BOTH_RECORDERS = True

KEYS = ("epoch", "io", "batch", "forward", "validation")


def assert_no_orphans(spans: list[Span]) -> None:
    """Every parent is exported, in the child's trace, and each trace has one root."""
    by_id = {span.span_id: span for span in spans}
    assert len(by_id) == len(spans), "span ids must be unique"
    roots: dict[bytes, list[str]] = {}
    for span in spans:
        if not span.parent_span_id:
            roots.setdefault(span.trace_id, []).append(span.name)
            continue
        parent = by_id.get(span.parent_span_id)
        assert parent is not None, f"{span.name!r} points at a span never exported"
        assert parent.trace_id == span.trace_id, f"{span.name!r} is not in its parent's trace"
    for trace in {span.trace_id for span in spans}:
        assert len(roots.get(trace, [])) == 1, f"trace {trace.hex()} has roots {roots.get(trace)}"


ops_st = st.lists(
    st.tuples(st.sampled_from(("start", "end", "cancel")), st.sampled_from(KEYS)),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops_st, seed=st.integers(0, 2**16))
def check_random_sequence(ops: list[tuple[str, str]], seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as folder:
        tmr = Timer(export=True, output_dir=folder)
        open_keys: list[str] = []
        for op, key in ops:
            if op == "start" and key not in open_keys:
                tmr.start(key)
                open_keys.append(key)
            elif op == "cancel" and key in open_keys:
                tmr.cancel(key)
                open_keys.remove(key)
            # Epochs end only at the close below: a span that left when an epoch ended while
            # its parent outside epochs was still open cannot be taken back.
            elif op == "end" and key in open_keys and key != "epoch":
                tmr.end(key)
                open_keys.remove(key)
        rng.shuffle(open_keys)  # ends out of order too
        for key in open_keys:
            tmr.end(key)
        records = tmr.records()
        seqs = set(records.seq)
        assert all(p == NO_PARENT or p in seqs for p in records.parent_seq)
        tmr.close()
        assert_no_orphans(exported_spans(tmr.traces_path))


class TestRandomSequences:
    def test_every_exported_parent_is_exported_in_the_same_trace(self, recorder: str) -> None:
        # Run from a plain test (hypothesis inside) so that both recorders are used.
        assert Timer(enabled=True).implementation == recorder
        check_random_sequence()


class TestLightningLikeEpoch:
    """Lightning validates in the gap after the last batch, while the wait for the next batch
    (``io``) is open; the callback cancels that wait at the epoch's end."""

    def test_validation_inside_a_cancelled_wait_hangs_from_the_epoch(self, tmp_path: Path) -> None:
        tmr = Timer(export=True, output_dir=tmp_path)
        with tmr.region(TimeType.EPOCH):
            for _ in range(2):
                with tmr.region(TimeType.IO):
                    pass
                with tmr.region(TimeType.BATCH):
                    pass
            tmr.start(TimeType.IO)
            with tmr.region("validation"):
                pass  # closed before the wait is cancelled
            tmr.start("test")  # still open when the wait is cancelled
            tmr.cancel(TimeType.IO)
            tmr.end("test")
            with tmr.region("predict"):  # after the cancel
                pass
        records = tmr.records()
        tmr.close()
        spans = exported_spans(tmr.traces_path)
        assert_no_orphans(spans)
        epoch = next(s for s in spans if s.name == "epoch")
        for name in ("validation", "test", "predict"):
            span = next(s for s in spans if s.name == name)
            assert span.parent_span_id == epoch.span_id, name
            assert span.trace_id == epoch.trace_id, name
        assert sorted(s.name for s in spans if s.name == "io") == ["io", "io"]
        keys = [str(records.keys[k]) for k in records.key_id]
        epoch_row = keys.index("epoch")
        for name in ("validation", "test", "predict"):
            assert records.parent_seq[keys.index(name)] == records.seq[epoch_row], name

    def test_a_cancelled_epoch_leaves_its_regions_as_roots_of_the_run_trace(
        self, tmp_path: Path
    ) -> None:
        tmr = Timer(export=True, output_dir=tmp_path)
        tmr.start(TimeType.EPOCH)
        with tmr.region(TimeType.BATCH):
            pass
        tmr.start("validation")
        tmr.cancel(TimeType.EPOCH)
        with tmr.region("forward"):  # under validation, which is now a root
            pass
        tmr.end("validation")
        tmr.close()
        spans = exported_spans(tmr.traces_path)
        assert_no_orphans(spans)
        names = {s.name: s for s in spans}
        assert "epoch" not in names
        run = names["run"]
        for name in ("batch", "validation"):
            assert names[name].parent_span_id == run.span_id, name
        assert names["forward"].parent_span_id == names["validation"].span_id
