"""The illustrated report of ``maeltrace bench``: report.md, report.html and the plots, from
folders of real Timers (one on a fake CUDA device), read back, and opened in headless Chromium."""

from __future__ import annotations

import contextlib
import html
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from maeltrace import Timer, TimeType
from maeltrace.devices import DeviceTimes
from maeltrace.devices.torch_cuda import CudaEventClock
from maeltrace.report import Summary
from maeltrace.tools.benchreport import ReportFiles, write_report
from maeltrace.tools.plots import distribution_plot, flame_layout, pick_epoch
from tests.fakes.cuda import FakeCudaDevice

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Extra sleep per epoch, in ms: after the first (the warm-up), 20, 5 and 40 ms, so the epoch of
# median duration among epochs 2-4 is epoch 2, by a margin no scheduler jitter closes.
EPOCH_EXTRA_MS = (30, 20, 5, 40)
MEDIAN_EPOCH = 2


def _train(tmr: Timer, *, batches: int, gpu: FakeCudaDevice | None = None) -> None:
    """A training-like loop: epoch > io, batch > forward, backward, with sleeps as work."""
    on_gpu = gpu is not None
    for extra_ms in EPOCH_EXTRA_MS:
        with tmr.region(TimeType.EPOCH):
            time.sleep(extra_ms / 1000)
            for _ in tmr.iterate(range(batches), TimeType.IO):
                with tmr.region(TimeType.BATCH, gpu=on_gpu):
                    with tmr.region(TimeType.FORWARD, gpu=on_gpu):
                        time.sleep(0.0005)
                    with tmr.region(TimeType.BACKWARD, gpu=on_gpu):
                        time.sleep(0.001)
                    with tmr.region("optimizer"):
                        pass
                if gpu is not None:
                    gpu.run()  # the fake device keeps pace with the loop


def _fake_cuda_timer(folder: Path, gpu: FakeCudaDevice) -> Timer:
    def clock(times: DeviceTimes) -> CudaEventClock:
        return CudaEventClock(times, cuda=gpu)

    return Timer(warmup=1, export=False, output_dir=folder, device=clock, run_id=folder.name)


def _write_run(folder: Path, *, batches: int = 6, fake_gpu: bool = False, name: str) -> None:
    """A run folder as an app of apps/ leaves it: stats files, trace.json, app.json, log.txt."""
    folder.mkdir(parents=True)
    gpu = FakeCudaDevice() if fake_gpu else None
    if gpu is not None:
        tmr = _fake_cuda_timer(folder, gpu)
    else:
        tmr = Timer(warmup=1, export=False, output_dir=folder, run_id=folder.name)
    started = time.time()
    _train(tmr, batches=batches, gpu=gpu)
    tmr.write_outputs()
    tmr.save_all_time_stats(folder / "stats.csv")
    info = {
        "schema": "maeltrace.app/1",
        "name": name,
        "title": "Regions on a fake CUDA device (tests/fakes/cuda.py) <&>"
        if fake_gpu
        else "A pure-Python training-like loop",
        "framework": "fake-cuda" if fake_gpu else "python",
        "framework_version": None,
        "seed_app": "AP0",
        "regions": ["epoch", "io", "batch", "forward", "backward", "optimizer"],
        "config": {
            "size": "tiny",
            "epochs": len(EPOCH_EXTRA_MS),
            "batches": batches,
            "batch_size": 8,
            "scale": 4,
            "device": "cuda" if fake_gpu else "cpu",
            "seed": 0,
            "workers": 0,
        },
        "expected": {"epoch": len(EPOCH_EXTRA_MS), "batch": len(EPOCH_EXTRA_MS) * batches},
        "result": {"loss": 0.5},
        "run_id": folder.name,
        "started_unix_s": started,
        "wall_s": time.time() - started,
        "python": "3.11",
        "argv": ["--size", "tiny"],
    }
    (folder / "app.json").write_text(json.dumps(info), encoding="utf-8")
    (folder / "log.txt").write_text(f"$ python apps/{name}.py\nloss 0.5\n", encoding="utf-8")


FAILED_LOG = (
    "$ python apps/ap9_broken.py --size tiny\n"
    "Traceback (most recent call last):\n"
    '  File "apps/ap9_broken.py", line 3, in <module>\n'
    "    train(a & b)\n"
    "RuntimeError: <boom> & out of memory\n"
)


