"""On-disk storage: simple pages with their metadata, access records and files by sha256.

Every method blocks on disk or SQLite; callers on the event loop go through anyio.to_thread.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import starmap
from operator import attrgetter
from pathlib import Path
from typing import IO, Any, Literal

from proxy.cacheio import FAILURES, guarded, open_cache, set_tidily, written
from proxy.changes import Changes
from proxy.diskfiles import DiskFiles
from proxy.errors import CacheError
from proxy.models import Link, Page
from proxy.records import Records
from proxy.retention import StoredFile, to_prune
from proxy.storage import Files

SIDE_SHARE = 8
"""Pages, and access records, may each take at most 1/SIDE_SHARE of max_size."""
CULL_SLACK = 64
"""Eviction frees 1/CULL_SLACK of max_size beyond what is needed: it reads every file's
record, so a full cache does that once per so many bytes stored, not for every file."""


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
            self._pages = open_cache(
                self.directory,
                "pages",
                eviction_policy="least-recently-stored",
                size_limit=self.side_limit,
                tag_index=True,
            )
        except FAILURES as exc:
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
            value: Any = guarded(self._pages.get, key)
        return value if isinstance(value, StoredPage) else None

    def put_page(self, key: str, stored: StoredPage, *, name: str) -> None:
        """Store a page, tagged with its normalized name so uploads can drop it."""
        set_tidily(self._pages, key, stored, tag=name)
        self.changes.pages(name)

    def iter_pages(self) -> Iterator[tuple[str, StoredPage]]:
        """Every stored page with its key (a page dropped while listing is skipped)."""
        for key in guarded(list, self._pages):
            stored = self.get_page(key) if isinstance(key, str) else None
            if stored is not None:
                yield key, stored

    def page_keys(self) -> list[str]:
        """The key of every stored page (reads no page)."""
        return [key for key in guarded(list, self._pages) if isinstance(key, str)]

    def drop_pages(self, name: str) -> int:
        """Drop every page of `name` in every scope, and every index page; returns the count."""
        dropped: int = written(self._pages.evict, name)
        dropped += written(self._pages.evict, "")
        self.changes.pages(name)
        self.changes.pages("")
        return dropped

    def drop_all_pages(self) -> int:
        """Drop every stored page."""
        dropped: int = written(self._pages.clear)
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
        room = self.max_size - int(guarded(self._pages.volume)) - self.access.volume()
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
            for key in guarded(list, self._pages):
                stored = self.get_page(key) if isinstance(key, str) else None
                if stored is not None and now - stored.fetched_at > older_than:
                    written(self._pages.delete, key)
        if to_size is not None:
            to_size = max(0, to_size - int(guarded(self._pages.volume)) - self.access.volume())
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
