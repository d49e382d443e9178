"""Memory: one key read straight from the logs, statistics without a Python int per sample, and
`Timer.reset` handing native memory back to the system."""

from __future__ import annotations

import gc
import json
import platform
import random
import subprocess
import sys
import threading
import tracemalloc
from array import array
from pathlib import Path

import pytest

from maeltrace import Timer
from maeltrace.environment import MAELTRACE_PURE_PYTHON
from maeltrace.records import FIELDS, FLAG_COMPILED, NO_DEVICE_TIME, Records, key_samples
from maeltrace.stats import compute_stats

BOTH_RECORDERS = True

RECORD_BYTES = FIELDS * 8
"""What one region costs in the recorder's logs: 56 bytes."""


class Boom(Exception):
    """The exception region bodies raise on purpose."""


def _busy_timer(regions: int = 3000) -> Timer:
    """A timer with three interleaved keys, nesting, failures and a second thread."""
    tmr = Timer(export=False)
    for i in range(regions):
        key = ("forward", "backward", "optimizer")[i % 3]
        with tmr.region("step"):
            if i % 17 == 0:
                with pytest.raises(Boom), tmr.region(key):
                    raise Boom
            else:
                tmr.start(key)
                tmr.end(key)

    def other_thread() -> None:
        for _ in range(500):
            with tmr.region("forward"):
                pass

    thread = threading.Thread(target=other_thread)
    thread.start()
    for _ in range(500):
        with tmr.region("forward"):
            pass
    thread.join()
    return tmr


class TestKeyDurations:
    def test_one_key_read_from_the_logs_equals_its_records(self) -> None:
        tmr = _busy_timer()
        records = tmr.records()
        samples = records.samples()
        for key_id, key in enumerate(records.keys):
            seqs, durations = tmr._recorder.key_durations(key_id)
            expected = [
                (s, end - start)
                for k, s, start, end, status in zip(
                    records.key_id,
                    records.seq,
                    records.start_ns,
                    records.end_ns,
                    records.status,
                    strict=True,
                )
                if k == key_id and status == 0
            ]
            assert list(zip(seqs, durations, strict=True)) == expected, key
            assert list(durations) == samples.cpu[key_id]
            assert isinstance(seqs, array) and isinstance(durations, array)

    def test_a_key_with_no_completed_region_gives_empty_arrays(self) -> None:
        tmr = Timer(export=False)
        with pytest.raises(Boom), tmr.region("fails"):
            raise Boom
        assert tmr._recorder.key_durations(0) == (array("q"), array("q"))
        assert tmr._recorder.key_durations(99) == (array("q"), array("q"))

    def test_reset_leaves_nothing_to_read(self) -> None:
        tmr = _busy_timer(300)
        tmr.reset()
        assert tmr._recorder.key_durations(0) == (array("q"), array("q"))
        with tmr.region("step"):
            pass
        assert len(tmr._recorder.key_durations(0)[1]) == 1


class TestKeySamples:
    def test_device_times_and_compiled_flags_match_records_samples(self) -> None:
        tmr = _busy_timer(600)
        logs = tmr._recorder.snapshot()
        keys = tuple(tmr.keys())
        rng = random.Random(7)
        device: dict[int, tuple[int, int, int]] = {}
        for key_id in range(len(keys)):
            for seq in tmr._recorder.key_durations(key_id)[0]:
                if rng.random() < 0.5:
                    flags = FLAG_COMPILED if rng.random() < 0.2 else 0
                    device[seq] = (seq * 10, rng.randrange(1, 10**6), flags)
        assert any(flags & FLAG_COMPILED for _, _, flags in device.values())
        samples = Records.merge(logs, keys, device).samples()
        for key_id in range(len(keys)):
            seqs, cpu = tmr._recorder.key_durations(key_id)
            assert list(key_samples(seqs, cpu, device, gpu=False)) == samples.cpu.get(key_id, [])
            assert list(key_samples(seqs, cpu, device, gpu=True)) == samples.gpu.get(key_id, [])

    def test_no_device_times_gives_the_cpu_array_itself(self) -> None:
        seqs, cpu = array("q", [1, 2]), array("q", [5, 6])
        assert key_samples(seqs, cpu, None, gpu=False) is cpu
        assert key_samples(seqs, cpu, {}, gpu=True) == array("q")
        unflagged = {1: (0, 3, 0)}
        assert key_samples(seqs, cpu, unflagged, gpu=False) is cpu
        assert key_samples(seqs, cpu, unflagged, gpu=True) == array("q", [3])
        assert key_samples(seqs, cpu, {2: (0, NO_DEVICE_TIME, 0)}, gpu=True) == array("q")