@dataclass(frozen=True)
class Bench:
    folder: Path
    files: ReportFiles
    ok_apps: tuple[str, ...]
    failed_app: str


def _write_bench(root: Path) -> tuple[Path, tuple[str, ...], str]:
    ok_apps = ("ap1-python-loop", "ap2-fake-cuda")
    failed = "ap9-broken"
    _write_run(root / ok_apps[0], name=ok_apps[0])
    _write_run(root / ok_apps[1], name=ok_apps[1], fake_gpu=True)
    (root / failed).mkdir()
    (root / failed / "log.txt").write_text(FAILED_LOG, encoding="utf-8")
    apps: list[dict[str, Any]] = [
        {
            "name": name,
            "folder": name,
            "status": "ok",
            "returncode": 0,
            "wall_s": 3.5,
            "log": f"{name}/log.txt",
        }
        for name in ok_apps
    ]
    apps.append(
        {
            "name": failed,
            "folder": failed,
            "status": "failed",
            "returncode": 1,
            "wall_s": 1.25,
            "log": f"{failed}/log.txt",
        }
    )
    # Killed on its timeout before it wrote anything, even a log line.
    (root / "ap8-slow").mkdir()
    apps.append(
        {
            "name": "ap8-slow",
            "folder": "ap8-slow",
            "status": "timeout",
            "returncode": None,
            "wall_s": 600.5,
            "log": "ap8-slow/log.txt",
        }
    )
    bench = {
        "schema": "maeltrace.bench/1",
        "bench_id": root.name,
        "started_unix_s": 1_790_000_000.0,
        "wall_s": 8.25,
        "host": "test-host",
        "maeltrace_version": "0.1.0",
        "python": "3.11.7",
        "argv": ["bench", "--size", "tiny"],
        "options": {"size": "tiny", "device": "cpu", "timeout_s": 600},
        "apps": apps,
        "mlflow": {
            "tracking_uri": "sqlite:///maeltrace-out/mlflow.db",
            "experiment": "maeltrace-bench",
            "parent_run_id": "0123abcd",
            "runs": {name: f"run-{name}" for name in ok_apps},
            "ui": "mlflow ui --backend-store-uri sqlite:///maeltrace-out/mlflow.db",
        },
        "otlp_endpoint": "http://localhost:4318",
    }
    (root / "bench.json").write_text(json.dumps(bench, indent=2), encoding="utf-8")
    return root, ok_apps, failed


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    folder, ok_apps, failed = _write_bench(tmp_path_factory.mktemp("bench") / "bench-x")
    return Bench(folder, write_report(folder), ok_apps, failed)


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


# -- the Markdown and the images ---------------------------------------------------------------


def test_report_md_holds_each_apps_tables_and_image_links(bench: Bench) -> None:
    markdown = bench.files.markdown.read_text(encoding="utf-8")
    assert bench.files.markdown == bench.folder / "report.md"
    for name in bench.ok_apps:
        summary = Summary.load(bench.folder / name / "stats.json")
        assert summary.to_markdown() in markdown
        assert f"]({name}/flame.png)" in markdown
        for key in ("epoch", "io", "batch", "forward", "backward", "optimizer"):
            assert f"]({name}/dist-{key}.png)" in markdown
        assert f"]({name}/trace.json)" in markdown and "ui.perfetto.dev" in markdown
    assert "| Batch (GPU)" in markdown and "| Forward (CPU)" in markdown
    assert "Steady state (first 1 samples" in markdown


def test_the_header_says_when_where_and_where_to_look(bench: Bench) -> None:
    markdown = bench.files.markdown.read_text(encoding="utf-8")
    assert "2026-09-21 14:13:20 UTC" in markdown  # started_unix_s 1_790_000_000
    assert "test-host" in markdown and "8.2 s" in markdown
    assert "2 of 4 ok" in markdown and "ap9-broken (failed), ap8-slow (timeout)" in markdown
    assert "http://localhost:4318" in markdown and "Jaeger" in markdown
    assert "mlflow ui --backend-store-uri sqlite:///maeltrace-out/mlflow.db" in markdown


