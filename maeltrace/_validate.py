"""Reading what other runs, versions, people and broken disks wrote: bounded JSON, and typed
fields checked where they are read, each failure a `FormatError` naming the place."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NoReturn

from maeltrace.errors import FormatError

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "Checker",
    "at",
    "check_acyclic",
    "loads",
    "read_json",
]

MAX_DEPTH = 32
"""The deepest nesting of arrays and objects any maeltrace format has (stats.json has 4), with
room to spare; anything deeper is refused before code walks it."""

MAX_INT_DIGITS = 20
"""Digits of the longest integer a maeltrace file holds (a nanosecond count fits in 19); a
longer one is refused while parsing, before it can overflow a float conversion."""


def at(where: str, part: str | int) -> str:
    """The place ``part`` inside ``where``: ``at("regions", 2)`` is ``regions[2]``,
    ``at("regions[2]", "count")`` is ``regions[2].count``."""
    if isinstance(part, int):
        return f"{where}[{part}]"
    return f"{where}.{part}" if where else part


def _refuse_constant(token: str) -> NoReturn:
    raise ValueError(f"{token} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of a float's range")
    return value


def loads(
    data: str | bytes, source: str, *, max_depth: int = MAX_DEPTH, allow_nan: bool = False
) -> Any:
    """``data`` parsed as strict JSON: no NaN or Infinity, no integer longer than
    `MAX_INT_DIGITS`, no float outside a float's range, nothing nested deeper than
    ``max_depth``.

    ``allow_nan`` takes the ``NaN``, ``Infinity`` and ``-Infinity`` tokens that Python's
    ``json.dumps`` writes by default (for files maeltrace wrote that way, whose values may
    be undefined); numbers out of a float's range are refused still.

    Raises:
        FormatError: it is not such JSON; the message names ``source``.
    """
    try:
        value = json.loads(
            data,
            parse_constant=float if allow_nan else _refuse_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except RecursionError:
        raise FormatError(source, "", f"nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError as exc:
        raise FormatError(source, "", f"not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise FormatError(source, f"line {exc.lineno} column {exc.colno}", exc.msg) from None
    except ValueError as exc:  # from the parse hooks
        raise FormatError(source, "", str(exc)) from None
    _check_depth(value, source, max_depth)
    return value


def _check_depth(value: Any, source: str, max_depth: int) -> None:
    """Walks ``value`` without recursion and refuses it past ``max_depth`` levels."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            raise FormatError(source, "", f"nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def read_json(
    path: str | os.PathLike[str],
    *,
    max_bytes: int,
    max_depth: int = MAX_DEPTH,
    source: str | None = None,
) -> Any:
    """The JSON value in ``path``, read as `loads` reads it, refusing a file larger than
    ``max_bytes`` before reading it.

    Args:
        path: the file.
        max_bytes: the largest file accepted.
        max_depth: the deepest nesting accepted.
        source: how messages name the file; default its path.

    Raises:
        FormatError: the file is missing, unreadable, too large or not such JSON.
    """
    name = source or str(path)
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > max_bytes:
                raise FormatError(name, "", f"{size} bytes, more than the {max_bytes} accepted")
            data = file.read(max_bytes + 1)
    except FileNotFoundError:
        raise FormatError(name, "", "missing") from None
    except OSError as exc:
        raise FormatError(name, "", f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # grew while being read, or a file without a size
        raise FormatError(name, "", f"more than the {max_bytes} bytes accepted")
    return loads(data, name, max_depth=max_depth)


class Checker:
    """Typed reads of a parsed value, each failure a `FormatError` naming ``source`` and the
    place.

    Args:
        source: the file or request the values come from, as messages name it.
    """

    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> NoReturn:
        """Raises the `FormatError` of ``problem`` at ``where``."""
        raise FormatError(self.source, where, problem)

    def object(self, value: Any, where: str) -> Mapping[str, Any]:
        """``value``, which must be a JSON object."""
        if not isinstance(value, Mapping):
            self.fail(where, f"an object expected, not {_kind(value)}")
        return value

    def list(self, value: Any, where: str, *, max_items: int | None = None) -> list[Any]:
        """``value``, which must be an array of at most ``max_items`` items."""
        if not isinstance(value, list):
            self.fail(where, f"an array expected, not {_kind(value)}")
        if max_items is not None and len(value) > max_items:
            self.fail(where, f"{len(value)} items, more than the {max_items} accepted")
        return value

    def field(self, obj: Mapping[str, Any], name: str, where: str) -> Any:
        """``obj[name]``, which must be there."""
        if name not in obj:
            self.fail(at(where, name), "missing")
        return obj[name]

    def string(self, value: Any, where: str, *, max_length: int = 4096, empty: bool = False) -> str:
        """``value``, which must be a string of at most ``max_length`` characters, and not
        empty unless ``empty``."""
        if not isinstance(value, str):
            self.fail(where, f"a string expected, not {_kind(value)}")
        if not value and not empty:
            self.fail(where, "an empty string")
        if len(value) > max_length:
            self.fail(where, f"a string of {len(value)} characters (at most {max_length})")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        """``value``, which must be true or false (not a number or a string)."""
        if not isinstance(value, bool):
            self.fail(where, f"true or false expected, not {_kind(value)}")
        return value

    def integer(
        self, value: Any, where: str, *, minimum: int | None = 0, maximum: int | None = None
    ) -> int:
        """``value``, which must be a whole number in ``[minimum, maximum]`` (a JSON number
        with a fraction, a boolean or a string is not one)."""
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"a whole number expected, not {_kind(value)}")
        self._in_range(value, where, minimum, maximum)
        return value

    def number(
        self,
        value: Any,
        where: str,
        *,
        minimum: float | None = 0.0,
        maximum: float | None = None,
    ) -> float:
        """``value``, which must be a finite number in ``[minimum, maximum]``."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(where, f"a number expected, not {_kind(value)}")
        number = float(value)
        if not math.isfinite(number):
            self.fail(where, f"a finite number expected, not {value!r}")
        self._in_range(number, where, minimum, maximum)
        return number

    def _in_range(
        self, value: float, where: str, minimum: float | None, maximum: float | None
    ) -> None:
        if minimum is not None and value < minimum:
            self.fail(where, f"{_short(value)} is below the least accepted, {minimum}")
        if maximum is not None and value > maximum:
            self.fail(where, f"{_short(value)} is above the most accepted, {maximum}")

    def relative_path(self, value: Any, where: str, folder: Path) -> Path:
        """``folder / value``, where ``value`` must be a relative path that stays inside
        ``folder`` (no absolute path, drive, ``..`` out of it, or link out of it)."""
        text = self.string(value, where, max_length=1024)
        if "\x00" in text:
            self.fail(where, "a path with a NUL character")
        posix, windows = PurePosixPath(text), PureWindowsPath(text)
        if posix.is_absolute() or windows.is_absolute() or windows.drive:
            self.fail(where, f"an absolute path ({text!r}); a path inside the folder expected")
        target = folder / text
        base = folder.resolve()
        resolved = target.resolve()
        if resolved != base and base not in resolved.parents:
            self.fail(where, f"{text!r} leads out of {folder}")
        return target


def check_acyclic(
    parents: Mapping[int, int | None], source: str, where: str = "parent links"
) -> None:
    """Refuses parent links (child to parent) that form a cycle, a node its own parent
    included; links to nodes not in ``parents`` end a chain. Linear in the nodes.

    Raises:
        FormatError: the first node found on a cycle, named in the message.
    """
    done: set[int] = set()
    for start in parents:
        if start in done:
            continue
        path: list[int] = []
        on_path: set[int] = set()
        node: int | None = start
        while node is not None and node in parents and node not in done:
            if node in on_path:
                raise FormatError(source, where, f"{node} is its own ancestor (a cycle)")
            path.append(node)
            on_path.add(node)
            node = parents[node]
        done.update(path)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, int | float):
        return f"the number {_short(value)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
