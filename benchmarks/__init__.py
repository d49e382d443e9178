"""Benchmarks of maeltrace: per-region overhead, memory per recorded region, import time.

Each module here is a script (``uv run --group bench python benchmarks/NAME.py``) and also
importable, with a ``main(argv=None) -> int`` that a smoke test can call with ``["--quick"]``.
They print figures; none of them asserts a timing.
"""
