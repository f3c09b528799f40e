"""On-disk storage: simple pages with their metadata, files by sha256 (the only diskcache import).

Every method blocks on disk or SQLite; callers on the event loop go through anyio.to_thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import starmap
from operator import attrgetter
from pathlib import Path
from typing import IO, Any, Literal

import diskcache

from proxy.changes import Changes
from proxy.errors import CacheError, CacheFull
from proxy.models import Link, Page
from proxy.retention import StoredFile, to_prune
from proxy.storage import Files, Opened, local_opened

log = logging.getLogger("proxy.cache")
SIDE_SHARE = 8
"""Pages, and access records, may each take at most 1/SIDE_SHARE of max_size."""
CULL_SLACK = 64
"""Eviction frees 1/CULL_SLACK of max_size beyond what is needed: it reads every file's
record, so a full cache does that once per so many bytes stored, not for every file."""
USE_RESOLUTION = 60.0  # seconds: a hot file's use is recorded once a minute, not on every hit
_FAILURES = (OSError, sqlite3.Error, diskcache.Timeout)
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""A write refused for want of room: the disk, a quota, or RLIMIT_FSIZE."""


@dataclass(frozen=True, slots=True)
class StoredPage:
    """A parsed simple page and what is needed to revalidate it."""

    page: Page
    fetched_at: float
    """Wall-clock time (time.time()) GitLab last confirmed this page."""
    etag: str = ""

    def __reduce__(self) -> tuple[Any, ...]:
        # Links as plain tuples: a 50,000-link page unpickles in half the time (and
        # pickles in a third) of one dataclass state per link.
        page = self.page
        links = tuple(map(_LINK_FIELDS, page.links))
        return _stored_page, (page.title, page.kind, page.json, links, self.fetched_at, self.etag)


_LINK_FIELDS = attrgetter("path", "text", "fragment", "attrs")


def _stored_page(
    title: str,
    kind: Literal["index", "project"],
    json: bool,
    links: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...],
    fetched_at: float,
    etag: str,
) -> StoredPage:
    page = Page(title, tuple(starmap(Link, links)), kind, json)
    return StoredPage(page, fetched_at, etag)


@dataclass(frozen=True, slots=True)
class FileStats:
    """Counts and bytes held by the cache."""

    files: int  # pinned ones included
    bytes: int  # of files on disk, with diskcache's own index
    pages: int
    pinned: int = 0
    page_bytes: int = 0
    access_records: int = 0
    access_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        """Everything that counts toward max_size."""
        return self.bytes + self.page_bytes + self.access_bytes


@dataclass(frozen=True, slots=True)
class _Linked:
    """A file to become a stored value by a hard link rather than a copy."""

    path: Path


_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP})
"""link() refused: another file system, or one without hard links (then it is copied)."""


