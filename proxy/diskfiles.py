"""The `local` files backend: verified files on local disk (diskcache), by sha256."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from proxy.cacheio import FAILURES, Linked, guarded, open_cache, set_tidily, written
from proxy.errors import CacheError
from proxy.retention import StoredFile
from proxy.storage import USE_RESOLUTION, Opened, local_opened

log = logging.getLogger("proxy.cache")


class _Vanished(Exception):
    """A file's row outlived its bytes (removed by hand); the row has been forgotten."""


class DiskFiles:
    """Files on local disk (diskcache), the `local` storage backend (storage.Files).

    Unpinned files live in `files`, pinned ones in `pinned`, which has no limit. `meta`
    records each file's size and last use (by `clock`, once per USE_RESOLUTION). Serving a
    cached file writes nothing but that record, so a full disk still serves what it holds.
    Removing a file unlinks it: a reader that has it open reads on (POSIX).
    """

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self._clock = clock
        self._use_failing = False
        try:
            # Evicted by Store from the `meta` records: diskcache's own LRU would write
            # to SQLite on every read, and a full disk refuses that write.
            self._files = open_cache(self.directory, "files", eviction_policy="none", cull_limit=0)
            self._pinned = open_cache(self.directory, "pinned", eviction_policy="none")
            self._meta = open_cache(self.directory, "meta", eviction_policy="none")
        except FAILURES as exc:
            raise CacheError(f"cannot open the cache in {self.directory}: {exc}") from exc

    def __repr__(self) -> str:
        return f"DiskFiles({str(self.directory)!r})"

    def close(self) -> None:
        """Close the SQLite connections of this thread."""
        for cache in (self._files, self._pinned, self._meta):
            cache.close()

    def has(self, sha256: str) -> bool:
        """True when the file is held, pinned or not (does not count as a use)."""
        return self.is_pinned(sha256) or bool(guarded(self._files.__contains__, sha256))

    def is_pinned(self, sha256: str) -> bool:
        """True when the file is held and pinned."""
        return bool(guarded(self._pinned.__contains__, sha256))

    def open(self, sha256: str, *, use: bool = True) -> IO[bytes] | None:
        """An open handle on the file, or None (a row that outlived its file is forgotten)."""
        try:
            handle = self._open(sha256)
        except _Vanished:
            return None
        if handle is not None and use:
            self._record_use(sha256, os.fstat(handle.fileno()).st_size)
        return handle

    def open_range(self, sha256: str) -> Opened | None:
        """The file opened for serving: one pread per HIT_CHUNK."""
        handle = self.open(sha256)
        return None if handle is None else local_opened(handle)

    def presign(self, sha256: str, *, filename: str, expires: int) -> str | None:
        """None: a local file has no URL of its own."""
        return None

    def commit(self, sha256: str, path: Path, *, pinned: bool) -> None:
        """Publish a verified file; readers see all of it or nothing."""
        pinned = pinned or self.is_pinned(sha256)
        # Recorded first: a crash in between leaves a record prune drops, not a file
        # that prune cannot size.
        written(self._meta.set, sha256, (guarded(os.stat, path).st_size, self._clock()))
        set_tidily(self._pinned if pinned else self._files, sha256, Linked(Path(path)), read=True)
        if pinned:
            written(self._files.delete, sha256)

    def pin(self, sha256: str) -> bool:
        """Move a held file into the pinned cache; False if the file is not held."""
        if self.is_pinned(sha256):
            return True
        try:
            handle = self._open_in(self._files, sha256)
        except _Vanished:
            return False
        if handle is None:
            return False
        with handle:
            set_tidily(self._pinned, sha256, handle, read=True)
        written(self._files.delete, sha256)
        return True

    def delete(self, sha256: str) -> bool:
        """Forget a file, pinned or not; False if not held."""
        removed = [bool(written(cache.delete, sha256)) for cache in (self._files, self._pinned)]
        written(self._meta.delete, sha256)
        return any(removed)

    def list(self) -> Iterator[StoredFile]:
        """Every held file (a file without a record: as used now)."""
        pinned = {key for key in guarded(list, self._pinned) if isinstance(key, str)}
        unpinned = [key for key in guarded(list, self._files) if isinstance(key, str)]
        for sha256 in [*pinned, *(key for key in unpinned if key not in pinned)]:
            record = self._record(sha256)
            if record is not None:
                yield StoredFile(sha256, *record, pinned=sha256 in pinned)

    def volume(self) -> int:
        """Bytes of the unpinned files, with diskcache's own index."""
        return int(guarded(self._files.volume))

    def counts(self) -> tuple[int, int, int]:
        """(files, bytes, pinned) held."""
        pinned = len(self._pinned)
        size = int(self._files.volume() + self._pinned.volume())
        return len(self._files) + pinned, size, pinned

    def tidy(self) -> None:
        """Drop records whose file is gone (removed by hand, or a crash in commit)."""
        for key in guarded(list, self._meta):
            if isinstance(key, str) and not self.has(key):
                written(self._meta.delete, key)

    def _open(self, sha256: str) -> IO[bytes] | None:
        handle = self._open_in(self._pinned, sha256)
        return handle if handle is not None else self._open_in(self._files, sha256)

    def _open_in(self, cache: Any, sha256: str) -> IO[bytes] | None:
        handle: Any = guarded(cache.get, sha256, read=True)
        if handle is None and guarded(cache.__contains__, sha256):
            # diskcache answers None when the row outlived its file: forget the row.
            written(cache.delete, sha256)
            raise _Vanished(sha256)
        return handle if handle is not None and not isinstance(handle, bytes) else None

    def _record(self, sha256: str) -> tuple[int, float] | None:
        """(size, last use) of a held file, recording it as used now if it has no record."""
        record: Any = guarded(self._meta.get, sha256)
        if record is None:  # stored by an older version, or its record was lost to a race
            handle = self.open(sha256)  # records it
            if handle is None:
                return None
            handle.close()
            record = guarded(self._meta.get, sha256)
        return None if record is None else (int(record[0]), float(record[1]))

    def _record_use(self, sha256: str, size: int) -> None:
        now = self._clock()
        try:
            known: Any = self._meta.get(sha256)
            if not (known and known[0] == size and now - known[1] < USE_RESOLUTION):
                self._meta.set(sha256, (size, now))
        except FAILURES as exc:  # bookkeeping must not fail a hit (a full disk refuses it)
            # Once, not on every hit, until a use is recorded again.
            log.log(
                logging.DEBUG if self._use_failing else logging.WARNING,
                "cannot record the use of %s: %s",
                sha256,
                exc,
            )
            self._use_failing = True
        else:
            self._use_failing = False
