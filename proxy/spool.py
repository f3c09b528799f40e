"""The files of fills on disk: per-file locks (flock), growing bodies, announcements."""

from __future__ import annotations

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

    def try_lock(self, sha256: str) -> int | None:
        """The lock's descriptor if this process now leads the fill, else None."""
        fd = os.open(self.locks / f"{sha256}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def unlock(self, sha256: str, fd: int) -> None:
        """Give up leading: drop the announcement, then the lock."""
        self.notice(sha256).unlink(missing_ok=True)
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
        """Remove what dead fills left behind (no live lock); returns how many files."""
        removed = 0
        for path in self.tmp.iterdir():
            sha256 = path.name.split(".", 1)[0]
            if not valid_sha256(sha256):
                continue
            lock = self.try_lock(sha256)
            if lock is None:
                continue  # a live fill in another worker
            try:
                path.unlink(missing_ok=True)
                removed += 1
            finally:
                os.close(lock)
        return removed
