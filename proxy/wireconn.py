"""One HTTP/1.1 client connection: requests written with flow control, responses parsed by
httptools (its only import) and held, bounded, until read."""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterator, Callable

import httptools
import httpx

MAX_BUFFERED = 1024 * 1024
"""Body bytes held for a slow reader before the socket stops being read."""
_FORBIDDEN_NAME = re.compile(rb"[\x00-\x20:\x7f]")
_FORBIDDEN_VALUE = re.compile(rb"[\x00\r\n]")  # a value with these would smuggle a header
_NO_BODY = (204, 304)  # RFC 9112 6.3: and every 1xx, and every answer to a HEAD

Failure = tuple[type[httpx.TransportError], str]


async def _wait(
    future: asyncio.Future[None], within: float | None, failure: Failure, request: httpx.Request
) -> None:
    """Await `future` for at most `within` seconds, else raise `failure`."""
    try:
        async with asyncio.timeout(within):
            await future
    except TimeoutError as exc:
        raise failure[0](failure[1], request=request) from exc


def request_head(request: httpx.Request) -> bytes:
    """The request line and header fields as httpx made them (Host, Content-Length or
    Transfer-Encoding included)."""
    target = request.url.raw_path
    if _FORBIDDEN_VALUE.search(target) or b" " in target:
        raise httpx.LocalProtocolError("the request target is malformed", request=request)
    lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if _FORBIDDEN_NAME.search(name) or _FORBIDDEN_VALUE.search(value):
            raise httpx.LocalProtocolError("a header field is malformed", request=request)
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection carrying one exchange at a time; its response is parsed as it
    arrives and its body held (up to MAX_BUFFERED) until read."""

    def __init__(self, where: str) -> None:
        self.where = where  # host:port, for messages (never a path: it may hold a signature)
        self.idle_since = 0.0
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None  # the reader's
        self._drainer: asyncio.Future[None] | None = None  # the writer's
        self._writing_paused = False
        self._reading_paused = False
        self._broken: Failure | None = None
        self._start(head_only=False, keep=True)
        self._complete = True  # no exchange under way

    def _start(self, *, head_only: bool, keep: bool) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only, self._keep = head_only, keep
        self.received = False  # any byte of this exchange's response
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._framed = False  # Content-Length or chunked: else the body ends at EOF
        self._length: int | None = None  # Content-Length, unless chunked
        self._chunked = False
        self._left: int | None = None  # body bytes still to come past the parser (raw)
        self._head_done = False
        self._complete = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._complete:
            self._keep = False  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        self.received = True
        if self._left is not None:
            self._raw(data)
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._break(httpx.RemoteProtocolError, "the server sent a malformed response")
            self.close()

    def eof_received(self) -> bool:
        self._ended()
        self.closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None:
            self._ended()
        else:
            self._break(httpx.ReadError, f"the connection to {self.where} broke: {exc}")
        self._break(httpx.RemoteProtocolError, f"{self.where} closed the connection")
        self._wake_writer()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writer()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reason = b""
        self._headers = []
        self._framed = self._chunked = False
        self._length = None

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            self._framed = True
            if value.strip().isdigit():
                self._length = int(value)
        elif lowered == b"transfer-encoding" and value.lower().endswith(b"chunked"):
            self._framed = self._chunked = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            return  # 1xx: an interim answer, the final one follows
        self._status = status
        self._keep = self._keep and self._parser.should_keep_alive()
        self._head_done = True
        if self._head_only or status in _NO_BODY:
            self._complete = True
        elif self._length is not None and not self._chunked:
            # Past the bytes of this read, the body's bytes go to the reader as they come:
            # the parser would only copy them (counted against Content-Length here).
            self._left = self._length
        self._wake_reader()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            self._keep = False  # a body where none may be
            return
        if self._left is not None:
            self._left -= len(body)
        self._take(body)

    def _raw(self, data: bytes) -> None:
        """Body bytes of a Content-Length body past its head's read, as they came."""
        assert self._left is not None
        if len(data) > self._left:
            self._keep = False  # bytes past the body nobody asked for: never reused
            data = data[: self._left]
        self._left -= len(data)
        if data:
            self._take(data)
        if not self._left:
            self._complete = True
            self._wake_reader()

    def _take(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > MAX_BUFFERED and not self._reading_paused:
            self._reading_paused = True
            self._pause_reading()
        self._wake_reader()

    def on_message_complete(self) -> None:
        if self._head_done:
            self._complete = True
            self._wake_reader()

    # -- the exchange ----------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def _ended(self) -> None:
        """The server sent its last byte: an unframed body ends here."""
        if not self._complete and self._head_done and not self._framed:
            self._keep = False
            self._complete = True
            self._wake_reader()

    def _break(self, kind: type[httpx.TransportError], message: str) -> None:
        if self._broken is None:
            self._broken = (kind, message)
            self._keep = False
        self._wake_reader()

    def _wake_reader(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _wake_writer(self) -> None:
        if self._drainer is not None and not self._drainer.done():
            self._drainer.set_result(None)

    def usable(self) -> bool:
        """Whether this connection may carry another exchange."""
        return not self.closed and self._broken is None and self._keep

    def reusable(self) -> bool:
        """Whether the exchange ended cleanly, all read, and the connection may carry another."""
        return self.usable() and self._complete and not self._chunks

    def close(self) -> None:
        """Close the connection at once: nothing it still holds or sends is wanted (a TLS
        close would wait for the server's close_notify, reading what it still sends)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    def begin(self, request: httpx.Request) -> None:
        """Start an exchange for `request` on this (fresh or idle) connection."""
        close = "close" in request.headers.get("connection", "").lower()
        self._start(head_only=request.method == "HEAD", keep=not close)

    async def write(self, data: bytes, within: float | None, request: httpx.Request) -> None:
        """Send `data`, waiting (at most `within`) while the socket's buffer is full."""
        transport = self._transport
        if self._broken is not None or transport is None or transport.is_closing():
            raise httpx.WriteError(f"{self.where} closed the connection", request=request)
        transport.write(data)
        if self._writing_paused:
            self._drainer = self._loop.create_future()
            failure = (httpx.WriteTimeout, f"{self.where} did not take the request in time")
            await _wait(self._drainer, within, failure, request)
            if self.closed:
                raise httpx.WriteError(f"{self.where} closed the connection", request=request)

    async def send(self, request: httpx.Request, head: bytes, within: float | None) -> None:
        """Send the request's `head`, then its body as it comes (chunk-encoded when the
        headers say Transfer-Encoding: chunked)."""
        await self.write(head, within, request)
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        assert isinstance(request.stream, httpx.AsyncByteStream)
        async for chunk in request.stream:
            if not chunk:
                continue  # an empty chunk would end a chunked body
            if chunked:
                await self.write(b"%x\r\n" % len(chunk), within, request)
                await self.write(chunk, within, request)
                await self.write(b"\r\n", within, request)
            else:
                await self.write(chunk, within, request)
        if chunked:
            await self.write(b"0\r\n\r\n", within, request)

    async def _until_woken(self, within: float | None, request: httpx.Request) -> None:
        self._waiter = self._loop.create_future()
        failure = (httpx.ReadTimeout, f"{self.where} did not answer in time")
        try:
            await _wait(self._waiter, within, failure, request)
        finally:
            self._waiter = None

    def _raise(self, request: httpx.Request) -> None:
        if self._broken is not None:
            raise self._broken[0](self._broken[1], request=request)

    async def response(self, request: httpx.Request, within: float | None) -> httpx.Response:
        """Wait for the response's head (1xx skipped); its body is read with `read`."""
        while not self._head_done:
            self._raise(request)
            await self._until_woken(within, request)
        version = self._parser.get_http_version()
        return httpx.Response(
            self._status,
            headers=self._headers,
            stream=Body(self, request, within),
            extensions={
                "http_version": b"HTTP/" + version.encode("ascii"),
                "reason_phrase": self._reason.strip(),
            },
        )

    async def read(self, request: httpx.Request, within: float | None) -> bytes:
        """The next body chunk as received; b"" at the body's end."""
        while not self._chunks:
            if self._complete:
                return b""
            self._raise(request)
            await self._until_woken(within, request)
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= MAX_BUFFERED:
            self._reading_paused = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
        return chunk


class Body(httpx.AsyncByteStream):
    """A response body, read from its connection; closing it gives the connection back."""

    def __init__(self, connection: Connection, request: httpx.Request, within: float | None):
        self._connection = connection
        self._request = request
        self._timeout = within
        self._done: Callable[[Connection], None] | None = None

    def on_close(self, done: Callable[[Connection], None]) -> None:
        """Call `done` with the connection once, when this body is closed."""
        self._done = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self._connection.read(self._request, self._timeout):
            yield chunk

    async def aclose(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(self._connection)
