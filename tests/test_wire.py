"""Wire: httpx's HTTP/1.1 transport over asyncio, against real servers on loopback."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import socket
import ssl
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType

import httpx
import pytest

from proxy.wire import MAX_PER_ORIGIN, Wire
from tests.fakehttp import Faults, LoopbackServer, Request, Response, json_response

pytestmark = pytest.mark.anyio
DEADLINE = 10.0  # seconds any awaited condition gets before the test fails
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
BLOCK = bytes(range(256)) * 4096  # 1 MiB
SECRET = "s3cret-token"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Raw:
    """A loopback server running `handler` on each connection; counts connections."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.accepted = 0
        self._handler = handler
        self._tls = tls
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Raw:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes]]:
    """A request's line and its headers (names lower-cased); its body is left unread."""
    lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
    fields = (line.partition(b":") for line in lines[1:] if line)
    return lines[0], {name.strip().lower(): value.strip() for name, _, value in fields}


def answering(*replies: bytes) -> Handler:
    """A handler answering each request on a connection with the next reply (the last one
    repeated), until the client closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for index in range(10**6):
            await read_request(reader)
            writer.write(replies[min(index, len(replies) - 1)])
            await writer.drain()

    return handle


async def within_deadline(awaitable: Awaitable[object]) -> None:
    await asyncio.wait_for(awaitable, DEADLINE)


def client(
    *, ca_bundle: str = "", max_per_origin: int = MAX_PER_ORIGIN, keepalive_expiry: float = 5.0
) -> httpx.AsyncClient:
    """An httpx client on a Wire of its own."""
    transport = Wire(
        ca_bundle=ca_bundle, max_per_origin=max_per_origin, keepalive_expiry=keepalive_expiry
    )
    return httpx.AsyncClient(transport=transport, trust_env=False)


async def test_sequential_requests_share_one_connection() -> None:
    """Requests one after another reuse one kept-alive connection."""
    async with Raw(answering(OK)) as server, client() as http:
        for _ in range(5):
            assert (await http.get(server.url + "/x")).content == b"ok"
    assert server.accepted == 1


async def test_an_idle_connection_past_its_expiry_is_not_reused() -> None:
    """A connection idle longer than keepalive_expiry is closed, not reused."""
    async with Raw(answering(OK)) as server, client(keepalive_expiry=0.0) as http:
        for _ in range(2):
            assert (await http.get(server.url)).content == b"ok"
    assert server.accepted == 2


async def test_parallel_requests_each_get_a_connection_then_reuse_them() -> None:
    """N requests at once open N connections; the next N reuse them."""
    arrived, everyone = 0, asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        while True:
            await read_request(reader)
            arrived += 1
            if arrived == 4:
                everyone.set()
            await everyone.wait()  # answer only once all four are in flight
            writer.write(OK)

    async with Raw(handle) as server, client() as http:
        for _ in range(2):
            answers = await asyncio.gather(*[http.get(server.url) for _ in range(4)])
            assert [answer.status_code for answer in answers] == [200] * 4
    assert server.accepted == 4


async def test_connections_per_origin_are_capped() -> None:
    """Beyond max_per_origin connections, requests wait for one to come free."""
    async with Raw(answering(OK)) as server, client(max_per_origin=2) as http:
        answers = await asyncio.gather(*[http.get(server.url) for _ in range(6)])
    assert [answer.content for answer in answers] == [b"ok"] * 6
    assert server.accepted <= 2


async def test_waiting_beyond_the_cap_honours_the_pool_timeout() -> None:
    """A request that finds every connection busy for longer than "pool" fails with PoolTimeout."""
    async with (
        Raw(answering(OK)) as server,
        client(max_per_origin=1) as http,
        http.stream("GET", server.url),
    ):
        with pytest.raises(httpx.PoolTimeout):
            await http.get(server.url, timeout=httpx.Timeout(5, pool=0.05))


async def test_a_chunked_body_is_read_whole_and_the_connection_kept() -> None:
    """A chunked response arrives whole and its connection carries the next request."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    async with Raw(answering(chunked)) as server, client() as http:
        assert (await http.get(server.url)).content == b"abcdefg"
        assert (await http.get(server.url)).content == b"abcdefg"
    assert server.accepted == 1