class _TidyDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's Disk, able to take back the file of a failed set: diskcache leaves a
    partial copy behind when the disk fills up mid-write, or when its transaction fails.
    A _Linked value is stored by linking its file (no copy) where the file system allows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writing = threading.local()

    def filename(self, key: Any = diskcache.UNKNOWN, value: Any = diskcache.UNKNOWN) -> Any:
        """diskcache's choice of a new file's name, remembered for discard()."""
        name, full_path = super().filename(key, value)
        self._writing.path = full_path
        return name, full_path

    def store(self, value: Any, read: bool, key: Any = diskcache.UNKNOWN) -> Any:
        """diskcache's (size, mode, filename, value) of a value, a _Linked file linked."""
        if not isinstance(value, _Linked):
            return super().store(value, read, key=key)
        filename, full_path = self.filename(key, value)
        for attempt in range(10):  # as diskcache's own write: a cull may remove the folder
            os.makedirs(os.path.dirname(full_path), exist_ok=True)
            try:
                os.link(value.path, full_path)
            except FileNotFoundError:
                if attempt == 9 or not value.path.exists():
                    raise
                continue
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                with open(value.path, "rb") as source:
                    return super().store(source, True, key=key)
            return os.stat(full_path).st_size, diskcache.core.MODE_BINARY, filename, None
        raise AssertionError("unreachable")  # pragma: no cover

    def begin(self) -> None:
        """Forget the file of this thread's previous set."""
        self._writing.path = None

    def discard(self) -> None:
        """Remove the file this thread's failed set was writing, if any."""
        path = getattr(self._writing, "path", None)
        self._writing.path = None
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


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
            self._files = _open_cache(self.directory, "files", eviction_policy="none", cull_limit=0)
            self._pinned = _open_cache(self.directory, "pinned", eviction_policy="none")
            self._meta = _open_cache(self.directory, "meta", eviction_policy="none")
        except _FAILURES as exc:
            raise CacheError(f"cannot open the cache in {self.directory}: {exc}") from exc

    def __repr__(self) -> str:
        return f"DiskFiles({str(self.directory)!r})"

    def close(self) -> None:
        """Close the SQLite connections of this thread."""
        for cache in (self._files, self._pinned, self._meta):
            cache.close()

    def has(self, sha256: str) -> bool:
        """True when the file is held, pinned or not (does not count as a use)."""
        return self.is_pinned(sha256) or bool(_guarded(self._files.__contains__, sha256))

    def is_pinned(self, sha256: str) -> bool:
        """True when the file is held and pinned."""
        return bool(_guarded(self._pinned.__contains__, sha256))

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
        _written(self._meta.set, sha256, (_guarded(os.stat, path).st_size, self._clock()))
        _set(self._pinned if pinned else self._files, sha256, _Linked(Path(path)), read=True)
        if pinned:
            _written(self._files.delete, sha256)

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
            _set(self._pinned, sha256, handle, read=True)
        _written(self._files.delete, sha256)
        return True

    def delete(self, sha256: str) -> bool:
        """Forget a file, pinned or not; False if not held."""
        removed = [bool(_written(cache.delete, sha256)) for cache in (self._files, self._pinned)]
        _written(self._meta.delete, sha256)
        return any(removed)

    def list(self) -> Iterator[StoredFile]:
        """Every held file (a file without a record: as used now)."""
        pinned = {key for key in _guarded(list, self._pinned) if isinstance(key, str)}
        unpinned = [key for key in _guarded(list, self._files) if isinstance(key, str)]
        for sha256 in [*pinned, *(key for key in unpinned if key not in pinned)]:
            record = self._record(sha256)
            if record is not None:
                yield StoredFile(sha256, *record, pinned=sha256 in pinned)

    def volume(self) -> int:
        """Bytes of the unpinned files, with diskcache's own index."""
        return int(_guarded(self._files.volume))

    def counts(self) -> tuple[int, int, int]:
        """(files, bytes, pinned) held."""
        pinned = len(self._pinned)
        size = int(self._files.volume() + self._pinned.volume())
        return len(self._files) + pinned, size, pinned

    def tidy(self) -> None:
        """Drop records whose file is gone (removed by hand, or a crash in commit)."""
        for key in _guarded(list, self._meta):
            if isinstance(key, str) and not self.has(key):
                _written(self._meta.delete, key)

    def _open(self, sha256: str) -> IO[bytes] | None:
        handle = self._open_in(self._pinned, sha256)
        return handle if handle is not None else self._open_in(self._files, sha256)

    def _open_in(self, cache: Any, sha256: str) -> IO[bytes] | None:
        handle: Any = _guarded(cache.get, sha256, read=True)
        if handle is None and _guarded(cache.__contains__, sha256):
            # diskcache answers None when the row outlived its file: forget the row.
            _written(cache.delete, sha256)
            raise _Vanished(sha256)
        return handle if handle is not None and not isinstance(handle, bytes) else None

    def _record(self, sha256: str) -> tuple[int, float] | None:
        """(size, last use) of a held file, recording it as used now if it has no record."""
        record: Any = _guarded(self._meta.get, sha256)
        if record is None:  # stored by an older version, or its record was lost to a race
            handle = self.open(sha256)  # records it
            if handle is None:
                return None
            handle.close()
            record = _guarded(self._meta.get, sha256)
        return None if record is None else (int(record[0]), float(record[1]))

    def _record_use(self, sha256: str, size: int) -> None:
        now = self._clock()
        try:
            known: Any = self._meta.get(sha256)
            if not (known and known[0] == size and now - known[1] < USE_RESOLUTION):
                self._meta.set(sha256, (size, now))
        except _FAILURES as exc:  # bookkeeping must not fail a hit (a full disk refuses it)
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


