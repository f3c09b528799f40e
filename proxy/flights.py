"""Coalesced work: one task per key, however many callers ask while it runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("proxy.flights")


class Flights(Generic[T]):
    """Tasks in flight by key: a caller joins the running one or starts it; each task is
    forgotten when it ends, so what is held is bounded by what is running."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, ...], asyncio.Task[T]] = {}

    def __repr__(self) -> str:
        return f"Flights(running={len(self._running)})"

    def start(
        self, key: tuple[str, ...], work: Callable[[], Coroutine[Any, Any, T]]
    ) -> asyncio.Task[T]:
        """The task running for `key`, else a new one running `work()`."""
        flight = self._running.get(key)
        if flight is not None:
            log.debug("joined the work in flight for %s", key[-1])
            return flight
        flight = asyncio.create_task(work())
        self._running[key] = flight
        flight.add_done_callback(lambda done: self._landed(key, done))
        return flight

    async def join(self, key: tuple[str, ...], work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The outcome of the work for `key` (its exception raised to every caller); a
        caller that is cancelled leaves the work running for the others."""
        return await asyncio.shield(self.start(key, work))

    def _landed(self, key: tuple[str, ...], flight: asyncio.Task[T]) -> None:
        if self._running.get(key) is flight:
            del self._running[key]
        if not flight.cancelled():
            flight.exception()  # heard by its callers, if any are left: not "never retrieved"

    async def aclose(self) -> None:
        """Cancel what is still running and wait for it to end."""
        running = list(self._running.values())
        for flight in running:
            flight.cancel()
        await asyncio.gather(*running, return_exceptions=True)
