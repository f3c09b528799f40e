"""Change marks shared by every process on one cache directory, read without a system call."""

from __future__ import annotations

import errno
import logging
import mmap
import os
import zlib
from pathlib import Path

SLOTS = 1024
"""Marks in the file: one for files, one for every page, the rest for pages by name hash."""
_WIDTH = 8
_SIZE = SLOTS * _WIDTH
_FILES, _ALL = 0, 1
log = logging.getLogger("proxy.changes")


class Changes:
    """Marks in a small memory-mapped file: a writer sets a mark to a new random value
    after its change is stored; a reader takes the marks it depends on (`stamp`) before it
    reads what they guard, and what it made from that read stays valid while `stamp` is
    unchanged. Random values need no lock between processes: a lost race still leaves a
    value no reader saw before the change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)  # zeros; another process may do the same
            if _allocated(fd):
                self._map = mmap.mmap(fd, _SIZE)
            else:
                log.warning(
                    "no room for %s: change marks are this process's own until a restart",
                    path,
                )
                self._map = mmap.mmap(-1, _SIZE)
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"Changes({str(self.path)!r})"

    def stamp(self, name: str) -> bytes:
        """The marks a rendering of the page of `name` ("" for the index) depends on: the
        held files and their metadata, every page, and the pages of `name`."""
        slot = _slot(name) * _WIDTH
        view = self._map
        return view[: 2 * _WIDTH] + view[slot : slot + _WIDTH]

    def dropped(self) -> bytes:
        """The mark that moves when a held file is dropped (or any file changes): take it
        before reading what a held file's bytes are."""
        return self._map[:_WIDTH]

    def pages(self, name: str) -> None:
        """The pages of `name` ("" for the index) changed."""
        self._mark(_slot(name))

    def all_pages(self) -> None:
        """Every page changed."""
        self._mark(_ALL)

    def files(self, name: str | None = None) -> None:
        """A file was held, dropped, or its core metadata became known: a file of project
        `name` (the pages of that name change), or of any (every page changes)."""
        self._mark(_FILES if name is None else _slot(name))

    def _mark(self, slot: int) -> None:
        self._map[slot * _WIDTH : (slot + 1) * _WIDTH] = os.urandom(_WIDTH)


def _allocated(fd: int) -> bool:
    """Give the file its blocks now: a page of a sparse file mapped and first touched when
    the disk is full kills the process (SIGBUS) instead of raising. False: no room."""
    try:
        os.posix_fallocate(fd, 0, _SIZE)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return False
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    return True


def _slot(name: str) -> int:
    """The slot of a name's pages: a stable hash, the same in every process."""
    return 2 + zlib.crc32(name.encode()) % (SLOTS - 2)
