"""A fill's body written and hashed in a worker thread while the next bytes download."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from functools import partial
from types import TracebackType

from anyio import to_thread

from proxy.drain import Drain, RunSync

LIMIT = 4 * 1024 * 1024
"""Bytes given to `write` and not on disk yet before `write` waits: what a fill holds in
memory at most, besides one chunk (1 MiB left the thread idle between batches: a 192 MB
fill took 0.33 s against 0.29 s; 8 MiB bought nothing more, bench/cold.py)."""


class BodyWriter:
    """Writes chunks to a file descriptor and hashes them off the event loop, pipelined.

    A `Drain` hands the chunks to one thread hop at a time: it takes what waits, writes
    and hashes it, and goes on with what arrived meanwhile, so a fast download never
    waits for a thread to be woken between batches (a hop per batch cost a 192 MB fill a
    third of its time). `on_written(count)` runs on the loop as soon as a batch is on
    disk. Use it as an async context manager: leaving it waits for the thread, so the
    descriptor may be closed after.
    """

    def __init__(
        self,
        fd: int,
        *,
        on_written: Callable[[int], None],
        limit: int = LIMIT,
        run_sync: RunSync = to_thread.run_sync,
    ) -> None:
        """`run_sync(function, batch)` runs `function(batch)` in a worker thread (a hop)."""
        self._on_written = on_written
        self._limit = limit
        self._digest = hashlib.sha256()
        self._unwritten = 0  # bytes given to write() and not yet on disk
        self._progress: asyncio.Future[None] | None = None
        self._chunks: Drain[bytes, int] = Drain(
            partial(_write_all, fd, self._digest.update),
            landed=self._wrote,
            ended=self._wake,
            run_sync=run_sync,
        )

    async def __aenter__(self) -> BodyWriter:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._chunks.stop()  # nothing more starts: the thread must be done with fd
        cancelled = False
        while self._chunks.hops:
            try:
                await asyncio.wait(set(self._chunks.hops))
            except asyncio.CancelledError:
                cancelled = True  # still wait: the caller closes fd next
        if cancelled:
            raise asyncio.CancelledError

    async def write(self, chunk: bytes) -> None:
        """Queue `chunk`; waits only while `limit` bytes are not on disk yet. Raises the
        OSError of an earlier batch."""
        self._raise()
        self._unwritten += len(chunk)
        self._chunks.put(chunk)
        while self._unwritten >= self._limit:
            await self._moved()

    async def hexdigest(self) -> str:
        """Write everything still waiting; the sha256 of all the bytes written."""
        while self._unwritten > 0:
            await self._moved()
        while self._chunks.hops:  # the thread is past its last update of the digest
            await asyncio.wait(set(self._chunks.hops))
        self._raise()
        return self._digest.hexdigest()

    def _wrote(self, count: int) -> None:
        self._unwritten -= count
        self._on_written(count)
        self._wake()

    async def _moved(self) -> None:
        """Wait until a batch lands or the thread's hop ends; raise its error."""
        self._raise()
        if not self._chunks.hops:
            raise RuntimeError("BodyWriter: bytes wait with no thread to write them")
        if self._progress is None:
            self._progress = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._progress)
        self._raise()

    def _wake(self) -> None:
        if self._progress is not None and not self._progress.done():
            self._progress.set_result(None)
        self._progress = None

    def _raise(self) -> None:
        if self._chunks.error is not None:
            raise self._chunks.error


def _write_all(fd: int, hashing: Callable[[bytes], object], batch: list[bytes]) -> int:
    """Write all of `batch` to `fd`, hashing it; the bytes written."""
    total = 0
    for data in batch:
        hashing(data)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        total += len(data)
    return total
