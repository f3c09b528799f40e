"""A fill's body written and hashed in a worker thread while the next bytes download."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from types import TracebackType

from anyio import to_thread

LIMIT = 1024 * 1024
"""Bytes waiting for the thread before `write` waits for it: the memory a fill may hold
besides the batch being written."""


class BodyWriter:
    """Writes chunks to a file descriptor and hashes them off the event loop, pipelined.

    Chunks that arrive while the thread is busy wait, and go in its next hop together
    (one hop per batch, not per chunk); `on_written(count)` runs on the loop as soon as a
    batch is on disk. Use it as an async context manager: leaving it waits for the
    thread, so the descriptor may be closed after.
    """

    def __init__(self, fd: int, *, on_written: Callable[[int], None], limit: int = LIMIT) -> None:
        self._fd = fd
        self._on_written = on_written
        self._limit = limit
        self._digest = hashlib.sha256()
        self._waiting: list[bytes] = []
        self._waiting_bytes = 0
        self._hop: asyncio.Future[int] | None = None
        self._error: BaseException | None = None

    async def __aenter__(self) -> BodyWriter:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._waiting = []  # nothing more starts: the thread must be done with fd
        cancelled = False
        while self._hop is not None:
            try:
                await asyncio.wait({self._hop})
            except asyncio.CancelledError:
                cancelled = True  # still wait: the caller closes fd next
        if cancelled:
            raise asyncio.CancelledError

    async def write(self, chunk: bytes) -> None:
        """Queue `chunk`; waits only while LIMIT bytes already wait. Raises the OSError of
        an earlier batch."""
        self._raise()
        self._waiting.append(chunk)
        self._waiting_bytes += len(chunk)
        if self._hop is None:
            self._start()
        while self._hop is not None and self._waiting_bytes >= self._limit:
            await asyncio.wait({self._hop})
            self._raise()

    async def hexdigest(self) -> str:
        """Write everything still waiting; the sha256 of all the bytes written."""
        while self._hop is not None:
            await asyncio.wait({self._hop})
        self._raise()
        return self._digest.hexdigest()

    def _start(self) -> None:
        batch, self._waiting, self._waiting_bytes = self._waiting, [], 0
        hop = to_thread.run_sync(_write_all, self._fd, batch, self._digest.update)
        self._hop = asyncio.ensure_future(hop)
        self._hop.add_done_callback(self._landed)

    def _landed(self, hop: asyncio.Future[int]) -> None:
        """A batch is on disk (or failed): tell, and start the next one."""
        self._hop = None
        if hop.cancelled():
            self._error = asyncio.CancelledError()
        elif (error := hop.exception()) is not None:
            self._error = error
        else:
            self._on_written(hop.result())
            if self._waiting:
                self._start()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


def _write_all(fd: int, batch: list[bytes], hashing: Callable[[bytes], object]) -> int:
    """Write all of `batch` to `fd`, hashing it; the bytes written."""
    total = 0
    for data in batch:
        hashing(data)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        total += len(data)
    return total