class TestStatsOnArrays:
    @pytest.mark.parametrize(
        "values",
        [
            [0],
            [5, 1, 3],
            list(range(1000, 0, -1)),
            [random.Random(1).randrange(0, 10**13) for _ in range(5000)],
            [random.Random(2).randrange(0, 4) for _ in range(3000)],
            # Squares beyond 128 bits in sum: the exact sums come from Python instead.
            [2**63 - 1, 2**63 - 2, 2**62, 3],
            [-5, 7, -(2**40), 2**40],
        ],
    )
    def test_compiled_and_python_paths_give_the_same_exact_stats(
        self, values: list[int], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        via_array = compute_stats(array("q", values))
        via_list = compute_stats(values)
        monkeypatch.setenv(MAELTRACE_PURE_PYTHON, "1")
        reference = compute_stats(list(values))
        assert via_array == reference
        assert via_list == reference

    def test_the_callers_array_is_left_unsorted(self) -> None:
        values = array("q", [3, 1, 2])
        compute_stats(values)
        assert values == array("q", [3, 1, 2])

    def test_ints_beyond_int64_still_summarise(self) -> None:
        assert compute_stats([2**70, 2**70]).count == 2


class TestCompiledHelpers:
    def test_sort_and_sums_match_python(self) -> None:
        hotpath = pytest.importorskip("maeltrace._hotpath")
        rng = random.Random(3)
        for values in (
            [rng.randrange(-(2**63), 2**63) for _ in range(20_000)],
            [rng.randrange(0, 300) for _ in range(20_000)],
            [],
            [42],
        ):
            data = array("q", values)
            hotpath.sort_int64(data)
            assert list(data) == sorted(values)
        small = array("q", [rng.randrange(-(10**12), 10**12) for _ in range(10_000)])
        assert hotpath.sums_int64(small) == (sum(small), sum(x * x for x in small))
        assert hotpath.sums_int64(array("q", [-(2**63), 1])) == (1 - 2**63, 2**126 + 1)
        assert hotpath.sums_int64(array("q", [2**63 - 1] * 3)) is None
        with pytest.raises(TypeError):
            hotpath.sort_int64(array("i", [1]))
        with pytest.raises(BufferError):
            hotpath.sort_int64(b"\x00" * 8)  # read-only


class TestPeakMemory:
    def test_get_time_stats_peaks_below_twice_the_records(self) -> None:
        n = 200_000
        tmr = Timer(export=False)
        for _ in range(n):
            tmr.start("step")
            tmr.end("step")
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            stats = tmr.get_time_stats("step")
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert stats.count == n
        assert peak <= 2 * RECORD_BYTES * n, f"{peak / n:.0f} B per region"


_RESET_SCRIPT = """
import gc, json, sys
import maeltrace

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))

tmr = maeltrace.Timer(enabled=True, export=False)
pins = []
out = {}
for cycle in range(2):
    out[f"before_{cycle}"] = rss()
    for i in range(N):
        tmr.start("step")
        tmr.end("step")
        if i % 2000 == 0:
            # Long-lived allocations between the log's chunks pin the C heap's top, as a
            # training loop's own objects do; only freed pages in the middle can go back.
            pins.append(bytearray(4000))
    out[f"recorded_{cycle}"] = rss()
    tmr.reset()
    gc.collect()
    out[f"reset_{cycle}"] = rss()
print(json.dumps(out))
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="RSS from /proc and glibc's heap",
)
def test_reset_hands_the_logs_memory_back_to_the_system(recorder: str, tmp_path: Path) -> None:
    n = 1_000_000
    script = tmp_path / "reset_rss.py"
    script.write_text(f"N = {n}\n{_RESET_SCRIPT}")
    env_python = "1" if recorder == "python" else ""
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        check=True,
        env={**_clean_env(), MAELTRACE_PURE_PYTHON: env_python},
        timeout=300,
    )
    rss = json.loads(result.stdout)
    logs = RECORD_BYTES * n
    # The second cycle is the telling one: after the first reset glibc's mmap threshold has
    # grown past the chunk size, so the second cycle's chunks come from the heap.
    for cycle in range(2):
        grown = rss[f"recorded_{cycle}"] - rss[f"before_{cycle}"]
        kept = rss[f"reset_{cycle}"] - rss[f"before_{cycle}"]
        assert grown >= 0.8 * logs, rss
        assert kept <= 0.25 * logs, rss


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("MAELTRACE_", "OTEL_"))}
