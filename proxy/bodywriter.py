"""A fill's body written and hashed in a worker thread while the next bytes download."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType

from anyio import to_thread

LIMIT = 4 * 1024 * 1024
"""Bytes given to `write` and not on disk yet before `write` waits: what a fill holds in
memory at most, besides one chunk (1 MiB left the thread idle between batches: a 192 MB
fill took 0.33 s against 0.29 s; 8 MiB bought nothing more, bench/cold.py)."""


class BodyWriter:
    """Writes chunks to a file descriptor and hashes them off the event loop, pipelined.

    One thread at a time drains the queue: it takes what waits, writes and hashes it, and
    goes on with what arrived meanwhile, so a fast download never waits for a thread to
    be woken between batches (a hop per batch cost a 192 MB fill a third of its time).
    It leaves when nothing waits; the next chunk starts another. `on_written(count)` runs
    on the loop as soon as a batch is on disk. Use it as an async context manager: leaving
    it waits for the thread, so the descriptor may be closed after.
    """

    def __init__(
        self,
        fd: int,
        *,
        on_written: Callable[[int], None],
        limit: int = LIMIT,
        run_sync: Callable[[Callable[[list[bytes]], None], list[bytes]], Awaitable[None]] = (
            to_thread.run_sync
        ),
    ) -> None:
        """`run_sync(function, batch)` runs `function(batch)` in a worker thread (a hop)."""
        self._run_sync = run_sync
        self._fd = fd
        self._on_written = on_written
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self._digest = hashlib.sha256()
        self._lock = threading.Lock()
        self._queue: list[bytes] = []  # guarded by _lock
        self._draining = False  # guarded by _lock: a thread drains the queue
        self._unwritten = 0  # bytes given to write() and not yet on disk (loop only)
        self._hops: set[asyncio.Future[None]] = set()
        self._progress: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    async def __aenter__(self) -> BodyWriter:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._lock:
            self._queue = []  # nothing more starts: the thread must be done with fd
        cancelled = False
        while self._hops:
            try:
                await asyncio.wait(set(self._hops))
            except asyncio.CancelledError:
                cancelled = True  # still wait: the caller closes fd next
        if cancelled:
            raise asyncio.CancelledError

    async def write(self, chunk: bytes) -> None:
        """Queue `chunk`; waits only while `limit` bytes are not on disk yet. Raises the
        OSError of an earlier batch."""
        self._raise()
        self._unwritten += len(chunk)
        with self._lock:
            self._queue.append(chunk)
            batch = None if self._draining else self._queue
            if batch is not None:
                self._queue, self._draining = [], True
        if batch is not None:
            hop = asyncio.ensure_future(self._run_sync(self._drain, batch))
            self._hops.add(hop)
            hop.add_done_callback(self._landed)
        while self._unwritten >= self._limit:
            await self._moved()

    async def hexdigest(self) -> str:
        """Write everything still waiting; the sha256 of all the bytes written."""
        while self._unwritten > 0:
            await self._moved()
        while self._hops:  # the thread is past its last update of the digest
            await asyncio.wait(set(self._hops))
        self._raise()
        return self._digest.hexdigest()

    def _drain(self, batch: list[bytes]) -> None:
        """(In a thread) write `batch`, then whatever waits, until nothing does."""
        try:
            while batch:
                count = _write_all(self._fd, batch, self._digest.update)
                self._loop.call_soon_threadsafe(self._wrote, count)
                with self._lock:
                    batch, self._queue = self._queue, []
                    self._draining = bool(batch)
        except BaseException:
            with self._lock:
                self._queue, self._draining = [], False
            raise

    def _wrote(self, count: int) -> None:
        self._unwritten -= count
        self._on_written(count)
        self._wake()

    def _landed(self, hop: asyncio.Future[None]) -> None:
        self._hops.discard(hop)
        if hop.cancelled():
            self._error = self._error or asyncio.CancelledError()
        elif (error := hop.exception()) is not None:
            self._error = self._error or error
        self._wake()

    async def _moved(self) -> None:
        """Wait until a batch lands or a thread ends; raise a thread's error."""
        self._raise()
        if not self._hops:
            raise RuntimeError("BodyWriter: bytes wait with no thread to write them")
        if self._progress is None:
            self._progress = self._loop.create_future()
        await asyncio.shield(self._progress)
        self._raise()

    def _wake(self) -> None:
        if self._progress is not None and not self._progress.done():
            self._progress.set_result(None)
        self._progress = None

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