class Store:
    """Pages (kept, small) and verified files (by sha256 in lower-case hex) in `files`,
    any storage.Files: DiskFiles under `directory` unless given.

    Files are evicted by their last use, least recently used first, when a commit takes
    files, pages and access records past max_size; prune does the same on demand.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_size: int,
        clock: Callable[[], float] = time.time,
        files: Files | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.tmp = self.directory / "tmp"
        self._clock = clock
        self.max_size = max_size
        self.side_limit = max_size // SIDE_SHARE
        self._page_reads = threading.Lock()
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            self.changes = Changes(self.directory / "changes")
            """Marked after every change a rendered page may depend on (hotpages)."""
            # Pages are stored anew at each revalidation, so the least recently stored go
            # first; reading one writes nothing.
            self._pages = _open_cache(
                self.directory,
                "pages",
                eviction_policy="least-recently-stored",
                size_limit=self.side_limit,
                tag_index=True,
            )
        except _FAILURES as exc:
            raise CacheError(f"cannot open the cache in {self.directory}: {exc}") from exc
        self.files: Files = files if files is not None else DiskFiles(self.directory, clock=clock)
        self.access = Records(self.directory / "access", size_limit=self.side_limit)
        """Access records (see grants.Grants); they count toward max_size like pages."""

    def __repr__(self) -> str:
        return f"Store({str(self.directory)!r})"

    def close(self) -> None:
        """Close the SQLite connections of this thread."""
        self._pages.close()
        self.files.close()
        self.access.close()

    # -- pages -------------------------------------------------------------------------

    @staticmethod
    def page_key(scope_key: str, name: str, representation: str) -> str:
        """The key of one page: scope, normalized name ("" for the index), representation."""
        return f"{scope_key}|{name}|{representation}"

    def get_page(self, key: str) -> StoredPage | None:
        """The stored page under `key`, or None."""
        # One page read at a time: a 50,000-link page takes 0.1 s of the GIL to unpickle,
        # and ten clients reading it at once starved the event loop (and held ten copies).
        with self._page_reads:
            value: Any = _guarded(self._pages.get, key)
        return value if isinstance(value, StoredPage) else None

    def put_page(self, key: str, stored: StoredPage, *, name: str) -> None:
        """Store a page, tagged with its normalized name so uploads can drop it."""
        _set(self._pages, key, stored, tag=name)
        self.changes.pages(name)

    def iter_pages(self) -> Iterator[tuple[str, StoredPage]]:
        """Every stored page with its key (a page dropped while listing is skipped)."""
        for key in _guarded(list, self._pages):
            stored = self.get_page(key) if isinstance(key, str) else None
            if stored is not None:
                yield key, stored

    def page_keys(self) -> list[str]:
        """The key of every stored page (reads no page)."""
        return [key for key in _guarded(list, self._pages) if isinstance(key, str)]

    def drop_pages(self, name: str) -> int:
        """Drop every page of `name` in every scope, and every index page; returns the count."""
        dropped: int = _written(self._pages.evict, name)
        dropped += _written(self._pages.evict, "")
        self.changes.pages(name)
        self.changes.pages("")
        return dropped

    def drop_all_pages(self) -> int:
        """Drop every stored page."""
        dropped: int = _written(self._pages.clear)
        self.changes.all_pages()
        return dropped

    # -- files (through self.files) -----------------------------------------------------

    def has_file(self, sha256: str) -> bool:
        """True when the file is held, pinned or not (does not count as a use)."""
        return self.files.has(sha256)

    def is_pinned(self, sha256: str) -> bool:
        """True when the file is held and pinned."""
        return self.files.is_pinned(sha256)

    def held(self, sha256s: frozenset[str]) -> frozenset[str]:
        """The subset of `sha256s` the cache holds."""
        return frozenset(sha for sha in sha256s if self.files.has(sha))

    def open_file(self, sha256: str, *, use: bool = True) -> IO[bytes] | None:
        """A seekable reader of the file, or None; counts as a use for eviction and prune
        (with `use` False, for prune only in iter_files() order)."""
        return self.files.open(sha256, use=use)

    def put_file(
        self, sha256: str, path: Path, *, pinned: bool = False, name: str | None = None
    ) -> int:
        """Publish a verified file (pinned: never evicted); readers see all of it or nothing.
        `name`: the project it is a file of, whose pages change (None: every page).

        The file is linked into the cache where the disk allows (no copy): it must not be
        written after, and the caller removes its own name for it.
        Returns how many least recently used files were evicted to stay under max_size.
        Raises CacheFull when the disk has no room for it.
        """
        self.files.commit(sha256, path, pinned=pinned)
        self.changes.files(name)
        return self._cull()

    def pin(self, sha256: str) -> bool:
        """Keep a held file from eviction; False if the file is not held."""
        return self.files.pin(sha256)

    def _cull(self) -> int:
        """Evict the least recently used unpinned files until files, pages and access
        records together fit max_size; returns how many went."""
        room = self.max_size - int(_guarded(self._pages.volume)) - self.access.volume()
        excess = self.files.volume() - max(0, room)
        if excess <= 0:
            return 0
        excess += self.max_size // CULL_SLACK
        evicted = 0
        for file in self.iter_files():
            if excess <= 0:
                break
            if not file.pinned and self.remove(file.sha256):
                excess -= file.size
                evicted += 1
        return evicted

    def remove(self, sha256: str) -> bool:
        """Forget a file, pinned or not; a reader that has it open reads on. False if not held."""
        removed = self.files.delete(sha256)
        self.changes.files()
        return removed

    def iter_files(self) -> Iterator[StoredFile]:
        """Every held file, least recently used first (a file without a record: as used now)."""
        return iter(sorted(self.files.list(), key=lambda file: file.last_used))

    def check(self, sha256: str) -> str | None:
        """Re-hash the file: why it cannot be served (it is then dropped), or None.

        None also when it is not held. Reading it is not a use.
        """
        if not self.files.has(sha256):
            return None
        handle = self.files.open(sha256, use=False)
        if handle is None:
            self.remove(sha256)
            return "missing from disk"
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
        """Remove pages GitLab has not confirmed and unpinned files unused for over
        `older_than` seconds, then the least recently used files until everything (pinned
        files, pages and access records count) takes at most `to_size` bytes.

        Returns the (files, bytes) removed; `on_remove` is called with each.
        """
        now, files, size = self._clock(), 0, 0
        if older_than is not None:
            for key in _guarded(list, self._pages):
                stored = self.get_page(key) if isinstance(key, str) else None
                if stored is not None and now - stored.fetched_at > older_than:
                    _written(self._pages.delete, key)
        if to_size is not None:
            to_size = max(0, to_size - int(_guarded(self._pages.volume)) - self.access.volume())
        held = list(self.iter_files())
        for file in to_prune(held, now=now, older_than=older_than, to_size=to_size):
            if self.remove(file.sha256):
                files, size = files + 1, size + file.size
                if on_remove is not None:
                    on_remove(file)
        self.files.tidy()
        return files, size

    def stats(self) -> FileStats:
        """How many files (and of them pinned) and bytes are held, and how many pages."""
        files, size, pinned = self.files.counts()
        return FileStats(
            files=files,
            bytes=size,
            pages=len(self._pages),
            pinned=pinned,
            page_bytes=int(self._pages.volume()),
            access_records=self.access.count(),
            access_bytes=self.access.volume(),
        )


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
        except _FAILURES as exc:
            raise CacheError(f"cannot open the records in {directory}: {exc}") from exc

    def __repr__(self) -> str:
        return "Records()"

    def get(self, key: str) -> Any:
        """The value under `key`, or None."""
        return _guarded(self._cache.get, key)

    def set(self, key: str, value: object, *, expire: float | None = None) -> None:
        """Store `value` under `key`, forgotten after `expire` seconds if given."""
        _written(self._cache.set, key, value, expire=expire)

    def delete(self, key: str) -> None:
        """Forget the value under `key`, if any."""
        _written(self._cache.delete, key)

    def add(self, key: str, value: object) -> None:
        """Store `value` under `key` unless a value is there already."""
        _written(self._cache.add, key, value)

    def items(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Every (key, value) whose key starts with `prefix` (keys listed first)."""
        for key in _guarded(list, self._cache):
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

        _written(run)

    def volume(self) -> int:
        """Bytes on disk."""
        return int(_guarded(self._cache.volume))

    def count(self) -> int:
        """How many records are held."""
        return int(_guarded(len, self._cache))

    def prune(self, keep: Callable[[str, Any], bool]) -> int:
        """Drop expired records and those `keep` rejects; returns how many went."""
        dropped = int(_written(self._cache.expire))
        for key in _guarded(list, self._cache):
            if isinstance(key, str) and not keep(key, self.get(key)):
                dropped += bool(_written(self._cache.delete, key))
        return dropped

    def close(self) -> None:
        """Close the SQLite connection of this thread."""
        self._cache.close()


