"""On-disk storage: simple pages with their metadata, files by sha256 (the only diskcache import).

Every method blocks on disk or SQLite; callers on the event loop go through anyio.to_thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import diskcache

from proxy.errors import CacheError
from proxy.models import Page
from proxy.retention import StoredFile, to_prune

log = logging.getLogger("proxy.cache")
USE_RESOLUTION = 60.0  # seconds: a hot file's use is recorded once a minute, not on every hit
_FAILURES = (OSError, sqlite3.Error, diskcache.Timeout)


@dataclass(frozen=True, slots=True)
class StoredPage:
    """A parsed simple page and what is needed to revalidate it."""

    page: Page
    fetched_at: float
    """Wall-clock time (time.time()) GitLab last confirmed this page."""
    etag: str = ""


@dataclass(frozen=True, slots=True)
class FileStats:
    """Counts and bytes held by the file cache."""

    files: int  # pinned ones included
    bytes: int  # on disk, with diskcache's own index
    pages: int
    pinned: int = 0


class _Vanished(Exception):
    """A file's row outlived its bytes (removed by hand); the row has been forgotten."""


class Store:
    """Pages (kept, small) and files (by sha256 in lower-case hex).

    Unpinned files live in `files`, which diskcache keeps under max_size by evicting the
    least recently used; pinned ones live in `pinned`, which has no limit. `meta` records
    each file's size and last use (by `clock`) for prune. Removing or evicting a file
    unlinks it: a reader that has it open reads on (POSIX).
    """

    def __init__(
        self, directory: Path, *, max_size: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.directory = Path(directory)
        self.tmp = self.directory / "tmp"
        self._clock = clock
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            self._pages = self._open_cache("pages", eviction_policy="none", tag_index=True)
            # cull_limit=0: diskcache evicts only when put_file calls cull(), which
            # counts what it removed (for the evictions metric).
            self._files = self._open_cache(
                "files", size_limit=max_size, eviction_policy="least-recently-used", cull_limit=0
            )
            self._pinned = self._open_cache("pinned", eviction_policy="none")
            self._meta = self._open_cache("meta", eviction_policy="none")
        except _FAILURES as exc:
            raise CacheError(f"cannot open the cache in {self.directory}: {exc}") from exc

    def __repr__(self) -> str:
        return f"Store({str(self.directory)!r})"

    def close(self) -> None:
        """Close the SQLite connections of this thread."""
        for cache in (self._pages, self._files, self._pinned, self._meta):
            cache.close()

    # -- pages -------------------------------------------------------------------------

    @staticmethod
    def page_key(scope_key: str, name: str, representation: str) -> str:
        """The key of one page: scope, normalized name ("" for the index), representation."""
        return f"{scope_key}|{name}|{representation}"

    def get_page(self, key: str) -> StoredPage | None:
        """The stored page under `key`, or None."""
        value: Any = self._guard(self._pages.get, key)
        return value if isinstance(value, StoredPage) else None

    def put_page(self, key: str, stored: StoredPage, *, name: str) -> None:
        """Store a page, tagged with its normalized name so uploads can drop it."""
        self._guard(self._pages.set, key, stored, tag=name)

    def drop_pages(self, name: str) -> int:
        """Drop every page of `name` in every scope, and every index page; returns the count."""
        dropped: int = self._guard(self._pages.evict, name)
        dropped += self._guard(self._pages.evict, "")
        return dropped

    def drop_all_pages(self) -> int:
        """Drop every stored page."""
        dropped: int = self._guard(self._pages.clear)
        return dropped

    # -- files -------------------------------------------------------------------------

    def has_file(self, sha256: str) -> bool:
        """True when the file is held, pinned or not (does not count as a use)."""
        return self.is_pinned(sha256) or bool(self._guard(self._files.__contains__, sha256))

    def is_pinned(self, sha256: str) -> bool:
        """True when the file is held and pinned."""
        return bool(self._guard(self._pinned.__contains__, sha256))

    def held(self, sha256s: frozenset[str]) -> frozenset[str]:
        """The subset of `sha256s` the cache holds."""
        return frozenset(sha for sha in sha256s if self.has_file(sha))

    def open_file(self, sha256: str) -> IO[bytes] | None:
        """An open handle on the file, or None; counts as a use for eviction and prune."""
        try:
            handle = self._open(sha256)
        except _Vanished:
            return None
        if handle is not None:
            self._record_use(sha256, os.fstat(handle.fileno()).st_size)
        return handle

    def put_file(self, sha256: str, path: Path, *, pinned: bool = False) -> int:
        """Publish a verified file (pinned: never evicted); readers see all of it or nothing.

        Returns how many least recently used files were evicted to stay under max_size.
        """
        pinned = pinned or self.is_pinned(sha256)
        with open(path, "rb") as source:
            # Recorded first: a crash in between leaves a record prune drops, not a file
            # that prune cannot size.
            self._guard(self._meta.set, sha256, (os.fstat(source.fileno()).st_size, self._clock()))
            self._guard((self._pinned if pinned else self._files).set, sha256, source, read=True)
        if pinned:
            self._guard(self._files.delete, sha256)
        evicted: int = self._guard(self._files.cull)
        return evicted

    def pin(self, sha256: str) -> bool:
        """Exempt a held file from eviction and prune (copies it once); False if not held."""
        return self.is_pinned(sha256) or self._move(sha256, self._files, self._pinned)

    def unpin(self, sha256: str) -> bool:
        """Make a pinned file evictable again (copies it once); False if it was not pinned."""
        return self._move(sha256, self._pinned, self._files)

    def remove(self, sha256: str) -> bool:
        """Forget a file, pinned or not; a reader that has it open reads on. False if not held."""
        removed = [bool(self._guard(cache.delete, sha256)) for cache in (self._files, self._pinned)]
        self._guard(self._meta.delete, sha256)
        return any(removed)

    def iter_files(self) -> Iterator[StoredFile]:
        """Every held file, least recently used first (a file without a record: as used now)."""
        pinned = {key for key in self._guard(list, self._pinned) if isinstance(key, str)}
        unpinned = [key for key in self._guard(list, self._files) if isinstance(key, str)]
        found = []
        for sha256 in [*pinned, *(key for key in unpinned if key not in pinned)]:
            record = self._record(sha256)
            if record is not None:
                found.append(StoredFile(sha256, *record, pinned=sha256 in pinned))
        return iter(sorted(found, key=lambda file: file.last_used))

    def verify(self, sha256: str) -> bool:
        """Re-hash the file: True when held and intact; a corrupt one is dropped."""
        return self.check(sha256) is None and self.has_file(sha256)

    def check(self, sha256: str) -> str | None:
        """Re-hash the file: why it cannot be served (it is then dropped), or None.

        None also when it is not held. Reading counts as a use in diskcache's eviction
        order (not for prune): checking in iter_files() order keeps that order.
        """
        try:
            handle = self._open(sha256)
        except _Vanished:
            self.remove(sha256)
            return "missing from disk"
        if handle is None:
            return None
        digest = hashlib.sha256()
        try:
            with handle:
                while chunk := handle.read(1024 * 1024):
                    digest.update(chunk)
        except OSError as exc:
            problem: str | None = f"cannot be read ({exc.strerror})"
        else:
            problem = None if digest.hexdigest() == sha256 else f"hashes to {digest.hexdigest()}"
        if problem is not None:
            self.remove(sha256)
        return problem

    def prune(
        self,
        older_than: float | None = None,
        to_size: int | None = None,
        *,
        on_remove: Callable[[StoredFile], object] | None = None,
    ) -> tuple[int, int]:
        """Remove unpinned files unused for over `older_than` seconds, then the least recently
        used until all files (pinned ones count) take at most `to_size` bytes.

        Returns the (files, bytes) removed; `on_remove` is called with each.
        """
        now, files, size = self._clock(), 0, 0
        held = list(self.iter_files())
        for file in to_prune(held, now=now, older_than=older_than, to_size=to_size):
            if self.remove(file.sha256):
                files, size = files + 1, size + file.size
                if on_remove is not None:
                    on_remove(file)
        # Records of files diskcache evicted (it does not say which) go too.
        for key in self._guard(list, self._meta):
            if isinstance(key, str) and not self.has_file(key):
                self._guard(self._meta.delete, key)
        return files, size

    def stats(self) -> FileStats:
        """How many files (and of them pinned) and bytes are held, and how many pages."""
        pinned = len(self._pinned)
        return FileStats(
            files=len(self._files) + pinned,
            bytes=int(self._files.volume() + self._pinned.volume()),
            pages=len(self._pages),
            pinned=pinned,
        )

    # -- internals ---------------------------------------------------------------------

    def _open_cache(self, name: str, **settings: object) -> Any:
        return diskcache.Cache(str(self.directory / name), **settings)

    def _open(self, sha256: str) -> IO[bytes] | None:
        handle = self._open_in(self._pinned, sha256)
        return handle if handle is not None else self._open_in(self._files, sha256)

    def _open_in(self, cache: Any, sha256: str) -> IO[bytes] | None:
        handle: Any = self._guard(cache.get, sha256, read=True)
        if handle is None and self._guard(cache.__contains__, sha256):
            # diskcache answers None when the row outlived its file: forget the row.
            self._guard(cache.delete, sha256)
            raise _Vanished(sha256)
        return handle if handle is not None and not isinstance(handle, bytes) else None

    def _move(self, sha256: str, source: Any, target: Any) -> bool:
        """Copy a file into `target`, then drop it from `source`: it is held throughout."""
        try:
            handle = self._open_in(source, sha256)
        except _Vanished:
            return False
        if handle is None:
            return False
        with handle:
            self._guard(target.set, sha256, handle, read=True)
        self._guard(source.delete, sha256)
        return True

    def _record(self, sha256: str) -> tuple[int, float] | None:
        """(size, last use) of a held file, recording it as used now if it has no record."""
        record: Any = self._guard(self._meta.get, sha256)
        if record is None:  # stored by an older version, or its record was lost to a race
            handle = self.open_file(sha256)  # records it
            if handle is None:
                return None
            handle.close()
            record = self._guard(self._meta.get, sha256)
        return None if record is None else (int(record[0]), float(record[1]))

    def _record_use(self, sha256: str, size: int) -> None:
        now = self._clock()
        try:
            known: Any = self._meta.get(sha256)
            if not (known and known[0] == size and now - known[1] < USE_RESOLUTION):
                self._meta.set(sha256, (size, now))
        except _FAILURES as exc:  # bookkeeping must not fail a hit (a full disk refuses it)
            log.warning("cannot record the use of %s: %s", sha256, exc)

    def _guard(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except _FAILURES as exc:
            raise CacheError(f"cache I/O failed: {exc}") from exc


class Grants:
    """What GitLab has let callers read, kept across restarts: which files each scope
    listed or served (scope binding) and when a hashed credential was last accepted
    for a scope (passthrough). Holds no credential, only keyed hashes.
    """

    def __init__(self, directory: Path) -> None:
        try:
            self._cache = diskcache.Cache(str(Path(directory) / "access"), eviction_policy="none")
        except (OSError, diskcache.Timeout) as exc:
            raise CacheError(f"cannot open the access records in {directory}: {exc}") from exc

    def __repr__(self) -> str:
        return "Grants()"

    def salt(self) -> bytes:
        """A random secret for this cache, made once; salts the credential hashes."""
        value = self._cache.get("salt")
        if not isinstance(value, bytes):
            self._cache.add("salt", os.urandom(32))
            value = self._cache.get("salt")
        assert isinstance(value, bytes)
        return value

    def bind(self, scope_key: str, shas: Iterable[str]) -> None:
        """Record that `scope_key`'s GitLab answers listed or served these files."""
        with self._cache.transact():
            for sha in shas:
                self._cache.set(f"bound|{scope_key}|{sha}", True)

    def is_bound(self, scope_key: str, sha256: str) -> bool:
        """Whether this file was listed or served through this scope."""
        return f"bound|{scope_key}|{sha256}" in self._cache

    def remember(self, credential: str, when: float) -> None:
        """GitLab accepted this (hashed) credential for its scope at `when`."""
        self._cache.set(f"vouched|{credential}", when)

    def remembered(self, credential: str) -> float | None:
        """When GitLab last accepted this (hashed) credential, or None."""
        value = self._cache.get(f"vouched|{credential}")
        return float(value) if isinstance(value, int | float) else None

    def close(self) -> None:
        """Close the SQLite connection of this thread."""
        self._cache.close()
