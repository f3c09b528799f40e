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
from proxy.zerocopy import SLICE, WAKE, Senders, ShortFile, send_file, send_slices

CONTENT = os.urandom(3 * SLICE + 12345)


class _Response:
    """A 200 response under way on a real socket transport, its body sent by one of the
    two framings: h11's (zerocopy.send_file) or uvicorn's httptools cycle's."""

    def __init__(self, http: str, transport: asyncio.Transport, senders: Senders | None) -> None:
        self.http = http
        self.transport = transport
        self.senders = senders
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
            await send_file(
                self.conn, self.transport, file, offset, count, stall=stall, senders=self.senders
            )
        else:
            await guardhttptools.send_file(
                self.cycle, file, offset, count, stall=stall, senders=self.senders
            )

    async def end(self) -> None:
        if self.http == "h11":
            self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        else:
            await self.cycle.send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(params=["h11", "httptools"])
def http(request: pytest.FixtureRequest) -> str:
    """Each HTTP implementation's framing in turn."""
    return cast(str, request.param)


@pytest.fixture(params=["loop", "threads"])
def senders(request: pytest.FixtureRequest) -> Senders | None:
    """Sending from the event loop alone, then with threads for the bulk of a file."""
    return Senders() if request.param == "threads" else None


@asynccontextmanager
async def _responding(
    http: str, headers: list[tuple[str, str]], senders: Senders | None = None
) -> AsyncIterator[tuple[_Response, socket.socket]]:
    """A server response that has sent a 200 head with `headers` over a real socket
    transport; the client's end of the socket."""
    ours, theirs = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    response = _Response(http, transport, senders)
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
    file: Path, http: str, senders: Senders | None, offset: int, count: int
) -> None:
    """Bytes [offset, offset + count) arrive as the whole body a Content-Length declared."""
    headers = [("Content-Length", str(count))]
    async with _responding(http, headers, senders) as (response, theirs):
        reading = asyncio.create_task(_read_response(theirs))
        with file.open("rb") as handle:
            await response.send_file(handle, offset, count, stall=5)
        await response.end()
        _, body = await reading
    assert body == CONTENT[offset : offset + count]


@pytest.mark.anyio
@pytest.mark.parametrize("count", [1000, 2 * SLICE + 3])
async def test_without_content_length_the_file_is_one_chunk(
    file: Path, http: str, senders: Senders | None, count: int
) -> None:
    """Under chunked framing, a chunk header and trailer surround the kernel's bytes."""
    async with _responding(http, [], senders) as (response, theirs):
        reading = asyncio.create_task(_read_response(theirs))
        with file.open("rb") as handle:
            await response.send_file(handle, 5, count, stall=5)
        await response.end()
        head, body = await reading
    chunked = dict(head.headers)[b"transfer-encoding"]
    assert (chunked, body) == (b"chunked", CONTENT[5 : 5 + count])


@pytest.mark.anyio
@pytest.mark.parametrize("short", [100, SLICE + 100])
async def test_a_file_shorter_than_promised_fails_the_send(
    file: Path, http: str, senders: Senders | None, short: int
) -> None:
    """A count past the file's end raises ShortFile, never a silently short body."""
    offset, count = len(CONTENT) - short, short + 100
    async with _responding(http, [("Content-Length", str(count))], senders) as (response, theirs):
        reading = asyncio.create_task(asyncio.to_thread(_drain, theirs))
        with file.open("rb") as handle, pytest.raises(ShortFile):
            await response.send_file(handle, offset, count, stall=5)
        response.transport.abort()
        await reading


@pytest.mark.anyio
async def test_a_client_that_reads_nothing_times_the_send_out(
    file: Path, http: str, senders: Senders | None
) -> None:
    """With the client's socket full, a slice that makes no way for `stall` seconds raises
    TimeoutError instead of waiting for ever."""
    headers = [("Content-Length", str(len(CONTENT)))]
    async with _responding(http, headers, senders) as (response, theirs):
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        started = asyncio.get_running_loop().time()
        with file.open("rb") as handle, pytest.raises(TimeoutError):
            await response.send_file(handle, 0, len(CONTENT), stall=0.3)
        assert asyncio.get_running_loop().time() - started < 5


