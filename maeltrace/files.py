"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "read_json_object"]

_UMASK_LOCK = threading.Lock()


def atomic_write_text(path: str | os.PathLike[str], text: str, *, exist_ok: bool = True) -> Path:
    """`atomic_write_bytes` of ``text`` in UTF-8, line endings as given."""
    return atomic_write_bytes(path, text.encode("utf-8"), exist_ok=exist_ok)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, exist_ok: bool = True) -> Path:
    """Writes ``data`` to ``path`` through a temporary file in the same folder.

    The temporary file is flushed to disk, then renamed over ``path`` (or, with
    ``exist_ok=False``, hard-linked to it, which fails if ``path`` exists). On any error the
    temporary file is removed and ``path`` is left as it was. The file gets the permissions
    ``open`` would give it (0666 less the umask), not the temporary file's 0600.

    Raises:
        FileExistsError: ``path`` exists and ``exist_ok`` is false.
        OSError: the folder does not exist or cannot be written.
    """
    target = Path(path)
    if not exist_ok and target.exists():
        raise FileExistsError(f"{target} exists; pass exist_ok=True to replace it")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fchmod(tmp.fileno(), 0o666 & ~_umask())
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


def _umask() -> int:
    # Linux shows it without changing it; elsewhere it can only be read by setting it.
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        ValueError: the file is missing or unreadable, is not JSON, or holds no JSON object;
            the message names the file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read: {exc}") from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: a JSON object expected, not {type(obj).__name__}")
    return obj