async def test_a_body_without_length_ends_when_the_server_closes() -> None:
    """A body with neither length nor chunks runs to EOF, and its connection is not reused."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")

    async with Raw(handle) as server, client() as http:
        assert (await http.get(server.url)).content == b"until the end"
        assert (await http.get(server.url)).content == b"until the end"
    assert server.accepted == 2


async def test_a_head_answer_has_no_body_and_keeps_the_connection() -> None:
    """A HEAD's Content-Length is reported, no body is awaited, and the connection is reused."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    async with Raw(answering(head, OK)) as server, client() as http:
        answer = await http.head(server.url)
        assert (answer.headers["content-length"], answer.content) == ("1000", b"")
        assert (await http.get(server.url)).content == b"ok"
    assert server.accepted == 1


async def test_a_304_has_no_body_and_keeps_the_connection() -> None:
    """A 304 ends at its headers; the connection carries the next request."""
    not_modified = b'HTTP/1.1 304 Not Modified\r\nETag: "1"\r\n\r\n'
    async with Raw(answering(not_modified, OK)) as server, client() as http:
        assert (await http.get(server.url)).status_code == 304
        assert (await http.get(server.url)).content == b"ok"
    assert server.accepted == 1


async def test_an_interim_answer_is_skipped() -> None:
    """A 100 Continue before the answer is passed over."""
    async with Raw(answering(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)) as server, client() as http:
        answer = await http.get(server.url)
    assert (answer.status_code, answer.content) == (200, b"ok")


async def test_connection_close_from_the_server_is_not_reused() -> None:
    """An answer with Connection: close leaves its connection out of the pool."""
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    async with Raw(answering(closing)) as server, client() as http:
        for _ in range(2):
            assert (await http.get(server.url)).content == b"ok"
    assert server.accepted == 2


async def test_connection_close_from_the_client_is_not_reused() -> None:
    """A request with Connection: close leaves its connection out of the pool."""
    async with Raw(answering(OK)) as server, client() as http:
        for _ in range(2):
            answer = await http.get(server.url, headers={"Connection": "close"})
            assert answer.content == b"ok"
    assert server.accepted == 2


async def test_an_idle_connection_the_server_closed_is_not_used() -> None:
    """After the server closes an idle kept-alive connection, the next GET gets a new one."""
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    async with Raw(handle) as server, client() as http:
        assert (await http.get(server.url)).content == b"ok"
        await within_deadline(closed.wait())
        assert (await http.get(server.url)).content == b"ok"
    assert server.accepted == 2


