"""The guard's transport: a response head held until its first body bytes, one write for both."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from proxy.guard import Connections, Holding, Limits
from proxy.server import guarded_protocol

LIMITS = Limits(header_timeout=5.0, max_connections=10, backlog=10)
PAGE = b"<html>" + b"x" * 900 + b"</html>"


class Recording(asyncio.Transport):
    """A socket transport stand-in that keeps each write as the socket would get it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def test_writes_while_held_reach_the_socket_as_one_write_on_release() -> None:
    """hold(), two writes, release(): the transport gets one write of both, in order."""
    raw = Recording()
    holding = Holding(raw)
    holding.write(b"head")
    holding.hold()
    holding.write(b"er\r\n\r\n")
    holding.write(memoryview(b"body"))
    assert raw.writes == [b"head"]
    holding.release()
    assert raw.writes == [b"head", b"er\r\n\r\nbody"]


def test_closing_writes_what_was_held_and_aborting_drops_it() -> None:
    """close() sends the held bytes before closing; abort() discards them."""
    closed, aborted = Recording(), Recording()
    for raw in (closed, aborted):
        holding = Holding(raw)
        holding.hold()
        holding.write(b"HTTP/1.1 500 \r\n\r\n")
        holding.close() if raw is closed else holding.abort()
    assert closed.writes == [b"HTTP/1.1 500 \r\n\r\n"]
    assert closed.closed
    assert aborted.writes == []
    assert aborted.aborted


async def _page(scope: Any, receive: Any, send: Any) -> None:
    headers = [(b"content-type", b"text/html"), (b"content-length", str(len(PAGE)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": PAGE})


@pytest.mark.anyio
@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_a_small_response_is_one_write_to_the_socket(http: str) -> None:
    """A page's head and body go to the socket in a single write (one send syscall), with
    either HTTP implementation."""
    config = uvicorn.Config(_page, http=http, log_level="warning", lifespan="off")
    config.load()
    protocol = guarded_protocol("h11" if http == "h11" else "httptools")(
        config, ServerState(), {}, connections=Connections(LIMITS)
    )
    raw = Recording()
    protocol.connection_made(raw)
    protocol.data_received(b"GET /page HTTP/1.1\r\nHost: proxy\r\n\r\n")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not protocol.cycle.response_complete:
        assert loop.time() < deadline, "no response"
        await asyncio.sleep(0.001)
    assert len(raw.writes) == 1
    head, _, body = raw.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == PAGE
    protocol.connection_lost(None)
