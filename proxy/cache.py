"""On-disk storage: simple pages with their metadata, files by sha256 (the only diskcache import).

Every method blocks on disk or SQLite; callers on the event loop go through anyio.to_thread.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import diskcache

from proxy.errors import CacheError
from proxy.models import Page


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

    files: int
    bytes: int
    pages: int


class Store:
    """Pages (kept, small) and files (sha256-addressed, evicted least recently used first)."""

    def __init__(self, directory: Path, *, max_size: int) -> None:
        self.directory = Path(directory)
        self.tmp = self.directory / "tmp"
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            self._pages = diskcache.Cache(
                str(self.directory / "pages"), eviction_policy="none", tag_index=True
            )
            self._files = diskcache.Cache(
                str(self.directory / "files"),
                size_limit=max_size,
                eviction_policy="least-recently-used",
            )
        except (OSError, diskcache.Timeout) as exc:
            raise CacheError(f"cannot open the cache in {self.directory}: {exc}") from exc

    def __repr__(self) -> str:
        return f"Store({str(self.directory)!r})"

    def close(self) -> None:
        """Close the SQLite connections of this thread."""
        self._pages.close()
        self._files.close()

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
        """True when the file is held (does not count as a use)."""
        return bool(self._guard(self._files.__contains__, sha256))

    def held(self, sha256s: frozenset[str]) -> frozenset[str]:
        """The subset of `sha256s` the cache holds."""
        return frozenset(sha for sha in sha256s if self.has_file(sha))

    def open_file(self, sha256: str) -> IO[bytes] | None:
        """An open handle on the file, or None; counts as a use for eviction."""
        try:
            handle = self._files.get(sha256, read=True)
        except OSError:
            # The row outlived its file (removed by hand); forget it.
            self._files.delete(sha256)
            return None
        except diskcache.Timeout as exc:
            raise CacheError(f"the cache is busy: {exc}") from exc
        return handle if handle is not None and not isinstance(handle, bytes) else None

    def put_file(self, sha256: str, path: Path) -> None:
        """Publish a verified file; readers see all of it or nothing."""
        with open(path, "rb") as source:
            self._guard(self._files.set, sha256, source, read=True)

    def new_temp(self) -> tuple[IO[bytes], Path]:
        """A new temporary file in the cache's tmp folder, open for writing."""
        fd, name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        return os.fdopen(fd, "w+b"), Path(name)

    def clean_temp(self) -> int:
        """Remove temporary files left by a crash; returns how many."""
        removed = 0
        for path in self.tmp.glob("*.part"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def stats(self) -> FileStats:
        """How many files and bytes are held, and how many pages."""
        return FileStats(
            files=len(self._files), bytes=int(self._files.volume()), pages=len(self._pages)
        )

    def _guard(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except (OSError, diskcache.Timeout) as exc:
            raise CacheError(f"cache I/O failed: {exc}") from exc
