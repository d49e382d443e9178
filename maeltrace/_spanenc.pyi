"""Types of the compiled span encoder; its behaviour is that of maeltrace.otel._encode's Python
encoder, byte for byte."""

from array import array
from collections.abc import Mapping, Sequence
from typing import Any

def group(
    key_id: Any,
    seq: Any,
    parent_seq: Any,
    start_ns: Any,
    end_ns: Any,
    status: Any,
    trace: Any,
    device_ns: Any,
    device_start_ns: Any,
    thread: Any,
    trace_key: int,
    /,
) -> list[tuple[int, int, int, bytes]]: ...
def merge(
    datas: Sequence[bytes], device: Mapping[int, tuple[int, int, int]], device_offset: int, /
) -> tuple[bytes, ...]: ...
def released_ns() -> int: ...
def request(spans: Sequence[bytes], resource_field: bytes, scope_field: bytes, /) -> bytes: ...
def json_line(spans: Sequence[bytes], prefix: bytes, suffix: bytes, /) -> bytes: ...
def span_fields(spans: Sequence[bytes], /) -> bytes: ...
def sort_rows(rows: bytes, /) -> bytes: ...
def special_rows(rows: bytes, trace_key: int, roots: bool, /) -> list[int]: ...
def template_keys(rows: bytes, /) -> set[int]: ...
def encode(
    rows: bytes,
    json: bool,
    trace: bytes,
    run_parent: bytes,
    base: int,
    offset: int,
    counters: array[int],
    templates: Mapping[int, tuple[bytes, bytes, bytes, bytes]],
    specials: Sequence[tuple[int, bytes | None, bytes | None, bytes, bytes]],
    gpu_clock: bytes,
    /,
) -> list[bytes]: ...