def test_a_failed_app_gets_its_log_tail_and_no_images(bench: Bench) -> None:
    markdown = bench.files.markdown.read_text(encoding="utf-8")
    section = markdown[markdown.index("## ap9-broken") :]
    assert "did not finish (failed)" in section and "exit status 1" in section
    assert "RuntimeError: <boom> & out of memory" in section  # in a code fence, verbatim
    assert sorted(p.name for p in (bench.folder / bench.failed_app).iterdir()) == ["log.txt"]
    slow = markdown[markdown.index("## ap8-slow") :]
    assert "did not finish (timeout)" in slow and "It left no log." in slow
    assert "wall time 10 min 0 s" in slow


def test_images_are_pngs_of_modest_size_in_each_apps_folder(bench: Bench) -> None:
    images = bench.files.images
    assert len(images) == 2 * (1 + 6)  # per app a flame chart and six keys' histograms
    for path in images:
        assert path.parent.name in bench.ok_apps
        width, height = _png_size(path)
        size = path.stat().st_size
        assert 5_000 < size < 200_000, f"{path.name}: {size} bytes"
        if path.name == "flame.png":
            assert width == 1000 and 150 <= height <= 1200
        else:
            assert path.name.startswith("dist-")
            assert (width, height) == (500, 320)


def test_the_flame_chart_shows_the_median_epoch_after_the_first(bench: Bench) -> None:
    for name in bench.ok_apps:
        trace = json.loads((bench.folder / name / "trace.json").read_text(encoding="utf-8"))
        epochs = sorted(
            (e["ts"], e["dur"])
            for e in trace["traceEvents"]
            if e.get("cat") == "cpu" and e.get("name") == "epoch"
        )
        later = sorted(range(1, len(epochs)), key=lambda i: epochs[i][1])
        assert later[len(later) // 2] + 1 == MEDIAN_EPOCH  # as the loop was built
        layout = flame_layout(trace)
        assert (layout.epoch, layout.epochs) == (MEDIAN_EPOCH, len(EPOCH_EXTRA_MS))
        assert layout.caption == f"epoch {MEDIAN_EPOCH} of {len(EPOCH_EXTRA_MS)} (median)"
        assert layout.epoch_ms == pytest.approx(epochs[MEDIAN_EPOCH - 1][1] / 1000)
    markdown = bench.files.markdown.read_text(encoding="utf-8")
    assert markdown.count(f"Flame chart, epoch {MEDIAN_EPOCH} of 4 (median): ") == 2


def test_the_flame_chart_nests_by_depth_and_puts_gpu_intervals_below(bench: Bench) -> None:
    trace = json.loads((bench.folder / "ap2-fake-cuda" / "trace.json").read_text("utf-8"))
    layout = flame_layout(trace)
    rows = {(bar.key, bar.gpu): bar.row for bar in layout.bars}
    assert rows[("epoch", False)] == 0
    assert rows[("batch", False)] == rows[("io", False)] == 1
    assert rows[("forward", False)] == rows[("backward", False)] == 2
    assert layout.cpu_rows == 3 and layout.gpu_rows == 2
    assert rows[("batch", True)] == 3 and rows[("forward", True)] == 4
    assert layout.cpu_regions == 1 + 6 * 5 and layout.gpu_regions == 6 * 3
    flat = flame_layout(json.loads((bench.folder / "ap1-python-loop" / "trace.json").read_text()))
    assert flat.gpu_rows == 0 and not any(bar.gpu for bar in flat.bars)


def test_overlapping_regions_get_their_own_lane(tmp_path: Path) -> None:
    tmr = Timer(export=False, output_dir=tmp_path)
    with tmr.region(TimeType.EPOCH):
        for _ in range(3):
            tmr.start(TimeType.BATCH)
            tmr.start(TimeType.IO)  # opens inside the batch, and outlives it
            time.sleep(0.001)
            tmr.end(TimeType.BATCH)
            time.sleep(0.001)
            tmr.end(TimeType.IO)
    tmr.write_outputs()
    layout = flame_layout(json.loads((tmp_path / "trace.json").read_text(encoding="utf-8")))
    by_row: dict[int, list[tuple[float, float]]] = {}
    for bar in layout.bars:
        by_row.setdefault(bar.row, []).append((bar.start_ms, bar.end_ms))
    for spans in by_row.values():
        spans.sort()
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
    assert layout.cpu_rows == 3  # epoch; batches; the io regions, which would overlap them


def test_pick_epoch_takes_the_median_after_the_first() -> None:
    assert pick_epoch([5.0]) == 0
    assert pick_epoch([9.0, 1.0]) == 1
    assert pick_epoch([100.0, 3.0, 1.0, 2.0]) == 3
    assert pick_epoch([100.0, 4.0, 1.0, 3.0, 2.0]) == 4  # even count: the lower middle
    with pytest.raises(ValueError, match="no epochs"):
        pick_epoch([])


def test_plots_are_deterministic(bench: Bench, tmp_path: Path) -> None:
    folder = bench.folder / "ap2-fake-cuda"
    trace = json.loads((folder / "trace.json").read_text(encoding="utf-8"))
    from maeltrace.tools.plots import flame_chart

    flame_chart(trace, tmp_path / "a.png", title="ap2-fake-cuda")
    flame_chart(trace, tmp_path / "b.png", title="ap2-fake-cuda")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    rows = [r for r in Summary.load(folder / "stats.json").rows if r.key == TimeType.BATCH]
    assert [r.device for r in rows] == [False, True]
    distribution_plot(rows, tmp_path / "c.png", title="Batch", warmup=1)
    distribution_plot(rows, tmp_path / "d.png", title="Batch", warmup=1)
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "d.png").read_bytes()


