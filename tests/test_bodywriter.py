"""BodyWriter: a fill's body written and hashed in a thread, batched, bounded, pipelined."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from anyio import to_thread

from proxy.bodywriter import BodyWriter

pytestmark = pytest.mark.anyio
CHUNKS = [bytes([n]) * 100_000 for n in range(10)]


async def test_the_file_gets_every_chunk_in_order_and_the_digest_is_theirs(
    tmp_path: Path,
) -> None:
    """What was written is the chunks in order, and hexdigest is their sha256."""
    path = tmp_path / "body"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        async with BodyWriter(fd, on_written=lambda count: None) as body:
            for chunk in CHUNKS:
                await body.write(chunk)
            digest = await body.hexdigest()
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(CHUNKS)
    assert digest == hashlib.sha256(b"".join(CHUNKS)).hexdigest()


async def test_chunks_that_arrive_while_the_thread_writes_go_in_one_batch() -> None:
    """The first chunk goes at once; the nine queued behind it while it is stuck (a pipe
    nobody reads yet) go to disk together, taken by the same thread hop: no hop per batch."""
    written: list[int] = []
    hops: list[int] = []
    reader, writer = os.pipe()

    async def counted(work: Callable[[list[bytes]], None], batch: list[bytes]) -> None:
        hops.append(len(batch))
        await to_thread.run_sync(work, batch)

    try:
        async with BodyWriter(writer, on_written=written.append, run_sync=counted) as body:
            for chunk in CHUNKS:
                await body.write(chunk)
            drained = threading.Thread(target=_drain, args=(reader, 1_000_000))
            drained.start()
            await body.hexdigest()
            drained.join()
    finally:
        os.close(reader)
        os.close(writer)
    assert written == [100_000, 900_000]
    assert hops == [1]  # one hop, started with the first chunk, took the rest too


async def test_write_waits_for_the_thread_once_limit_bytes_wait() -> None:
    """Memory is bounded: with `limit` bytes not on disk yet (a stuck write), write waits."""
    reader, writer = os.pipe()
    try:
        async with BodyWriter(writer, on_written=lambda count: None, limit=250_000) as body:
            await body.write(CHUNKS[0])  # more than a pipe holds: the thread blocks
            await body.write(CHUNKS[1])
            third = asyncio.ensure_future(body.write(CHUNKS[2]))
            done, _ = await asyncio.wait({third}, timeout=0.3)
            assert not done
            drained = threading.Thread(target=_drain, args=(reader, 300_000))
            drained.start()
            await third
            await body.hexdigest()
            drained.join()
    finally:
        os.close(reader)
        os.close(writer)


async def test_a_failed_write_raises_from_the_next_call() -> None:
    """An OSError in the thread (a full disk) comes back from write or hexdigest."""
    reader, writer = os.pipe()
    try:
        with pytest.raises(OSError, match="Bad file descriptor"):
            await _write_through(reader)  # a pipe's read end takes no writes
    finally:
        os.close(reader)
        os.close(writer)


async def _write_through(fd: int) -> str:
    async with BodyWriter(fd, on_written=lambda count: None) as body:
        for chunk in CHUNKS:
            await body.write(chunk)
        return await body.hexdigest()


def _drain(fd: int, count: int) -> None:
    while count > 0:
        count -= len(os.read(fd, count))
