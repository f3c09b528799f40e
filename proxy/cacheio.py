"""diskcache guarded: a Disk that links and tidies, failures raised as CacheError or CacheFull."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from proxy.errors import CacheError, CacheFull

FAILURES = (OSError, sqlite3.Error, diskcache.Timeout)
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""A write refused for want of room: the disk, a quota, or RLIMIT_FSIZE."""


@dataclass(frozen=True, slots=True)
class Linked:
    """A file to become a stored value by a hard link rather than a copy."""

    path: Path


_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP})
"""link() refused: another file system, or one without hard links (then it is copied)."""


class _TidyDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's Disk, able to take back the file of a failed set: diskcache leaves a
    partial copy behind when the disk fills up mid-write, or when its transaction fails.
    A Linked value is stored by linking its file (no copy) where the file system allows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writing = threading.local()

    def filename(self, key: Any = diskcache.UNKNOWN, value: Any = diskcache.UNKNOWN) -> Any:
        """diskcache's choice of a new file's name, remembered for discard()."""
        name, full_path = super().filename(key, value)
        self._writing.path = full_path
        return name, full_path

    def store(self, value: Any, read: bool, key: Any = diskcache.UNKNOWN) -> Any:
        """diskcache's (size, mode, filename, value) of a value, a Linked file linked."""
        if not isinstance(value, Linked):
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


def open_cache(directory: Path, name: str, **settings: object) -> Any:
    """The diskcache.Cache in `directory / name`, on the Disk that links and tidies."""
    return diskcache.Cache(str(directory / name), disk=_TidyDisk, **settings)


def is_full(exc: BaseException) -> bool:
    """True when `exc` (an OSError or SQLite's error) says there is no room to write."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    return (
        isinstance(exc, sqlite3.Error)
        and getattr(exc, "sqlite_errorcode", 0) == sqlite3.SQLITE_FULL
    )


def set_tidily(cache: Any, *args: Any, **kwargs: Any) -> None:
    """cache.set, leaving no partial file behind when it fails (a full disk)."""
    disk: _TidyDisk = cache.disk
    disk.begin()
    try:
        written(cache.set, *args, **kwargs)
    except CacheError:
        disk.discard()
        raise


_WRITES = threading.Lock()
"""One write to the cache's SQLite files at a time in this process: threads that meet at
SQLite's write lock wait in its busy handler, which sleeps 1 to 100 ms between tries (a
burst of cold pages spent most of its time there, py-spy)."""


def written(call: Any, *args: Any, **kwargs: Any) -> Any:
    """guarded, for a call that writes: one at a time in this process."""
    with _WRITES:
        return guarded(call, *args, **kwargs)


def guarded(call: Any, *args: Any, **kwargs: Any) -> Any:
    """call(*args, **kwargs), its disk and SQLite failures raised as CacheFull or CacheError."""
    try:
        return call(*args, **kwargs)
    except FAILURES as exc:
        if is_full(exc):
            raise CacheFull(f"the cache's disk is full: {exc}") from exc
        raise CacheError(f"cache I/O failed: {exc}") from exc