def test_an_epoch_of_thousands_of_batches_draws_every_region(tmp_path: Path) -> None:
    # How long it takes is benchmarks/report.py's figure, not an assertion here.
    tmr = Timer(export=False, output_dir=tmp_path / "run")
    for _ in range(2):
        with tmr.region(TimeType.EPOCH):
            for _ in tmr.iterate(range(2500), TimeType.IO):
                with tmr.region(TimeType.BATCH), tmr.region(TimeType.FORWARD):
                    pass
    tmr.write_outputs()
    from maeltrace.tools.plots import flame_chart

    trace = json.loads((tmp_path / "run" / "trace.json").read_text(encoding="utf-8"))
    drawn = flame_chart(trace, tmp_path / "flame.png", title="many batches")
    assert drawn.cpu_regions == 1 + 3 * 2500
    assert _png_size(tmp_path / "flame.png")[0] == 1000


# -- one run folder --------------------------------------------------------------------------


def test_a_single_run_folder_gets_a_one_app_report(tmp_path: Path) -> None:
    run = tmp_path / "run-1"
    _write_run(run, name="ap1-python-loop", batches=3)
    (run / "app.json").unlink()  # a user's own script writes none
    files = write_report(run)
    assert files.markdown == run / "report.md" and files.html == run / "report.html"
    markdown = files.markdown.read_text(encoding="utf-8")
    assert Summary.load(run / "stats.json").to_markdown() in markdown
    assert "](flame.png)" in markdown and "](dist-batch.png)" in markdown
    assert "](trace.json)" in markdown and "run-1" in markdown
    assert {p.name for p in files.images} >= {"flame.png", "dist-epoch.png", "dist-io.png"}
    page = files.html.read_text(encoding="utf-8")
    assert 'src="flame.png"' in page and "<table>" in page


def test_the_html_page_says_the_rank_of_a_distributed_run_as_the_markdown_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    tmr = Timer(export=False, output_dir=tmp_path)
    with tmr.region(TimeType.EPOCH), tmr.region(TimeType.BATCH):
        pass
    # The summary, with the rank, is built here; write_outputs would name the files .rank1.
    tmr.save_all_time_stats(tmp_path / "stats.json")
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    files = write_report(tmp_path)
    notes = Summary.load(tmp_path / "stats.json").notes()
    rank_line = next(note for note in notes if note.startswith("Rank 1 of 2 on "))
    assert f"\n{rank_line}\n" in files.markdown.read_text(encoding="utf-8")
    assert f'<p class="note">{html.escape(rank_line)}</p>' in files.html.read_text("utf-8")


def test_failed_regions_are_named_under_the_html_tables(tmp_path: Path) -> None:
    tmr = Timer(export=False, output_dir=tmp_path)
    with tmr.region(TimeType.EPOCH):
        pass
    with pytest.raises(ZeroDivisionError), tmr.region(TimeType.EPOCH):
        _ = 1 / 0
    tmr.write_outputs()
    page = write_report(tmp_path).html.read_text(encoding="utf-8")
    assert '<p class="note">Failed regions, not in the statistics: Epoch: 1' in page