def _dropping_second_request() -> Handler:
    """The first connection answers one request and drops the second unanswered."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        if connections == 1:
            await read_request(reader)
            return  # closed with no answer: a keep-alive race the client cannot see coming
        await answering(OK)(reader, writer)

    return handle


async def test_a_get_dropped_on_a_reused_connection_is_sent_again_once() -> None:
    """A GET that a reused connection drops before any answer byte is sent on a new one."""
    async with Raw(_dropping_second_request()) as server, client() as http:
        assert (await http.get(server.url)).content == b"ok"
        assert (await http.get(server.url)).content == b"ok"
    assert server.accepted == 2


async def test_a_post_dropped_on_a_reused_connection_is_not_sent_again() -> None:
    """A POST is never sent twice: the dropped connection is an error."""
    async with Raw(_dropping_second_request()) as server, client() as http:
        assert (await http.post(server.url, content=b"1")).content == b"ok"
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(server.url, content=b"2")


def _stalling() -> tuple[Handler, asyncio.Event]:
    """A server that reads the request head and answers nothing until the event is set."""
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await release.wait()

    return handle, release


async def test_no_answer_in_time_is_a_read_timeout() -> None:
    """A server that never answers fails the request with ReadTimeout after "read" seconds."""
    handle, release = _stalling()
    async with Raw(handle) as server, client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(server.url, timeout=0.1)
        release.set()


async def test_a_body_that_stops_is_a_read_timeout() -> None:
    """A body that stops arriving fails its reader with ReadTimeout."""
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await release.wait()

    async with Raw(handle) as server, client() as http:
        async with http.stream("GET", server.url, timeout=0.1) as answer:
            with pytest.raises(httpx.ReadTimeout):
                await answer.aread()
        release.set()


async def test_a_closed_port_is_a_connect_error() -> None:
    """Nothing listening: ConnectError."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_a_body_cut_short_is_a_protocol_error() -> None:
    """A server closing before Content-Length bytes came fails the reader."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")

    async with Raw(handle) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(server.url)


def _big_answer(body: bytes, *, length: int) -> Handler:
    """A handler answering every request with `body` under `Content-Length: length`."""
    return answering(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length + body)


async def test_a_big_body_over_many_reads_is_exact_and_the_connection_kept() -> None:
    """A Content-Length body far larger than one socket read arrives byte for byte, and
    its connection carries the next request."""
    body = BLOCK * 4
    async with Raw(_big_answer(body, length=len(body))) as server, client() as http:
        for _ in range(2):
            assert (await http.get(server.url)).content == body
    assert server.accepted == 1


async def test_bytes_past_a_big_body_are_dropped_with_the_connection() -> None:
    """Bytes a server sends past Content-Length are not part of the body, and the
    connection they came on is not used again."""
    body = BLOCK * 4
    answer = _big_answer(body + b"junk", length=len(body))
    async with Raw(answer) as server, client() as http:
        for _ in range(2):
            assert (await http.get(server.url)).content == body
    assert server.accepted == 2


async def test_a_big_body_cut_short_is_a_protocol_error() -> None:
    """A server closing after part of a body of many reads fails the reader."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (4 * len(BLOCK)))
        writer.write(BLOCK * 2)
        await writer.drain()

    async with Raw(handle) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(server.url)


async def test_a_malformed_answer_is_a_protocol_error() -> None:
    """Bytes that are not HTTP fail the request with RemoteProtocolError."""
    async with Raw(answering(b"SSH-2.0-OpenSSH\r\n\r\n")) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(server.url)


async def test_a_body_closed_early_closes_its_connection() -> None:
    """Closing a response before its end closes the connection; the next request opens one."""
    hung_up = asyncio.Event()
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (4 * len(BLOCK))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(big)
        try:
            for _ in range(4):
                writer.write(BLOCK)
                await writer.drain()
            await answering(OK)(reader, writer)
        finally:
            hung_up.set()

    async with Raw(handle) as server, client() as http:
        async with http.stream("GET", server.url) as answer:
            async for _chunk in answer.aiter_raw():
                break
        await within_deadline(hung_up.wait())
        assert (await http.get(server.url)).status_code == 200
    assert server.accepted == 2


class _Pusher(asyncio.Protocol):
    """Answers one request with `blocks` MiB, written as fast as the client takes them;
    `settled` is set while it cannot write (paused) or has written everything."""

    def __init__(self, blocks: int, settled: asyncio.Event) -> None:
        self._left = blocks
        self._settled = settled
        self._paused = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (self._left << 20))
        self._push()

    def _push(self) -> None:
        assert self._transport is not None
        while self._left and not self._paused:
            self._left -= 1
            self._transport.write(BLOCK)
        if not self._left:
            self._settled.set()

    def pause_writing(self) -> None:
        self._paused = True
        self._settled.set()

    def resume_writing(self) -> None:
        self._paused = False
        self._settled.clear()
        self._push()