def _open_cache(directory: Path, name: str, **settings: object) -> Any:
    return diskcache.Cache(str(directory / name), disk=_TidyDisk, **settings)


def is_full(exc: BaseException) -> bool:
    """True when `exc` (an OSError or SQLite's error) says there is no room to write."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    return (
        isinstance(exc, sqlite3.Error)
        and getattr(exc, "sqlite_errorcode", 0) == sqlite3.SQLITE_FULL
    )


def _set(cache: Any, *args: Any, **kwargs: Any) -> None:
    """cache.set, leaving no partial file behind when it fails (a full disk)."""
    disk: _TidyDisk = cache.disk
    disk.begin()
    try:
        _written(cache.set, *args, **kwargs)
    except CacheError:
        disk.discard()
        raise


_WRITES = threading.Lock()
"""One write to the cache's SQLite files at a time in this process: threads that meet at
SQLite's write lock wait in its busy handler, which sleeps 1 to 100 ms between tries (a
burst of cold pages spent most of its time there, py-spy)."""


def _written(call: Any, *args: Any, **kwargs: Any) -> Any:
    """_guarded, for a call that writes: one at a time in this process."""
    with _WRITES:
        return _guarded(call, *args, **kwargs)


def _guarded(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except _FAILURES as exc:
        if is_full(exc):
            raise CacheFull(f"the cache's disk is full: {exc}") from exc
        raise CacheError(f"cache I/O failed: {exc}") from exc
