"""Records: a small keyed table on disk, bounded in bytes, for bookkeeping (diskcache)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache

from proxy.cacheio import FAILURES, guarded, written
from proxy.errors import CacheError


class Records:
    """A small table of keyed records on disk, bounded in bytes (the oldest stored go first).

    For bookkeeping that must never stop a request: every failure is a CacheError.
    """

    def __init__(self, directory: Path, *, size_limit: int) -> None:
        try:
            # least-recently-stored: reading a record writes nothing (a full disk still reads).
            self._cache = diskcache.Cache(
                str(directory),
                eviction_policy="least-recently-stored",
                size_limit=size_limit,
                cull_limit=10,
            )
        except FAILURES as exc:
            raise CacheError(f"cannot open the records in {directory}: {exc}") from exc

    def __repr__(self) -> str:
        return "Records()"

    def get(self, key: str) -> Any:
        """The value under `key`, or None."""
        return guarded(self._cache.get, key)

    def set(self, key: str, value: object, *, expire: float | None = None) -> None:
        """Store `value` under `key`, forgotten after `expire` seconds if given."""
        written(self._cache.set, key, value, expire=expire)

    def delete(self, key: str) -> None:
        """Forget the value under `key`, if any."""
        written(self._cache.delete, key)

    def add(self, key: str, value: object) -> None:
        """Store `value` under `key` unless a value is there already."""
        written(self._cache.add, key, value)

    def items(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Every (key, value) whose key starts with `prefix` (keys listed first)."""
        for key in guarded(list, self._cache):
            if isinstance(key, str) and key.startswith(prefix):
                value = self.get(key)
                if value is not None:
                    yield key, value

    def update(self, key: str, change: Callable[[Any], object]) -> None:
        """Replace the value under `key` (None if absent) with change(value), atomically."""

        def run() -> None:
            with self._cache.transact():
                known = self._cache.get(key)
                value = change(known)
                if value is not known:
                    self._cache.set(key, value)

        written(run)

    def volume(self) -> int:
        """Bytes on disk."""
        return int(guarded(self._cache.volume))

    def count(self) -> int:
        """How many records are held."""
        return int(guarded(len, self._cache))

    def prune(self, keep: Callable[[str, Any], bool]) -> int:
        """Drop expired records and those `keep` rejects; returns how many went."""
        dropped = int(written(self._cache.expire))
        for key in guarded(list, self._cache):
            if isinstance(key, str) and not keep(key, self.get(key)):
                dropped += bool(written(self._cache.delete, key))
        return dropped

    def close(self) -> None:
        """Close the SQLite connection of this thread."""
        self._cache.close()
