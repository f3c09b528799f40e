"""The files of fills on disk: per-file locks (flock), growing bodies, announcements.

A lock file lives only while its fill does: the leader removes `locks/<sha256>.lock`
while it still holds the lock, and a locker that finds its locked file no longer at
that path (fstat vs stat) lets go and tries again, so two never both lead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from pathlib import Path

from proxy.models import valid_sha256


class Spool:
    """Lock, temp and announcement files of fills, in the cache's tmp folder."""

    def __init__(self, directory: Path) -> None:
        self.tmp = directory / "tmp"
        self.locks = directory / "locks"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.locks.mkdir(parents=True, exist_ok=True)

    def part(self, sha256: str) -> Path:
        """Where the leader writes the file."""
        return self.tmp / f"{sha256}.fill"

    def notice(self, sha256: str) -> Path:
        """Where the leader announces the status and length it got from GitLab."""
        return self.tmp / f"{sha256}.json"

    def lock(self, sha256: str) -> Path:
        """The fill's lock file, there only while someone holds it."""
        return self.locks / f"{sha256}.lock"

    def try_lock(self, sha256: str) -> int | None:
        """The lock's descriptor if this process now leads the fill, else None."""
        path = self.lock(sha256)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            if _same_file(fd, path):
                return fd
            os.close(fd)  # its leader removed it as it let go: lock the path's new file

    def unlock(self, sha256: str, fd: int) -> None:
        """Give up leading: drop the announcement, then the lock file, then the lock."""
        self.notice(sha256).unlink(missing_ok=True)
        self.lock(sha256).unlink(missing_ok=True)
        os.close(fd)

    def create_part(self, sha256: str) -> tuple[int, int]:
        """A fresh inode for the body (never reuse another fill's): write and read descriptors."""
        path = self.part(sha256)
        path.unlink(missing_ok=True)
        writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return writer, os.open(path, os.O_RDONLY)

    def announce(
        self, sha256: str, token: str, *, origin: str, status: int, length: int | None
    ) -> None:
        """Tell followers in other workers what GitLab answered, and to whom (`origin`: a
        hash of scope and credentials), atomically replaced."""
        staged = self.tmp / f"{sha256}.{token}.staged"
        notice = {"token": token, "origin": origin, "status": status, "length": length}
        try:
            staged.write_text(json.dumps(notice))
            staged.replace(self.notice(sha256))
        except OSError:
            staged.unlink(missing_ok=True)  # a full disk: nothing half-written stays
            raise

    def read_notice(self, sha256: str) -> dict[str, object] | None:
        """The leader's announcement, or None when there is none (yet)."""
        try:
            value = json.loads(self.notice(sha256).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def free_bytes(self) -> int:
        """Bytes this process may still write on the cache's file system."""
        found = os.statvfs(self.tmp)
        return found.f_bavail * found.f_frsize

    def probe(self) -> None:
        """Raise OSError unless a file can be created, written and removed here."""
        probe = self.tmp / f"ready.{secrets.token_hex(4)}.probe"
        probe.write_bytes(b"ok")
        probe.unlink()

    def sweep(self) -> int:
        """Remove what dead fills left behind (bodies, announcements, staged announcements
        and lock files of fills nobody holds); returns how many files."""
        left: dict[str, list[Path]] = {}
        for path in [*self.tmp.iterdir(), *self.locks.iterdir()]:
            sha256 = path.name.split(".", 1)[0]
            if valid_sha256(sha256):
                left.setdefault(sha256, []).append(path)
        removed = 0
        for sha256, paths in left.items():
            lock = self.try_lock(sha256)
            if lock is None:
                continue  # a live fill in another worker
            try:
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed += 1
            finally:
                self.unlock(sha256, lock)
        return removed


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)
