"""Work handed from the event loop to one worker thread hop at a time, drained in order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from anyio import to_thread

T = TypeVar("T")
R = TypeVar("R")
RunSync = Callable[[Callable[[list[Any]], None], list[Any]], Awaitable[None]]
"""How a hop runs: `run_sync(function, batch)` calls `function(batch)` in a worker thread."""


class Drain(Generic[T, R]):
    """`work(batch)` run in a worker thread for the items `put` on the event loop, in order.

    One hop at a time: it takes what waits, then what arrived while it worked, and ends
    when nothing waits; the next `put` starts another. A steady stream so costs one
    thread wake-up, not one per batch, and one thread does the work however many tasks
    put it. `landed(result)` runs on the loop after each batch; `ended()` runs on the loop
    when a hop ends, with its exception (if any) kept in `error`.
    """

    def __init__(
        self,
        work: Callable[[list[T]], R],
        *,
        landed: Callable[[R], None],
        ended: Callable[[], None] = lambda: None,
        run_sync: RunSync = to_thread.run_sync,
    ) -> None:
        self._work = work
        self._landed = landed
        self._ended = ended
        self._run_sync = run_sync
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._queue: list[T] = []  # guarded by _lock
        self._draining = False  # guarded by _lock: a hop is draining the queue
        self.hops: set[asyncio.Future[None]] = set()
        """The hops not ended yet (at most two: one ending while the next starts)."""
        self.error: BaseException | None = None

    def put(self, item: T) -> None:
        """Queue `item` (on the event loop), starting a hop unless one is draining."""
        self._loop = self._loop or asyncio.get_running_loop()
        with self._lock:
            self._queue.append(item)
            batch = None if self._draining else self._queue
            if batch is not None:
                self._queue, self._draining = [], True
        if batch is not None:
            hop = asyncio.ensure_future(self._run_sync(self._drain, batch))
            self.hops.add(hop)
            hop.add_done_callback(self._end)

    def stop(self) -> None:
        """Drop what waits: no batch starts after the one in hand."""
        with self._lock:
            self._queue = []

    def _drain(self, batch: list[T]) -> None:
        """(In a thread) `work` through `batch`, then whatever waits, until nothing does."""
        assert self._loop is not None, "a hop starts from put()"
        try:
            while batch:
                self._loop.call_soon_threadsafe(self._landed, self._work(batch))
                with self._lock:
                    batch, self._queue = self._queue, []
                    self._draining = bool(batch)
        except BaseException:
            with self._lock:
                self._queue, self._draining = [], False
            raise

    def _end(self, hop: asyncio.Future[None]) -> None:
        self.hops.discard(hop)
        if hop.cancelled():
            self.error = self.error or asyncio.CancelledError()
        elif (error := hop.exception()) is not None:
            self.error = self.error or error
        self._ended()


class Serial:
    """Blocking calls of many tasks run back to back by one worker thread (`Drain`), each
    caller awaiting its own result or exception.

    For writes to the cache's SQLite files: one thread writing a burst's records in turn
    instead of a thread per caller queueing on the process's write lock while each waits
    for the GIL (20 cold pages at once waited up to 80 ms, instrumented).
    """

    def __init__(self, *, run_sync: RunSync = to_thread.run_sync) -> None:
        self._drain: Drain[tuple[Callable[[], Any], asyncio.Future[Any]], list[_Settled]] = Drain(
            _call_all, landed=_settle, run_sync=run_sync
        )

    async def run(self, call: Callable[[], T]) -> T:
        """call() in the worker thread, after the calls put before it; its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._drain.put((call, future))
        return await future


_Settled = tuple["asyncio.Future[Any]", bool, Any]
"""(the caller's future, whether the call returned, its result or its exception)."""


def _call_all(batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]]) -> list[_Settled]:
    settled: list[_Settled] = []
    for call, future in batch:
        try:
            settled.append((future, True, call()))
        except Exception as exc:  # the caller's to handle, on the loop
            settled.append((future, False, exc))
    return settled


def _settle(settled: list[_Settled]) -> None:
    for future, returned, value in settled:
        if future.done():  # its caller was cancelled
            continue
        if returned:
            future.set_result(value)
        else:
            future.set_exception(value)
