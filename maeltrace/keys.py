"""Region keys: the `TimeType` names of the seed, or any non-empty string."""

from __future__ import annotations

import enum

__all__ = ["Key", "TimeType", "canonical_key", "key_label"]


class TimeType(enum.StrEnum):
    """The seed's region types.

    Members are strings (``TimeType.EPOCH == "epoch"``), so a string works anywhere a
    `TimeType` does and both name the same key. `ALL` exists for Deep500 compatibility and, as
    there, cannot be timed.
    """

    EPOCH = "epoch"
    """One complete pass over a dataset."""
    BATCH = "batch"
    """One mini-batch."""
    FORWARD = "forward"
    """Forward propagation for one mini-batch."""
    BACKWARD = "backward"
    """Backward propagation for one mini-batch."""
    COMM = "comm"
    """Communication during one mini-batch."""
    IO = "io"
    """Loading the data of one mini-batch."""
    OTHER = "other"
    """A catch-all for a user-defined region."""
    ALL = "all"
    """Deep500's special value; refused by `Timer.start` and `Timer.end`."""

    @property
    def label(self) -> str:
        """How the seed's tables name the row: ``Epoch``, ``IO``, ``Forward``..."""
        return _LABELS[self]


_LABELS = {
    member: ("IO" if member is TimeType.IO else member.name.capitalize()) for member in TimeType
}

Key = TimeType | str
"""What `Timer` accepts as a region key."""


def canonical_key(key: object) -> TimeType | str:
    """Validates a key on its first use and returns the form it is stored under.

    A string equal to a `TimeType` value becomes that member, so ``"epoch"`` and
    ``TimeType.EPOCH`` are one key.

    Raises:
        TypeError: the key is not a string.
        ValueError: the key is empty or `TimeType.ALL`.
    """
    if not isinstance(key, str):
        raise TypeError(
            f"a region key must be a TimeType or a str, not {type(key).__name__} ({key!r})"
        )
    if not key:
        raise ValueError("a region key must be a non-empty string")
    member = TimeType._value2member_map_.get(key)
    if member is TimeType.ALL:
        raise ValueError("cannot use TimeType.ALL as a region key")
    return member if isinstance(member, TimeType) else key


def key_label(key: TimeType | str) -> str:
    """The row label of a key in the reports."""
    return key.label if isinstance(key, TimeType) else key