def test_the_html_gives_each_image_the_size_of_its_png(bench: Bench) -> None:
    page = bench.files.html.read_text(encoding="utf-8")
    for path in bench.files.images:
        source = path.relative_to(bench.folder).as_posix()
        width, height = _png_size(path)
        assert f'<img src="{source}" alt="' in page
        tag = page[page.index(f'<img src="{source}"') :]
        tag = tag[: tag.index(">")]
        assert f' width="{width}" height="{height}"' in tag


def test_a_bench_listing_an_app_twice_is_refused(small_bench: Path, tmp_path: Path) -> None:
    folder = _broken(small_bench, tmp_path)
    bench = json.loads((folder / "bench.json").read_text(encoding="utf-8"))
    bench["apps"].append(bench["apps"][0])
    (folder / "bench.json").write_text(json.dumps(bench), encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"bench\.json: apps\[\d\]\.name: app 'ap1-python-loop' is listed twice"
    ):
        write_report(folder)
    assert not (folder / "report.html").exists()


def test_a_run_without_regions_gets_tables_but_no_plots(tmp_path: Path) -> None:
    Timer(export=False, output_dir=tmp_path).write_outputs()
    files = write_report(tmp_path)
    assert files.images == ()
    assert "No region was recorded." in files.markdown.read_text(encoding="utf-8")
    assert "No region was recorded." in files.html.read_text(encoding="utf-8")


def test_keys_become_safe_and_distinct_file_names(tmp_path: Path) -> None:
    tmr = Timer(export=False, output_dir=tmp_path)
    for key in ("data/load", "data:load", "../up", "ünï"):
        with tmr.region(key):
            pass
    tmr.write_outputs()
    files = write_report(tmp_path)
    names = sorted(p.name for p in files.images if p.name.startswith("dist-"))
    assert len(names) == 4 and len(set(names)) == 4
    assert all(p.parent == tmp_path for p in files.images)
    assert "dist-up.png" in names
    assert all("/" not in n and ":" not in n for n in names)
    assert "whole run" in files.markdown.read_text(encoding="utf-8")  # no epoch regions


# -- bad folders -----------------------------------------------------------------------------


