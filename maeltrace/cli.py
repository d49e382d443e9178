"""The ``maeltrace`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from maeltrace._version import __version__

__all__ = ["main"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


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
    demo.add_argument("--epochs", type=_positive, default=3)
    demo.add_argument("--batches", type=_positive, default=40, help="batches per epoch")
    demo.add_argument("--batch-size", type=_positive, default=64)
    demo.add_argument("--warmup", type=_non_negative, default=1, help="samples skipped per key")
    demo.add_argument("--output-dir", help="default $MAELTRACE_OUTPUT_DIR or ./maeltrace-out")
    demo.add_argument("--run-id", help="default $MAELTRACE_RUN_ID, the launcher's, or a new one")
    return parser


def _demo(args: argparse.Namespace) -> int:
    from maeltrace.demo import DemoConfig, run_demo
    from maeltrace.output import run_output_dir
    from maeltrace.timer import Timer

    config = DemoConfig(epochs=args.epochs, batches=args.batches, batch_size=args.batch_size)
    tmr = Timer(warmup=args.warmup, run_id=args.run_id, enabled=True)
    folder = run_output_dir(tmr.run_id, args.output_dir)
    loss = run_demo(tmr, config)
    tmr.print_all_time_stats()
    for name in ("stats.json", "stats.csv", "stats.md"):
        tmr.save_all_time_stats(folder / name)
    print(f"\nfinal loss {loss:.4f}; stats written to {folder}/ (stats.json, stats.csv, stats.md)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
    except (ValueError, OSError) as exc:
        print(f"maeltrace: error: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse refuses others
