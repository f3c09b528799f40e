"""The ASGI zero-copy send extension: body bytes from a file by os.sendfile (h11's home)."""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, cast

import h11

EXTENSION = "http.response.zerocopysend"
"""The message type, and its key in scope["extensions"] (ASGI extensions, "Zero Copy Send")."""
SLICE = 1024 * 1024
"""Bytes per loop.sendfile call: each must go within the stall timeout, so a client that
takes less than SLICE in that time is cut off, and one that keeps up never is."""
THREADS = 32
"""Files sent by threads at once, per process; a send past them stays on the loop."""
THREADED = 2 * 1024 * 1024
"""Bytes from which a send goes from a thread. A running fill's spans (about 1 MiB each)
stay on the loop: a hop per span cost a one-client cold fill of 192 MB a quarter more CPU
(bench/cold.py --clients 1: 0.42 -> 0.52 s)."""
WAKE = 0.25
"""Seconds a sending thread waits on its client before it looks whether it was called off."""


class ShortFile(OSError):
    """The file ended before the bytes the response promised."""


class Senders:
    """Threads that send the bulk of files to clients, at most `threads` at once.

    One event loop copying for every client serialises the kernel's copies on one core
    (asyncio registers and unregisters the socket with epoll at each wait, too); a thread
    per large send lets the copies of several clients run on every core, as nginx's
    sendfile does across its workers (bench/hits.py, 8 clients of a 40 MB file: 2.1-2.5 ->
    2.6-3.8 GB/s).
    Made in the parent process and pickled into each --workers process: the pool starts
    in the process that first sends.
    """

    def __init__(self, threads: int = THREADS) -> None:
        self.threads = threads
        self.busy = 0  # sends under way in threads (touched on the event loop only)
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"threads": self.threads, "busy": 0, "_pool": None}

    def free(self) -> bool:
        return self.busy < self.threads

    async def send(self, sock: int, file: int, offset: int, count: int, *, stall: float) -> int:
        """os.sendfile bytes [offset, offset + count) of `file` to the non-blocking socket
        `sock` from a thread; the bytes sent (fewer when the file ends first).

        Both descriptors are duplicated for the thread, so closing the originals (a
        connection dropped, a send cancelled) can never point it at another file or
        socket; a cancelled send stops within WAKE seconds. TimeoutError as send_slices.
        """
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="sendfile")
        stop = threading.Event()
        sock, file = os.dup(sock), os.dup(file)
        self.busy += 1
        try:
            job = self._pool.submit(_send, sock, file, offset, count, stall, stop)
        except BaseException:
            self.busy -= 1
            os.close(sock)
            os.close(file)
            raise
        waiting = asyncio.wrap_future(job)
        waiting.add_done_callback(self._done)
        try:
            return await asyncio.shield(waiting)
        finally:
            stop.set()  # a no-op once it returned; else (cancelled) the thread stops

    def _done(self, waiting: asyncio.Future[int]) -> None:
        self.busy -= 1
        if not waiting.cancelled():
            waiting.exception()  # retrieved: a send called off may fail unheard


def _send(
    sock: int, file: int, offset: int, count: int, stall: float, stop: threading.Event
) -> int:
    """Blocking half of Senders.send: each SLICE must go within `stall` seconds; closes
    both descriptors."""
    try:
        poll = select.poll()
        poll.register(sock, select.POLLOUT)
        sent = 0
        while sent < count:
            deadline = time.monotonic() + stall
            end = min(count, sent + SLICE)
            while sent < end:
                if stop.is_set():
                    return sent
                try:
                    done = os.sendfile(sock, file, offset + sent, end - sent)
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"no way for {stall} s") from None
                    poll.poll(min(left, WAKE) * 1000)
                    continue
                if done == 0:
                    return sent  # the file ended
                sent += done
        return sent
    finally:
        os.close(sock)
        os.close(file)


class _Placeholder:
    """Stands for `length` body bytes in h11's framing; h11 only asks for its length."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


async def send_file(
    conn: h11.Connection,
    transport: asyncio.Transport,
    file: IO[bytes],
    offset: int,
    count: int,
    *,
    stall: float,
    senders: Senders | None = None,
) -> None:
    """Send bytes [offset, offset + count) of `file` as the next body bytes of `conn`'s
    response, framed by h11 (Content-Length or chunked), the kernel copying the file to
    the socket (asyncio's loop.sendfile: os.sendfile on plain TCP, after the transport's
    buffer is flushed, with the transport paused meanwhile).

    Raises TimeoutError when a SLICE makes no way for `stall` seconds, OSError when the
    client is gone, ShortFile when the file is shorter: the caller must then close the
    connection (h11 counted the bytes as sent), never end the response cleanly.
    """
    placeholder = _Placeholder(count)
    # h11 passes the Data's object through unchanged between its framing (h11's "sendfile"
    # recipe), so a placeholder with a length stands for the bytes.
    pieces: list[Any] = conn.send_with_data_passthrough(h11.Data(data=cast(Any, placeholder))) or []
    for piece in pieces:
        if piece is placeholder:
            await send_slices(transport, file, offset, count, stall=stall, senders=senders)
        else:
            transport.write(piece)


async def send_slices(
    transport: asyncio.Transport,
    file: IO[bytes],
    offset: int,
    count: int,
    *,
    stall: float,
    senders: Senders | None = None,
) -> None:
    """Send bytes [offset, offset + count) of `file` on `transport` unframed, by the kernel,
    SLICE at a time; TimeoutError, OSError and ShortFile as for send_file.

    From one of `senders`' threads when one is free, the socket is plain (not TLS), the
    transport holds nothing unsent (else the loop sends a SLICE first, after those bytes)
    and at least THREADED bytes are left; else from the loop.
    """
    loop = asyncio.get_running_loop()
    sent = 0
    sock = transport.get_extra_info("socket")
    while sent < count:
        if (
            count - sent >= THREADED
            and senders is not None
            and senders.free()
            and sock is not None
            and transport.get_extra_info("sslcontext") is None
            and not transport.get_write_buffer_size()
        ):
            done = await senders.send(
                sock.fileno(), file.fileno(), offset + sent, count - sent, stall=stall
            )
            if done < count - sent:
                raise ShortFile(f"the file ended {count - sent - done} bytes short")
            return
        size = min(SLICE, count - sent)
        async with asyncio.timeout(stall):
            done = await loop.sendfile(transport, file, offset + sent, size)
        if done < size:
            raise ShortFile(f"the file ended {count - sent - done} bytes short")
        sent += done
