"""Which cached files prune lets go: the least recently used first, pinned ones never."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One held file, as prune and the operator commands see it."""

    sha256: str  # lower-case hex
    size: int  # bytes
    last_used: float  # the Store's clock at its last put_file or open_file
    pinned: bool


def to_prune(
    held: Iterable[StoredFile], *, now: float, older_than: float | None, to_size: int | None
) -> Iterator[StoredFile]:
    """The unpinned files unused for over `older_than` seconds, then the least recently used
    until all files (pinned ones count) take at most `to_size` bytes; oldest first.
    """
    files = sorted(held, key=lambda file: file.last_used)
    total = sum(file.size for file in files)
    for file in files:
        if file.pinned:
            continue
        old = older_than is not None and now - file.last_used > older_than
        if not old and (to_size is None or total <= to_size):
            return  # the rest were used more recently: neither old nor needed to shrink
        total -= file.size
        yield file
