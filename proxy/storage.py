"""The storage protocol: where verified files live (design 3.9), on disk or in a bucket."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from anyio import to_thread

from proxy.retention import StoredFile

HIT_CHUNK = 512 * 1024
"""Bytes read from a held file per thread hop (one chunk in flight per client)."""
USE_RESOLUTION = 60.0  # seconds: a hot file's use is recorded once a minute, not on every hit


@dataclass(frozen=True, slots=True)
class Opened:
    """A held file opened for serving: its size, when it was committed, its bytes by range."""

    size: int
    modified: float  # wall-clock time of the commit: Last-Modified
    read: Callable[[int, int | None], AsyncGenerator[bytes, None]]
    """read(start, end): the bytes [start, end), end None meaning to the end; closes after."""
    close: Callable[[], None]
    """Frees what `read` would have used (a HEAD reads nothing); safe to call twice."""
    file: IO[bytes] | None = None
    """The file itself where it is a local file (a server may send it by zero copy)."""


class Files(Protocol):
    """Verified files by sha256 (lower-case hex). Every method blocks: callers on the
    event loop go through anyio.to_thread, one hop per operation."""

    def has(self, sha256: str) -> bool:
        """True when the file is held, pinned or not (not a use)."""
        ...

    def is_pinned(self, sha256: str) -> bool:
        """True when the file is held and pinned (never evicted)."""
        ...

    def open(self, sha256: str, *, use: bool = True) -> IO[bytes] | None:
        """A seekable reader of the whole file, or None; `use`: counts as a use for LRU."""
        ...

    def open_range(self, sha256: str) -> Opened | None:
        """The file opened for serving byte ranges (a use), or None."""
        ...

    def presign(self, sha256: str, *, filename: str, expires: int) -> str | None:
        """A URL any client can GET the file from for `expires` seconds, carrying no
        credential but its signature; None when this store cannot give one."""
        ...

    def commit(self, sha256: str, path: Path, *, pinned: bool) -> None:
        """Publish the verified file at `path`: readers see all of it or nothing."""
        ...

    def pin(self, sha256: str) -> bool:
        """Keep a held file from eviction; False when it is not held."""
        ...

    def delete(self, sha256: str) -> bool:
        """Forget a file, pinned or not; False when it was not held."""
        ...

    def list(self) -> Iterator[StoredFile]:
        """Every held file (a file without a use recorded: as used now)."""
        ...

    def volume(self) -> int:
        """Bytes of the unpinned files (what eviction can free)."""
        ...

    def counts(self) -> tuple[int, int, int]:
        """(files, bytes, pinned files) held, pinned ones included in the first two."""
        ...

    def tidy(self) -> None:
        """Drop the bookkeeping of files no longer held."""
        ...

    def close(self) -> None:
        """Release this thread's connections."""
        ...


def pread_chunks(handle: IO[bytes], start: int, end: int | None) -> AsyncGenerator[bytes, None]:
    """Bytes [start, end) of an open local file, one `os.pread` per thread hop (no seek, no
    second hop); closes it when done."""
    return _pread_chunks(handle, start, end)


async def _pread_chunks(
    handle: IO[bytes], start: int, end: int | None
) -> AsyncGenerator[bytes, None]:
    try:
        fd, position = handle.fileno(), start
        while end is None or position < end:
            size = HIT_CHUNK if end is None else min(HIT_CHUNK, end - position)
            chunk: bytes = await to_thread.run_sync(os.pread, fd, size, position)
            if not chunk:
                return
            position += len(chunk)
            yield chunk
            del chunk  # not held while the next one is read
    finally:
        await to_thread.run_sync(handle.close)


def local_opened(handle: IO[bytes]) -> Opened:
    """A local file's handle as an Opened: size and mtime from fstat."""
    status = os.fstat(handle.fileno())
    return Opened(
        status.st_size,
        status.st_mtime,
        lambda start, end: pread_chunks(handle, start, end),
        handle.close,
        handle,
    )
