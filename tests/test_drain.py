"""Drain and Serial: work handed to one worker thread hop at a time, in order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from anyio import to_thread

from proxy.drain import Drain, Serial

pytestmark = pytest.mark.anyio


class Hops:
    """A run_sync that counts the hops it starts."""

    def __init__(self) -> None:
        self.started = 0

    async def __call__(self, work: Callable[[list[Any]], None], batch: list[Any]) -> None:
        self.started += 1
        await to_thread.run_sync(work, batch)


async def test_serial_calls_run_in_order_in_one_thread_each_caller_getting_its_result() -> None:
    """Twenty callers at once: their calls run in the order put, by one thread, and each
    caller gets its own call's result."""
    order: list[int] = []
    threads: set[int] = set()

    def call(n: int) -> int:
        order.append(n)
        threads.add(threading.get_ident())
        return n * n

    serial = Serial()
    results = await asyncio.gather(*(serial.run(lambda n=n: call(n)) for n in range(20)))
    assert results == [n * n for n in range(20)]
    assert order == list(range(20))
    assert len(threads) == 1


async def test_calls_that_arrive_while_one_runs_go_in_the_same_hop() -> None:
    """While the first call blocks, the next nine queue; one hop takes them all after."""
    hops, release = Hops(), threading.Event()
    serial = Serial(run_sync=hops)
    first = asyncio.ensure_future(serial.run(lambda: release.wait(10)))
    rest = [asyncio.ensure_future(serial.run(lambda n=n: n)) for n in range(9)]
    await asyncio.sleep(0)  # one turn of the loop: every task puts its call
    release.set()
    assert await first is True
    assert await asyncio.gather(*rest) == list(range(9))
    assert hops.started == 1


async def test_a_failing_call_fails_its_caller_only() -> None:
    """An exception goes to the caller whose call raised; the calls around it still run."""
    serial = Serial()

    def fail() -> None:
        raise OSError("disk full")

    results = await asyncio.gather(
        serial.run(lambda: 1), serial.run(fail), serial.run(lambda: 3), return_exceptions=True
    )
    assert (results[0], results[2]) == (1, 3)
    assert isinstance(results[1], OSError)


async def test_a_cancelled_caller_leaves_the_others_their_results() -> None:
    """A caller gone before its call ran: the call runs, its result is dropped, and the
    next caller is answered."""
    release = threading.Event()
    serial = Serial()
    blocked = asyncio.ensure_future(serial.run(lambda: release.wait(10)))
    gone = asyncio.ensure_future(serial.run(lambda: "unheard"))
    after = asyncio.ensure_future(serial.run(lambda: "heard"))
    await asyncio.sleep(0)  # one turn of the loop: every task puts its call
    gone.cancel()
    release.set()
    assert await blocked is True
    assert await after == "heard"
    assert gone.cancelled()


async def test_a_stopped_drain_drops_what_waits() -> None:
    """stop() while a batch is in hand: that batch ends, nothing queued after it runs."""
    release, done = threading.Event(), asyncio.Event()
    seen: list[int] = []

    def work(batch: list[int]) -> int:
        release.wait(10)
        seen.extend(batch)
        return len(batch)

    drain: Drain[int, int] = Drain(work, landed=lambda count: None, ended=done.set)
    drain.put(1)
    drain.put(2)
    drain.stop()
    release.set()
    await asyncio.wait_for(done.wait(), 10)
    assert seen == [1]
    assert drain.error is None
