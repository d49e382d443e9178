"""Read an offline W&B run back from its ``.wandb`` file, to check what a test logged.

wandb 0.31 ships no reader of its own (the Python ``DataStore`` went with the move to
``wandb-core``), so the framing is parsed here: a 7-byte header (``:W&B``, ``0xBEE1``, version
0), then LevelDB log framing in 32 KiB blocks counted from the file's start. Each record has a
``<IHB`` header (CRC-32 of the type byte and the data, length, type: 1 full, 2 first, 3 middle,
4 last); a block's tail shorter than a header is zero padding. Each reassembled payload is a
``wandb.proto.wandb_internal_pb2.Record``.

    run = read_offline_run(tmp_path)
    assert run.history == [{"batch": 0.1, "_step": 0, ...}]
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "OfflineRun",
    "WandbFileError",
    "find_run_file",
    "frames",
    "read_offline_run",
    "read_records",
]

HEADER = struct.Struct("<4sHB")
MAGIC = b":W&B"
HEADER_IDENT = 0xBEE1
HEADER_VERSION = 0
BLOCK_SIZE = 32 * 1024
RECORD_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """The file is not a ``.wandb`` log, or it is damaged."""


def find_run_file(folder: str | os.PathLike[str]) -> Path:
    """The one ``run-*.wandb`` under ``<folder>/wandb/offline-run-*/`` (``folder`` being
    ``WANDB_DIR``), or under ``folder`` itself when it is the run's own folder.

    Raises:
        WandbFileError: there is none, or more than one.
    """
    root = Path(folder)
    found = sorted(root.glob("wandb/offline-run-*/run-*.wandb")) or sorted(root.glob("run-*.wandb"))
    if len(found) != 1:
        raise WandbFileError(f"expected one offline run file under {root}, found {found}")
    return found[0]


def frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The ``(type, data)`` of each framing record of a ``.wandb`` file's bytes, checked.

    Raises:
        WandbFileError: a bad header, checksum or length.
    """
    if len(data) < HEADER.size:
        raise WandbFileError("file shorter than the .wandb header")
    magic, ident, version = HEADER.unpack_from(data)
    if (magic, ident, version) != (MAGIC, HEADER_IDENT, HEADER_VERSION):
        raise WandbFileError(f"not a .wandb file (header {data[: HEADER.size]!r})")
    position = HEADER.size
    while position < len(data):
        room = BLOCK_SIZE - position % BLOCK_SIZE
        if room < RECORD_HEADER.size:
            position += room  # zero padding at the block's end
            continue
        if position + RECORD_HEADER.size > len(data):
            raise WandbFileError(f"truncated record header at byte {position}")
        crc, length, kind = RECORD_HEADER.unpack_from(data, position)
        start = position + RECORD_HEADER.size
        chunk = data[start : start + length]
        if len(chunk) != length or length > room - RECORD_HEADER.size:
            raise WandbFileError(f"record at byte {position} runs past its block or the file")
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise WandbFileError(f"bad checksum of the record at byte {position}")
        yield kind, chunk
        position = start + length


def _payloads(data: bytes) -> Iterator[bytes]:
    pending: bytearray | None = None
    for kind, chunk in frames(data):
        if kind == FULL and pending is None:
            yield chunk
        elif kind == FIRST and pending is None:
            pending = bytearray(chunk)
        elif kind == MIDDLE and pending is not None:
            pending += chunk
        elif kind == LAST and pending is not None:
            yield bytes(pending + chunk)
            pending = None
        else:
            raise WandbFileError(f"record type {kind} out of order")
    if pending is not None:
        raise WandbFileError("the file ends inside a record")


def read_records(path: str | os.PathLike[str]) -> list[Any]:
    """Every ``wandb_internal_pb2.Record`` of a ``.wandb`` file, in order.

    Raises:
        WandbFileError: the file is not a ``.wandb`` log, or it is damaged.
    """
    from wandb.proto import wandb_internal_pb2

    records = []
    for payload in _payloads(Path(path).read_bytes()):
        # The module re-exports the build for the installed protobuf; mypy sees no names.
        record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
        record.ParseFromString(payload)
        records.append(record)
    return records


def _nested_key(item: Any) -> str:
    # An item names its key either by ``key`` or, for nested keys, by ``nested_key`` parts.
    return str(item.key) if item.key else "/".join(item.nested_key)


@dataclass
class OfflineRun:
    """What a ``.wandb`` file holds, decoded.

    Attributes:
        path: the file.
        run_id: the run's W&B id; name: its display name; project: its project.
        history: one dict per history row (per ``wandb.log`` step), values decoded from JSON.
        summary: the summary after every update, values decoded from JSON.
        config: the config after every update, values decoded from JSON.
        artifacts: the logged artifacts' records (``name``, ``type``, ``manifest``...).
        records: every record, in order.
    """

    path: Path
    run_id: str = ""
    name: str = ""
    project: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Any] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)

    def artifact_files(self, name: str | None = None) -> list[str]:
        """The paths inside the logged artifacts (of the one named ``name``, if given)."""
        return [
            entry.path
            for artifact in self.artifacts
            if name is None or artifact.name == name
            for entry in artifact.manifest.contents
        ]


def read_offline_run(folder_or_file: str | os.PathLike[str], wait_s: float = 30.0) -> OfflineRun:
    """Decodes a finished offline run: a ``.wandb`` file, or the folder `find_run_file`
    searches.

    ``run.finish()`` returns before W&B's service has written the whole file, so this waits up
    to ``wait_s`` seconds for the file to hold the run's ``exit`` record and end on a record's
    end.

    Raises:
        WandbFileError: no single run file, or no complete one within ``wait_s``.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            run = _decode(folder_or_file)
        except WandbFileError as exc:
            problem = str(exc)
        else:
            if any(r.WhichOneof("record_type") == "exit" for r in run.records):
                return run
            problem = f"{run.path} has no exit record yet"
        if time.monotonic() > deadline:
            raise WandbFileError(f"no finished run after {wait_s:g} s: {problem}")
        time.sleep(0.05)


def _decode(folder_or_file: str | os.PathLike[str]) -> OfflineRun:
    target = Path(folder_or_file)
    path = target if target.is_file() else find_run_file(target)
    run = OfflineRun(path=path, records=read_records(path))
    for record in run.records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id = record.run.run_id
            run.name = record.run.display_name
            run.project = record.run.project
            for item in record.run.config.update:
                run.config[_nested_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append(
                {_nested_key(item): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_nested_key(item)] = json.loads(item.value_json)
            for item in record.summary.remove:
                run.summary.pop(_nested_key(item), None)
        elif kind == "config":
            for item in record.config.update:
                run.config[_nested_key(item)] = json.loads(item.value_json)
            for item in record.config.remove:
                run.config.pop(_nested_key(item), None)
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
    return run
