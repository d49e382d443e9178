"""The ``maeltrace`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from maeltrace._arguments import non_negative_int, positive_int
from maeltrace._version import __version__
from maeltrace.errors import MaeltraceError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maeltrace", description="Time training-loop regions on the CPU and GPU clocks."
    )
    parser.add_argument("--version", action="version", version=f"maeltrace {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a small CPU training loop, print its table and write its stats files",
        description="Runs a small CPU training loop under a Timer, prints the seed-style "
        "table and writes stats.json, stats.csv and stats.md into the run's output folder.",
    )
    demo.add_argument("--epochs", type=positive_int, default=3)
    demo.add_argument("--batches", type=positive_int, default=40, help="batches per epoch")
    demo.add_argument("--batch-size", type=positive_int, default=64)
    demo.add_argument("--warmup", type=non_negative_int, default=1, help="samples skipped per key")
    demo.add_argument("--output-dir", help="default $MAELTRACE_OUTPUT_DIR or ./maeltrace-out")
    demo.add_argument("--run-id", help="default $MAELTRACE_RUN_ID, the launcher's, or a new one")
    bench = commands.add_parser(
        "bench",
        help="run the example apps, each in its own process, and write an illustrated report",
        description="Runs the example applications of apps/ (all, or those named: full names "
        "or prefixes such as ap4), each in its own process, into one folder "
        "<output root>/bench-<time>-<hex>/, logs them to MLflow (MLFLOW_TRACKING_URI, else a "
        "SQLite store in the output root) and writes report.md and report.html. Exits 1 when "
        "an app failed.",
    )
    bench.add_argument("apps", nargs="*", metavar="APP", help="default: every app")
    bench.add_argument(
        "--size", choices=("tiny", "small", "medium"), default="small", help="default small"
    )
    bench.add_argument("--epochs", type=positive_int, help="default: each app's for the size")
    bench.add_argument("--batches", type=positive_int, help="batches per epoch")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    bench.add_argument(
        "--output-dir", help="output root; default $MAELTRACE_OUTPUT_DIR or ./maeltrace-out"
    )
    bench.add_argument("--apps-dir", help="folder of the app scripts; default the clone's apps/")
    bench.add_argument(
        "--timeout", type=positive_int, default=600, help="seconds one app may run; default 600"
    )
    bench.add_argument("--tracking-uri", help="MLflow tracking URI; default as described above")
    bench.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    bench.add_argument("--list", action="store_true", help="list the apps and exit")
    report = commands.add_parser(
        "report",
        help="rebuild report.md and report.html of a bench folder or a run folder",
        description="Writes report.md and report.html (tables, flame chart, distributions) "
        "into DIR, a folder of `maeltrace bench` or the folder of one run.",
    )
    report.add_argument("dir", help="the bench folder or run folder")
    compare = commands.add_parser(
        "compare",
        help="compare two runs region by region; exit 1 when one got slower",
        description="Compares BASELINE and CANDIDATE (see `maeltrace compare --help`).",
        add_help=False,
    )
    compare.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    replay = commands.add_parser(
        "replay",
        help="send a run's outbox (or an OTLP JSON lines file) to an OTLP endpoint",
        description="Sends what a run's outbox still holds (the spans its endpoint did not take; "
        "each request sent is marked in the outbox, so a second replay sends only the rest), or "
        "the spans of an OTLP JSON lines file (the embedded default's traces.otlp.jsonl), to an "
        "OTLP endpoint, and reports how many went out. Requests over --max-request-bytes, and "
        "those the endpoint refuses for their size, are sent in parts. Lines of a JSON lines "
        "file that fail again are kept in FILE.failed.",
    )
    replay.add_argument(
        "file", help="an outbox (*.otlp.outbox), a run folder (all its outboxes), or a .jsonl file"
    )
    replay.add_argument(
        "--max-request-bytes",
        type=int,
        default=None,
        help="the most bytes of one request (default 4 MiB)",
    )
    replay.add_argument(
        "--endpoint", help="default $OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT; e.g. http://host:4318"
    )
    replay.add_argument(
        "--protocol",
        choices=("grpc", "http/protobuf", "http/json"),
        help="default $OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL, else http/protobuf",
    )
    collect = commands.add_parser(
        "collect",
        help="run the summary service: an OTLP/HTTP receiver that logs run summaries to MLflow",
        description="Runs the summary service (see `maeltrace collect --help`).",
        add_help=False,
    )
    collect.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from maeltrace._metadata import new_run_id, run_id_from_environment
    from maeltrace._output import run_output_dir
    from maeltrace.timer import Timer
    from maeltrace.tools.demo import DemoConfig, run_demo

    config = DemoConfig(epochs=args.epochs, batches=args.batches, batch_size=args.batch_size)
    run_id = args.run_id or run_id_from_environment() or new_run_id()
    folder = run_output_dir(run_id, args.output_dir)
    tmr = Timer(warmup=args.warmup, run_id=run_id, enabled=True, export=True, output_dir=folder)
    with tmr:
        loss = run_demo(tmr, config)
    tmr.print_all_time_stats()
    tmr.save_all_time_stats(folder / "stats.csv")
    names = ", ".join(sorted(p.name for p in folder.iterdir()))
    print(f"\nfinal loss {loss:.4f}; written to {folder}/: {names}")
    print("open trace.json in https://ui.perfetto.dev or chrome://tracing for the flame chart")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from maeltrace.tools.bench import BenchOptions, default_apps_dir, discover_apps, run_bench

    apps_dir = Path(args.apps_dir) if args.apps_dir else default_apps_dir()
    if args.list:
        for name, script in discover_apps(apps_dir).items():
            print(f"{name:<30} {script}")
        return 0
    options = BenchOptions(
        apps=args.apps,
        size=args.size,
        epochs=args.epochs,
        batches=args.batches,
        device=args.device,
        output_root=Path(args.output_dir) if args.output_dir else None,
        apps_dir=apps_dir,
        timeout_s=float(args.timeout),
        mlflow=not args.no_mlflow,
        tracking_uri=args.tracking_uri,
    )
    result = run_bench(options)
    failed = [o.name for o in result.outcomes if o.status != "ok"]
    print(
        f"\n{len(result.outcomes) - len(failed)} of {len(result.outcomes)} apps finished"
        + (f"; failed: {', '.join(failed)} (see their log.txt)" if failed else "")
    )
    print("Where to look:")
    if result.report is not None:
        print(f"  report     {result.report[1]}  (and {result.report[0].name})")
    print(f"  traces     {result.folder}/<app>/trace.json  in https://ui.perfetto.dev")
    if result.otlp_endpoint:
        print(f"  spans      sent to {result.otlp_endpoint} (service name = app name)")
    if result.mlflow is not None:
        print(f"  MLflow     {result.mlflow['ui']}")
    print(f"  compare    maeltrace compare {result.folder} <a later bench folder>")
    return 0 if result.ok else 1


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from maeltrace.tools.benchreport import write_report

    files = write_report(Path(args.dir))
    print(f"wrote {files.html} and {files.markdown}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from maeltrace.otel._replay import replay
    from maeltrace.otel.config import ExportConfig

    config = ExportConfig.from_env(endpoint=args.endpoint, protocol=args.protocol)
    if config is None:
        raise ValueError("no OTLP endpoint: pass --endpoint or set OTEL_EXPORTER_OTLP_ENDPOINT")
    from maeltrace.otel._batching import DEFAULT_MAX_REQUEST_BYTES
    from maeltrace.otel._outbox import OUTBOX_SUFFIX

    limit = args.max_request_bytes or DEFAULT_MAX_REQUEST_BYTES
    source = Path(args.file)
    files = sorted(source.glob(f"*{OUTBOX_SUFFIX}")) if source.is_dir() else [source]
    if not files:
        raise ValueError(f"{source} holds no outbox (*{OUTBOX_SUFFIX})")
    failed = 0
    damaged: list[str] = []
    for path in files:
        result = replay(path, config, max_request_bytes=limit)
        unit = "requests" if path.name.endswith(OUTBOX_SUFFIX) else "lines"
        print(
            f"{path}: sent {result.sent_spans} spans in {result.sent_lines} {unit} to "
            f"{config.endpoint}; {result.failed_lines} {unit} failed"
        )
        failed += result.failed_lines
        if result.malformed_lines:
            damaged.append(
                f"{path}: {result.malformed_lines} line(s) not OTLP JSON (kept in "
                f"{result.failed_path}; replaying them will not help)"
            )
    if damaged:
        # The rest was sent; a damaged file is an input error (2), told apart from lines the
        # receiver did not take (1), which a later replay may still deliver.
        print(f"maeltrace: error: {'; '.join(damaged)}", file=sys.stderr)
        return 2
    return 0 if failed == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["collect"]:
        # The service parses its own options (and loads its web stack only when it runs).
        from maeltrace.collect.service import main as collect_main

        return collect_main(argv[1:])
    if argv[:1] == ["compare"]:
        from maeltrace.tools.compare import main as compare_main

        return compare_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "report":
            return _report(args)
    except (ValueError, OSError, ImportError, MaeltraceError) as exc:
        print(f"maeltrace: error: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse refuses others
