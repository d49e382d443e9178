"""``python -m maeltrace``: the command line."""

from maeltrace.cli import main

raise SystemExit(main())
