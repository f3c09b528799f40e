"""Zero-copy send: a file's bytes framed by h11 and sent by the kernel, or the send fails."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import h11
import pytest

from proxy.zerocopy import SLICE, ShortFile, send_file

CONTENT = os.urandom(3 * SLICE + 12345)


@asynccontextmanager
async def _responding(
    headers: list[tuple[str, str]],
) -> AsyncIterator[tuple[h11.Connection, asyncio.Transport, socket.socket]]:
    """An h11 server connection that has sent a 200 head with `headers` over a real
    socket transport; the client's end of the socket."""
    ours, theirs = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET /f HTTP/1.1\r\nHost: proxy\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    transport.write(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
    try:
        yield conn, transport, theirs
    finally:
        transport.abort()
        theirs.close()


async def _read_response(sock: socket.socket) -> tuple[h11.Response, bytes]:
    """The response on `sock`, read by an h11 client until its end."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/f", headers=[("Host", "proxy")]))
    client.send(h11.EndOfMessage())
    head, body = None, bytearray()
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await asyncio.to_thread(sock.recv, 1 << 20))
        elif isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return head, bytes(body)


@pytest.fixture
def file(tmp_path: Path) -> Path:
    path = tmp_path / "file"
    path.write_bytes(CONTENT)
    return path


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("offset", "count"), [(0, len(CONTENT)), (SLICE - 7, SLICE + 100), (len(CONTENT) - 1, 1)]
)
async def test_a_range_of_the_file_is_the_body_under_content_length(
    file: Path, offset: int, count: int
) -> None:
    """Bytes [offset, offset + count) arrive as the whole body a Content-Length declared."""
    async with _responding([("Content-Length", str(count))]) as (conn, transport, theirs):
        reading = asyncio.create_task(_read_response(theirs))
        with file.open("rb") as handle:
            await send_file(conn, transport, handle, offset, count, stall=5)
        transport.write(conn.send(h11.EndOfMessage()) or b"")
        _, body = await reading
    assert body == CONTENT[offset : offset + count]


@pytest.mark.anyio
async def test_without_content_length_the_file_is_one_chunk(file: Path) -> None:
    """Under chunked framing, h11's chunk header and trailer surround the kernel's bytes."""
    async with _responding([]) as (conn, transport, theirs):
        reading = asyncio.create_task(_read_response(theirs))
        with file.open("rb") as handle:
            await send_file(conn, transport, handle, 5, 1000, stall=5)
        transport.write(conn.send(h11.EndOfMessage()) or b"")
        head, body = await reading
    assert (dict(head.headers)[b"transfer-encoding"], body) == (b"chunked", CONTENT[5:1005])


@pytest.mark.anyio
async def test_a_file_shorter_than_promised_fails_the_send(file: Path) -> None:
    """A count past the file's end raises ShortFile, never a silently short body."""
    offset = len(CONTENT) - 100
    async with _responding([("Content-Length", "200")]) as (conn, transport, _):
        with file.open("rb") as handle, pytest.raises(ShortFile):
            await send_file(conn, transport, handle, offset, 200, stall=5)


@pytest.mark.anyio
async def test_a_client_that_reads_nothing_times_the_send_out(file: Path) -> None:
    """With the client's socket full, a slice that makes no way for `stall` seconds raises
    TimeoutError instead of waiting for ever."""
    async with _responding([("Content-Length", str(len(CONTENT)))]) as (conn, transport, theirs):
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        started = asyncio.get_running_loop().time()
        with file.open("rb") as handle, pytest.raises(TimeoutError):
            await send_file(conn, transport, handle, 0, len(CONTENT), stall=0.3)
        assert asyncio.get_running_loop().time() - started < 5
