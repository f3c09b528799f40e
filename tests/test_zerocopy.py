"""Zero-copy send: a file's bytes framed as h11 or httptools would, sent by the kernel."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any, cast

import h11
import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from proxy import guardhttptools
from proxy.zerocopy import SLICE, ShortFile, send_file

CONTENT = os.urandom(3 * SLICE + 12345)


class _Response:
    """A 200 response under way on a real socket transport, its body sent by one of the
    two framings: h11's (zerocopy.send_file) or uvicorn's httptools cycle's."""

    def __init__(self, http: str, transport: asyncio.Transport) -> None:
        self.http = http
        self.transport = transport
        self.conn = h11.Connection(h11.SERVER)
        self.cycle = RequestResponseCycle(
            scope=cast(Any, {"type": "http", "method": "GET", "path": "/f"}),
            transport=transport,
            flow=FlowControl(transport),
            logger=logging.getLogger("uvicorn.error"),
            access_logger=logging.getLogger("uvicorn.access"),
            access_log=False,
            default_headers=[],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=True,
            on_response=lambda: None,
        )

    async def start(self, headers: list[tuple[str, str]]) -> None:
        if self.http == "h11":
            self.conn.receive_data(b"GET /f HTTP/1.1\r\nHost: proxy\r\n\r\n")
            assert isinstance(self.conn.next_event(), h11.Request)
            response = h11.Response(status_code=200, headers=headers)
            self.transport.write(self.conn.send(response) or b"")
        else:
            raw = [(name.lower().encode(), value.encode()) for name, value in headers]
            await self.cycle.send({"type": "http.response.start", "status": 200, "headers": raw})

    async def send_file(self, file: IO[bytes], offset: int, count: int, *, stall: float) -> None:
        if self.http == "h11":
            await send_file(self.conn, self.transport, file, offset, count, stall=stall)
        else:
            await guardhttptools.send_file(self.cycle, file, offset, count, stall=stall)

    async def end(self) -> None:
        if self.http == "h11":
            self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        else:
            await self.cycle.send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(params=["h11", "httptools"])
def http(request: pytest.FixtureRequest) -> str:
    """Each HTTP implementation's framing in turn."""
    return cast(str, request.param)


@asynccontextmanager
async def _responding(
    http: str, headers: list[tuple[str, str]]
) -> AsyncIterator[tuple[_Response, socket.socket]]:
    """A server response that has sent a 200 head with `headers` over a real socket
    transport; the client's end of the socket."""
    ours, theirs = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    response = _Response(http, transport)
    await response.start(headers)
    try:
        yield response, theirs
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
    file: Path, http: str, offset: int, count: int
) -> None:
    """Bytes [offset, offset + count) arrive as the whole body a Content-Length declared."""
    async with _responding(http, [("Content-Length", str(count))]) as (response, theirs):
        reading = asyncio.create_task(_read_response(theirs))
        with file.open("rb") as handle:
            await response.send_file(handle, offset, count, stall=5)
        await response.end()
        _, body = await reading
    assert body == CONTENT[offset : offset + count]


@pytest.mark.anyio
async def test_without_content_length_the_file_is_one_chunk(file: Path, http: str) -> None:
    """Under chunked framing, a chunk header and trailer surround the kernel's bytes."""
    async with _responding(http, []) as (response, theirs):
        reading = asyncio.create_task(_read_response(theirs))
        with file.open("rb") as handle:
            await response.send_file(handle, 5, 1000, stall=5)
        await response.end()
        head, body = await reading
    assert (dict(head.headers)[b"transfer-encoding"], body) == (b"chunked", CONTENT[5:1005])


@pytest.mark.anyio
async def test_a_file_shorter_than_promised_fails_the_send(file: Path, http: str) -> None:
    """A count past the file's end raises ShortFile, never a silently short body."""
    offset = len(CONTENT) - 100
    async with _responding(http, [("Content-Length", "200")]) as (response, _):
        with file.open("rb") as handle, pytest.raises(ShortFile):
            await response.send_file(handle, offset, 200, stall=5)


@pytest.mark.anyio
async def test_a_client_that_reads_nothing_times_the_send_out(file: Path, http: str) -> None:
    """With the client's socket full, a slice that makes no way for `stall` seconds raises
    TimeoutError instead of waiting for ever."""
    async with _responding(http, [("Content-Length", str(len(CONTENT)))]) as (response, theirs):
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        started = asyncio.get_running_loop().time()
        with file.open("rb") as handle, pytest.raises(TimeoutError):
            await response.send_file(handle, 0, len(CONTENT), stall=0.3)
        assert asyncio.get_running_loop().time() - started < 5
