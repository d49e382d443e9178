"""Files that readers never see half of: atomic whole-file writes and JSON-lines appends."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, overload

if sys.platform != "win32":
    import fcntl

__all__ = [
    "append_line",
    "append_lines",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_json_object",
    "read_lines",
]

_T = TypeVar("_T")
_log = logging.getLogger("maeltrace.files")  # the name users filter on, kept
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


# -- JSON-lines files: appended by many writers, read while a disk fills ----------------------

_PARSE_ERRORS = (ValueError, RecursionError)  # json's errors and UnicodeDecodeError are ValueErrors
_TORN = "no newline at its end (a write cut short)"
_NAMED_LINES = 10  # line numbers the one warning names besides the first


def append_line(path: str | os.PathLike[str], line: bytes, *, mode: int = 0o644) -> None:
    """`append_lines` of one line."""
    append_lines(path, (line,), mode=mode)


def append_lines(
    path: str | os.PathLike[str], lines: Iterable[bytes], *, mode: int = 0o644, sync: bool = False
) -> None:
    """Appends lines to a file, all or none, each ended by a newline; creates the file.

    The lines go to the file in one ``write`` on a descriptor opened with ``O_APPEND``, under an
    exclusive ``flock`` that every call here takes, so threads and processes may share a file
    and their lines never interleave. A file whose last byte is not a newline (a write cut short
    by a crash) first gets one, so the fragment stays a line of its own, which `read_lines`
    skips, instead of spoiling the first line appended after it.

    When the write fails part way (disk full, quota, I/O error, or a signal handler that raises),
    the file is truncated back to its size before the call, so no partial line is left; this is
    done only while the file ends with this call's bytes. Where ``flock`` is not supported (some
    network file systems) the lines are still written in one ``write``, and a failed write is
    cut back only if no other writer appended after it; else its fragment stays and the next
    append repairs it as above.

    Args:
        path: the file; its folder must exist.
        lines: the lines, without their newlines (each is added); at least one.
        mode: the permissions of a new file (less the umask).
        sync: flush the file to disk (``fsync``) before returning, so the lines survive a power
            loss, not only the end of the process. A failed flush counts as a failed write.

    Raises:
        ValueError: no lines, or a line that is empty or holds a newline (these would be read
            back as other lines than were given). Nothing is written then.
        OSError: the file cannot be opened or written; it is left as it was before the call
            (see above for the one exception, without ``flock``).
    """
    chunks = list(lines)
    if not chunks:
        raise ValueError("append_lines needs at least one line")
    for number, chunk in enumerate(chunks, start=1):
        if not chunk or b"\n" in chunk:
            what = "is empty" if not chunk else "holds a newline"
            raise ValueError(f"line {number} of {len(chunks)} {what}; lines are written whole")
    payload = b"\n".join(chunks) + b"\n"
    # O_RDWR, not O_WRONLY: the last byte is read to see whether the file ends in a newline.
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, mode)
    try:
        locked = _lock(fd)
        before = os.fstat(fd).st_size
        if before and os.pread(fd, 1, before - 1) != b"\n":
            payload = b"\n" + payload
        written = 0
        try:
            view = memoryview(payload)
            # A regular file takes the whole payload in one write; the loop only matters
            # when the write is cut short (disk full), where the next write says why.
            while written < len(payload):
                count = os.write(fd, view[written:])
                if count <= 0:  # never for a regular file; a loop forever if it were
                    raise OSError(f"write returned {count} with {len(payload) - written} to go")
                written += count
            if sync:
                os.fsync(fd)
        except BaseException:
            _cut_back(path, fd, before, written, locked)
            raise
    finally:
        os.close(fd)  # also releases the lock


def _lock(fd: int) -> bool:
    """Takes the exclusive ``flock`` on ``fd``; False where the file system has none."""
    if sys.platform == "win32":
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # ENOLCK, EOPNOTSUPP, EINVAL on file systems without locks
        return False
    return True


def _cut_back(
    path: str | os.PathLike[str], fd: int, before: int, written: int, locked: bool
) -> None:
    """Truncates a failed append's bytes away, when they are the file's last ones."""
    if not written:
        return
    try:
        size = os.fstat(fd).st_size
        # Locked, the file cannot have grown under us from another append here; unlocked, a
        # size of exactly before + written still means no other writer came between.
        if size == before + written:
            os.ftruncate(fd, before)
        else:
            _log.warning(
                "%s: a failed append left %d bytes that could not be cut back (the file "
                "grew to %d bytes meanwhile, locked: %s); readers skip them",
                os.fspath(path),
                written,
                size,
                locked,
            )
    except OSError as err:
        # The fragment stays; the next append ends it with a newline and readers skip it.
        _log.warning("%s: cannot cut back a failed append: %s", os.fspath(path), err)


@overload
def read_lines(
    path: str | os.PathLike[str],
    *,
    parse: None = None,
    on_skip: Callable[[int, bytes, str], object] | None = None,
    max_line_bytes: int | None = None,
) -> Iterator[tuple[int, bytes]]: ...


@overload
def read_lines(
    path: str | os.PathLike[str],
    *,
    parse: Callable[[bytes], _T],
    on_skip: Callable[[int, bytes, str], object] | None = None,
    max_line_bytes: int | None = None,
) -> Iterator[tuple[int, _T]]: ...


def read_lines(
    path: str | os.PathLike[str],
    *,
    parse: Callable[[bytes], Any] | None = None,
    on_skip: Callable[[int, bytes, str], object] | None = None,
    max_line_bytes: int | None = None,
) -> Iterator[tuple[int, Any]]:
    """Reads the complete lines of a JSON-lines (or any lines) file, one at a time.

    A line is complete when a newline ends it. Blank lines are passed over. A last line without
    its newline (a write cut short, or one still under way), and with ``parse`` every line it
    refuses, are skipped; the file gets one ``logging`` warning (logger ``maeltrace.files``)
    when the reading ends, naming the file, how many lines were skipped, and the first line's
    number and reason (then the others' numbers). Lines are split on ``\\n`` only (a JSON
    string may hold U+2028, which ``str.splitlines`` splits on). Memory is bounded by the
    longest line: the file is never read whole.

    Args:
        path: the file.
        parse: turns a line (bytes, without its newline) into the value yielded; raising
            ``ValueError`` (``json.JSONDecodeError`` and ``UnicodeDecodeError`` are ones) or
            ``RecursionError`` means the line is unreadable and skipped. Other errors propagate.
            None yields the lines' bytes.
        on_skip: called with (line number, the line's bytes, why) for each skipped line, for
            a caller that keeps or counts them (`maeltrace replay` copies them aside).
        max_line_bytes: the longest line read; a longer one is skipped like an unreadable
            one without being held in memory whole (``on_skip`` gets its first
            ``max_line_bytes`` bytes). None reads lines of any length.

    Yields:
        (line number counted from 1, the parsed value or the line's bytes without its newline).

    Raises:
        OSError: the file cannot be opened or read (lines before the failure were yielded).
    """
    skipped = _Skipped()
    try:
        with open(path, "rb") as file:
            for number, raw in enumerate(_lines_of(file, max_line_bytes), start=1):
                if isinstance(raw, tuple):
                    head, why = raw
                    skipped.add(number, why)
                    if on_skip is not None:
                        on_skip(number, head, why)
                    continue
                if not raw.endswith(b"\n"):
                    skipped.add(number, _TORN)
                    if on_skip is not None:
                        on_skip(number, raw, _TORN)
                    break
                line = raw[:-1]
                if not line.strip():
                    continue
                if parse is None:
                    yield number, line
                    continue
                try:
                    value = parse(line)
                except _PARSE_ERRORS as err:
                    why = _reason(err)
                    skipped.add(number, why)
                    if on_skip is not None:
                        on_skip(number, line, why)
                    continue
                yield number, value
    finally:
        skipped.warn(path)


def _lines_of(file: BinaryIO, max_bytes: int | None) -> Iterator[bytes | tuple[bytes, str]]:
    """The file's lines with their newlines; a line over ``max_bytes`` comes as (its first
    ``max_bytes`` bytes, why), read past in bounded pieces rather than held whole."""
    if max_bytes is None:
        yield from file
        return
    while True:
        raw = file.readline(max_bytes + 1)
        if not raw:
            return
        if len(raw) <= max_bytes or (raw.endswith(b"\n") and len(raw) == max_bytes + 1):
            yield raw
            continue
        rest = raw
        while rest and not rest.endswith(b"\n"):
            rest = file.readline(1 << 20)
        yield raw[:max_bytes], f"a line over {max_bytes} bytes"


def _reason(err: BaseException) -> str:
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8: {err}"
    if isinstance(err, json.JSONDecodeError):
        return f"not valid JSON: {err}"
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return str(err)[:300] or type(err).__name__


class _Skipped:
    """The skipped lines of one reading, kept in bounded memory for its one warning."""

    def __init__(self) -> None:
        self.count = 0
        self.first: tuple[int, str] | None = None
        self.others: list[int] = []

    def add(self, number: int, why: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = (number, why)
        elif len(self.others) < _NAMED_LINES:
            self.others.append(number)

    def warn(self, path: str | os.PathLike[str]) -> None:
        if self.first is None:
            return
        number, why = self.first
        named = [str(n) for n in self.others] + (["..."] if self.count > 1 + _NAMED_LINES else [])
        also = f"; also line{'s' if len(named) > 1 else ''} {', '.join(named)}" if named else ""
        _log.warning(
            "maeltrace: %s: skipped %d unreadable line%s: line %d: %s%s",
            os.fspath(path),
            self.count,
            "" if self.count == 1 else "s",
            number,
            why,
            also,
        )