def _drain(sock: socket.socket, limit: int | None = None) -> bytes:
    """Read `sock` to its end, or its first `limit` bytes."""
    data = bytearray()
    while limit is None or len(data) < limit:
        chunk = sock.recv(1 << 20 if limit is None else min(1 << 20, limit - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _body(raw: bytes) -> bytes:
    """The body of the whole response `raw`, read by an h11 client."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/f", headers=[("Host", "proxy")]))
    client.send(h11.EndOfMessage())
    client.receive_data(raw)
    body = bytearray()
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        assert event is not h11.NEED_DATA, "the response ended short"
        if isinstance(event, h11.Data):
            body += event.data
    return bytes(body)


async def _until(condition: Any, seconds: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _held_in_thread(
    response: _Response, client: socket.socket, file: IO[bytes], senders: Senders
) -> tuple[asyncio.Task[None], bytes]:
    """Start sending all of `file`, the client reading only its first two slices: the send
    then waits on the client in a thread. The send's task, and what the client read."""
    sending = asyncio.create_task(response.send_file(file, 0, len(CONTENT), stall=30))
    read = await asyncio.to_thread(_drain, client, 2 * SLICE)
    await _until(lambda: senders.busy == 1)
    return sending, read


@pytest.mark.anyio
async def test_the_bulk_of_a_file_goes_from_a_thread(file: Path, http: str) -> None:
    """A large send waits on its client in one of the senders' threads, which is free
    again once the send is done."""
    senders = Senders()
    headers = [("Content-Length", str(len(CONTENT)))]
    async with _responding(http, headers, senders) as (response, theirs):
        with file.open("rb") as handle:
            sending, read = await _held_in_thread(response, theirs, handle, senders)
            reading = asyncio.create_task(asyncio.to_thread(_drain, theirs))
            await sending
        await response.end()
        response.transport.close()
        raw = read + await reading
    assert (_body(raw) == CONTENT, senders.busy) == (True, 0)


@pytest.mark.anyio
async def test_sends_past_the_threads_stay_on_the_loop(file: Path, http: str) -> None:
    """With every thread busy, a further send still delivers its whole body (from the loop)."""
    senders = Senders(threads=1)
    headers = [("Content-Length", str(len(CONTENT)))]
    async with (
        _responding(http, headers, senders) as (first, first_client),
        _responding(http, headers, senders) as (second, second_client),
    ):
        with file.open("rb") as one, file.open("rb") as two:
            held, read = await _held_in_thread(first, first_client, one, senders)
            reading = asyncio.create_task(_read_response(second_client))
            await second.send_file(two, 0, len(CONTENT), stall=5)
            await second.end()
            _, body = await reading
            assert (body == CONTENT, senders.busy) == (True, 1)
            first_reading = asyncio.create_task(asyncio.to_thread(_drain, first_client))
            await held
        await first.end()
        first.transport.close()
        raw = read + await first_reading
    assert _body(raw) == CONTENT


@pytest.mark.anyio
async def test_a_cancelled_send_stops_its_thread(file: Path, http: str) -> None:
    """A send called off (its connection dropped) sends nothing more: the client's read
    ends short soon after, though the thread held its own copy of the socket."""
    senders = Senders()
    async with _responding(http, [("Content-Length", str(len(CONTENT)))], senders) as (
        response,
        theirs,
    ):
        with file.open("rb") as handle:
            sending, read = await _held_in_thread(response, theirs, handle, senders)
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
        response.transport.abort()
        started = asyncio.get_running_loop().time()
        rest = await asyncio.to_thread(_drain, theirs)
        seconds = asyncio.get_running_loop().time() - started
        await _until(lambda: senders.busy == 0)
    assert len(read + rest) < len(CONTENT)
    assert seconds < 10 * WAKE + 2


@pytest.mark.anyio
async def test_bytes_the_transport_still_holds_go_first(file: Path) -> None:
    """While the transport holds bytes it could not send yet, the file waits for them
    (from the loop) instead of overtaking them from a thread."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    prefix = os.urandom(4 * SLICE)  # more than the socket takes while nobody reads
    try:
        transport.write(prefix)
        assert transport.get_write_buffer_size() > 0
        wanted = len(prefix) + len(CONTENT)
        reading = asyncio.create_task(asyncio.to_thread(_drain, theirs, wanted))
        with file.open("rb") as handle:
            await send_slices(transport, handle, 0, len(CONTENT), stall=5, senders=Senders())
        assert await reading == prefix + CONTENT
    finally:
        transport.abort()
        theirs.close()
