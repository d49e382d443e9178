"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_text"]


def atomic_write_text(path: str | os.PathLike[str], text: str, *, exist_ok: bool = True) -> Path:
    """Writes ``text`` to ``path`` through a temporary file in the same folder.

    The temporary file is flushed to disk, then renamed over ``path`` (or, with
    ``exist_ok=False``, hard-linked to it, which fails if ``path`` exists). On any error the
    temporary file is removed and ``path`` is left as it was.

    Raises:
        FileExistsError: ``path`` exists and ``exist_ok`` is false.
        OSError: the folder does not exist or cannot be written.
    """
    target = Path(path)
    if not exist_ok and target.exists():
        raise FileExistsError(f"{target} exists; pass exist_ok=True to replace it")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        if exist_ok:
            os.replace(tmp_name, target)
        else:
            os.link(tmp_name, target)
            os.unlink(tmp_name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return target