async def test_a_big_body_read_slowly_is_held_in_bounded_memory() -> None:
    """64 MiB read more slowly than they come stay in the socket, not in memory, and arrive
    whole: the reader takes a chunk only while the server cannot write."""
    settled = asyncio.Event()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Pusher(64, settled), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/big"
    expected = hashlib.sha256(BLOCK * 64).hexdigest()
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        async with client() as http, http.stream("GET", url) as answer:
            async for chunk in answer.aiter_raw():
                digest.update(chunk)
                await within_deadline(settled.wait())
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        server.close()
    assert digest.hexdigest() == expected
    assert peak < 8 << 20


def _hashing(request: Request) -> Response:
    body = request.read_body()
    framing = "chunked" if request.headers.get("Transfer-Encoding") else "length"
    return json_response(200, {"sha256": hashlib.sha256(body).hexdigest(), "framing": framing})


async def _blocks(count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield BLOCK


@pytest.mark.parametrize(
    ("content", "framing"),
    [(BLOCK * 16, "length"), (_blocks, "chunked")],
    ids=["content-length", "chunked"],
)
async def test_an_upload_arrives_intact(
    content: bytes | Callable[[int], AsyncIterator[bytes]], framing: str
) -> None:
    """16 MiB sent with Content-Length or chunked arrive byte for byte."""
    server = LoopbackServer(0, _hashing, Faults)
    body = content(16) if callable(content) else content
    try:
        async with client() as http:
            answer = await http.post(f"http://127.0.0.1:{server.server_port}/", content=body)
    finally:
        server.close()
    expected = hashlib.sha256(BLOCK * 16).hexdigest()
    assert answer.json() == {"sha256": expected, "framing": framing}


async def test_a_server_that_takes_nothing_is_a_write_timeout() -> None:
    """An upload the server does not read fails with WriteTimeout after "write" seconds."""
    handle, release = _stalling()
    async with Raw(handle) as server, client() as http:
        with pytest.raises(httpx.WriteTimeout):
            await http.post(server.url, content=_blocks(256), timeout=httpx.Timeout(5, write=0.2))
        release.set()


async def test_an_answer_before_the_upload_ends_is_returned() -> None:
    """A server that answers and closes before taking the whole body (a 413, a 401) gives
    that answer, not a write error."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig")
        await writer.drain()

    async with Raw(handle) as server, client() as http:
        answer = await http.post(server.url, content=_blocks(256))
    assert (answer.status_code, answer.content) == (413, b"big")


async def test_a_header_that_would_smuggle_another_is_refused() -> None:
    """A header value holding CR or LF is refused before anything is sent."""
    async with Raw(answering(OK)) as server, client() as http:
        with pytest.raises(httpx.LocalProtocolError):
            await http.get(server.url, headers={"X-Note": "a\r\nAuthorization: Bearer x"})
    assert server.accepted == 0


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    alternative = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(alternative, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert, key_file = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key_file


def _tls_server(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


async def test_tls_with_the_given_ca_bundle(tmp_path: Path) -> None:
    """HTTPS to a server whose certificate the ca_bundle holds works, kept alive."""
    cert, context = _tls_server(tmp_path)
    async with Raw(answering(OK), tls=context) as server, client(ca_bundle=str(cert)) as http:
        for _ in range(2):
            assert (await http.get(server.url)).content == b"ok"
    assert server.accepted == 1


async def test_tls_to_an_untrusted_certificate_is_a_connect_error(tmp_path: Path) -> None:
    """With the default trust (certifi), a self-signed certificate is refused."""
    _, context = _tls_server(tmp_path)
    async with Raw(answering(OK), tls=context) as server, client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(server.url)


async def test_failures_name_no_secret() -> None:
    """Neither Authorization nor the URL's path and query appear in errors or the repr."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    transport = Wire()
    async with httpx.AsyncClient(transport=transport, trust_env=False) as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.get(
                f"http://127.0.0.1:{port}/{SECRET}?X-Amz-Signature={SECRET}",
                headers={"Authorization": f"Bearer {SECRET}"},
            )
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)
    assert SECRET not in repr(transport)
