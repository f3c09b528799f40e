"""Small held files in memory with the callers GitLab let have them: hits without a hop."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from proxy.changes import Changes
from proxy.recent import Recent
from proxy.storage import USE_RESOLUTION

HOT_FILES_MEMORY = 16 * 1024 * 1024
"""Default bound on the bytes kept (each file at most filereplies.SMALL)."""
GRANTS_KEPT = 8192
"""(caller, file) pairs remembered as allowed (a few hundred bytes each)."""


@dataclass(frozen=True, slots=True)
class HotFile:
    """Bytes that hash to `sha256` (a held file, or a wheel's core metadata)."""

    data: bytes
    sha256: str
    modified: float | None = None


@dataclass(frozen=True, slots=True)
class _Allowed:
    file: str  # the sha256 the bytes are kept under
    until: float
    mark: bytes


def verified(data: bytes, sha256: str, modified: float | None = None) -> HotFile | None:
    """(Blocking for large data) a HotFile of `data` when it hashes to `sha256`, else None:
    bytes kept in memory are served for a long time, so they are checked once."""
    if hashlib.sha256(data).hexdigest() != sha256.lower():
        return None
    return HotFile(data, sha256.lower(), modified)


class HotFiles:
    """What a file hit found (the caller may have it, and its bytes), so that a repeated
    hit is answered on the event loop, without a thread hop, a SQLite read or a file open.

    pip and uv ask for a wheel's `.metadata` and the wheel itself once per install, and a
    CI fleet installs the same tree again and again; the hop that reads the grants and
    opens the file was most of such a hit's latency (1.8 ms against 0.9 ms for a page, one
    keep-alive client). What it found is reused until:
    - GitLab's word for the caller runs out (passthrough's auth_ttl; for good otherwise:
      a name GitLab listed here stays bound, design 3.4);
    - USE_RESOLUTION passes, so the Store still learns that the file is used (eviction
      goes by last use);
    - a file is dropped anywhere on this cache directory (the change mark moves, in any
      process), which forgets every grant at once.
    At most `max_bytes` of bytes, the least recently used going first.
    """

    def __init__(
        self,
        changes: Changes,
        *,
        max_bytes: int = HOT_FILES_MEMORY,
        clock: Callable[[], float] = time.time,
        on_hit: Callable[[], object] = lambda: None,
    ) -> None:
        self.max_bytes = max_bytes
        self._changes = changes
        self._clock = clock
        self._on_hit = on_hit
        self._allowed: Recent[tuple[str, str, str], _Allowed] = Recent(GRANTS_KEPT)
        self._files: OrderedDict[str, HotFile] = OrderedDict()
        self._bytes = 0

    def __repr__(self) -> str:
        return f"HotFiles(max_bytes={self.max_bytes}, held_bytes={self._bytes})"

    @property
    def held_bytes(self) -> int:
        """Bytes kept now (never above max_bytes)."""
        return self._bytes

    def mark(self) -> bytes:
        """The change mark to take before the grants and the file are read."""
        return self._changes.dropped()

    def get(self, owner: str, sha256: str, filename: str) -> HotFile | None:
        """The bytes of `filename` (asked for by its sha256) when `owner` (Caller.owner) was
        found allowed to have them and that still holds; else None."""
        key = (owner, sha256, filename)
        allowed = self._allowed.get(key)
        if allowed is None:
            return None
        file = self._files.get(allowed.file)
        if file is None or self._clock() >= allowed.until or self.mark() != allowed.mark:
            self._allowed.pop(key)
            return None
        self._files.move_to_end(allowed.file)
        self._on_hit()
        return file

    def keep(
        self, owner: str, sha256: str, filename: str, file: HotFile, *, until: float, mark: bytes
    ) -> None:
        """`owner` may have `file` under this name (as asked for) until `until`, as read
        after `mark` was taken."""
        size = len(file.data)
        if size > self.max_bytes or mark != self.mark():
            return
        until = min(until, self._clock() + USE_RESOLUTION)
        self._allowed.put((owner, sha256, filename), _Allowed(file.sha256, until, mark))
        if file.sha256 in self._files:
            self._files.move_to_end(file.sha256)
            return
        self._files[file.sha256] = file
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, gone = self._files.popitem(last=False)
            self._bytes -= len(gone.data)