def test_a_folder_that_is_neither_kind_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"neither a bench folder \(with bench.json\) nor a run"):
        write_report(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        write_report(tmp_path / "missing")


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bench folder to copy and break (not reported on: the breaking tests do that)."""
    return _write_bench(tmp_path_factory.mktemp("small") / "bench-y")[0]


def _broken(small_bench: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(small_bench, tmp_path / "bench"))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("bench.json:{not json", r"bench\.json: line 1 column 2: "),
        ("bench.json:[]", r"bench\.json: an object expected"),
        ('bench.json:{"schema": "other/1"}', r"bench\.json: schema: 'maeltrace\.bench/1' expected"),
        ("ap1-python-loop/stats.json:{}", r"ap1-python-loop/stats\.json: not a maeltrace"),
        ("ap2-fake-cuda/trace.json:{}", r"ap2-fake-cuda/trace\.json: not a Chrome trace"),
        ("ap1-python-loop/app.json:[1]", r"ap1-python-loop/app\.json: an object expected"),
        ("ap1-python-loop/stats.json:", r"ap1-python-loop/stats\.json: missing"),
        ("ap2-fake-cuda/trace.json:", r"ap2-fake-cuda/trace\.json: missing"),
    ],
)
def test_missing_or_malformed_inputs_raise_naming_the_file(
    small_bench: Path, tmp_path: Path, breakage: str, message: str
) -> None:
    folder = _broken(small_bench, tmp_path)
    name, _, text = breakage.partition(":")
    if text:
        (folder / name).write_text(text, encoding="utf-8")
    else:
        (folder / name).unlink()
    with pytest.raises(ValueError, match=message):
        write_report(folder)
    assert not (folder / "report.html").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("status", "crashed", r"apps\[0\]\.status: one of ok, failed, timeout expected"),
        ("name", "", r"apps\[0\]\.name: an empty string"),
        ("returncode", "0", r"apps\[0\]\.returncode: a whole number expected"),
    ],
)
def test_a_malformed_app_entry_is_named(
    small_bench: Path, tmp_path: Path, field: str, value: object, message: str
) -> None:
    folder = _broken(small_bench, tmp_path)
    bench = json.loads((folder / "bench.json").read_text(encoding="utf-8"))
    bench["apps"][0][field] = value
    (folder / "bench.json").write_text(json.dumps(bench), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        write_report(folder)


# -- the HTML page -----------------------------------------------------------------------------


def test_the_html_page_is_self_contained_and_escaped(bench: Bench) -> None:
    page = bench.files.html.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "<style>" in page
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "RuntimeError: &lt;boom&gt; &amp; out of memory" in page
    assert "<boom>" not in page
    assert "fake CUDA device (tests/fakes/cuda.py) &lt;&amp;&gt;" in page
    sources = [part.split('"', 1)[0] for part in page.split(' src="')[1:]]
    assert len(sources) == len(bench.files.images)
    for source in sources:
        assert "://" not in source and (bench.folder / source).is_file()
    assert page.count('<td class="num">') >= 6 * 20  # right-aligned numbers


# -- headless Chromium ---------------------------------------------------------------------------

PROBE = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map((img) => ({
    src: img.getAttribute("src"), ok: img.complete && img.naturalWidth > 0,
    width: img.naturalWidth }));
  const probe = document.createElement("pre");
  probe.id = "maeltrace-probe";
  probe.textContent = JSON.stringify({
    tables: document.querySelectorAll("table").length,
    rows: document.querySelectorAll("tr").length,
    images: images,
    width: document.documentElement.scrollWidth,
  });
  document.body.appendChild(probe);
});
</script>
"""


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("headless Chromium is needed for this test: apt-get install chromium")
    return found


def _processes_using(marker: str) -> list[int]:
    """Ids of live processes whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """Runs headless Chromium with its own profile folder; afterwards no process of it lives."""
    binary = _chromium()
    profile = tmp_path / "chromium-profile"

    def run(*args: str) -> str:
        command = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--allow-file-access-from-files",
            f"--user-data-dir={profile}",
            *args,
        ]
        # Its own session, so that the browser's helper processes go with it on a timeout.
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(f"chromium did not finish in 90 s: {' '.join(command)}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        assert process.returncode == 0, err.decode(errors="replace")[-2000:]
        return out.decode("utf-8", errors="replace")

    yield run
    deadline = time.monotonic() + 10
    while _processes_using(str(profile)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _processes_using(str(profile))
    for pid in left:  # ours: they run with this test's profile folder
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert left == [], "chromium left processes behind"


@pytest.mark.slow
def test_the_page_renders_in_headless_chromium_with_every_image(
    bench: Bench, chromium: Any, tmp_path: Path
) -> None:
    page = bench.files.html.read_text(encoding="utf-8")
    probe_page = bench.folder / "report-probe.html"  # beside the report: same relative paths
    probe_page.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    try:
        dom = chromium("--virtual-time-budget=10000", "--dump-dom", probe_page.resolve().as_uri())
    finally:
        probe_page.unlink()
    start = dom.index('<pre id="maeltrace-probe">') + len('<pre id="maeltrace-probe">')
    probe = json.loads(html.unescape(dom[start : dom.index("</pre>", start)]))
    # The apps table, then per finished app the table and the steady-state table.
    assert probe["tables"] == 1 + 2 * len(bench.ok_apps)
    summaries = [Summary.load(bench.folder / n / "stats.json") for n in bench.ok_apps]
    table_rows = sum(2 * (len(s.rows) + 1) for s in summaries)
    assert probe["rows"] == 1 + 4 + table_rows
    assert len(probe["images"]) == len(bench.files.images)
    broken = [image["src"] for image in probe["images"] if not image["ok"]]
    assert broken == []

    shot = tmp_path / "shot.png"
    chromium("--window-size=1200,1600", f"--screenshot={shot}", bench.files.html.as_uri())
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    ink = (pixels[..., :3] < 0.9).any(axis=-1).mean()  # share of pixels that are not near-white
    assert ink > 0.02, f"the screenshot is blank ({ink:.1%} ink)"
    assert len({tuple(p) for p in pixels[::16, ::16, :3].reshape(-1, 3).tolist()}) > 20
