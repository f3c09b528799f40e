"""The ASGI zero-copy send extension: body bytes from a file by os.sendfile (h11's home)."""

from __future__ import annotations

import asyncio
from typing import IO, Any, cast

import h11

EXTENSION = "http.response.zerocopysend"
"""The message type, and its key in scope["extensions"] (ASGI extensions, "Zero Copy Send")."""
SLICE = 1024 * 1024
"""Bytes per loop.sendfile call: each must go within the stall timeout, so a client that
takes less than SLICE in that time is cut off, and one that keeps up never is."""


class ShortFile(OSError):
    """The file ended before the bytes the response promised."""


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
            await send_slices(transport, file, offset, count, stall=stall)
        else:
            transport.write(piece)


async def send_slices(
    transport: asyncio.Transport, file: IO[bytes], offset: int, count: int, *, stall: float
) -> None:
    """Send bytes [offset, offset + count) of `file` on `transport` unframed, by the kernel,
    SLICE at a time; TimeoutError, OSError and ShortFile as for send_file."""
    loop = asyncio.get_running_loop()
    sent = 0
    while sent < count:
        size = min(SLICE, count - sent)
        async with asyncio.timeout(stall):
            done = await loop.sendfile(transport, file, offset + sent, size)
        if done < size:
            raise ShortFile(f"the file ended {count - sent - done} bytes short")
        sent += done
