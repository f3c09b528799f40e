"""The server: late request heads and stalled clients are closed, connections bounded,
health always answered, cached files sent by the kernel."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h11
import httpx
import pytest

from proxy.errors import ProxyError
from proxy.guard import LATE_HEAD, STALLED, GuardedH11Protocol, Limits
from proxy.guardhttptools import GuardedHttpToolsProtocol
from proxy.server import ACCEPT_FAILED, DeepQueueLoop, Throttle, guarded_protocol, plan
from tests.clients import ProxyProcess
from tests.fakegitlab import FakeGitLab
from tests.scenario import SERVICE, Start, acme, serve
from tests.slowclients import SlowHeads

HEADER_TIMEOUT = "GITLAB_PYPI_PROXY_SERVER_HEADER_TIMEOUT"
MAX_CONNECTIONS = "GITLAB_PYPI_PROXY_SERVER_MAX_CONNECTIONS"
SEND_TIMEOUT = "GITLAB_PYPI_PROXY_SERVER_SEND_TIMEOUT"
HTTP = "GITLAB_PYPI_PROXY_SERVER_HTTP"
SENDFILE_METRIC = "gitlab_pypi_proxy_bytes_sendfile_total"


@pytest.fixture(params=["h11", "httptools"])
def http(request: pytest.FixtureRequest) -> dict[str, str]:
    """The proxy's environment choosing each HTTP implementation (server.http) in turn."""
    return {HTTP: request.param}


def _until(condition: Callable[[], bool], what: str, deadline: float) -> float:
    """Poll `condition` until it holds; the seconds it took, or fail after `deadline`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > deadline:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - started


def _health_seconds(proxy: ProxyProcess) -> float:
    """Time one /-/health; it must answer 200 within a second."""
    started = time.monotonic()
    response = httpx.get(proxy.url + "/-/health", timeout=1.0)
    assert response.status_code == 200
    return time.monotonic() - started


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.e2e
def test_hundreds_of_slow_heads_leave_health_answered(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, http: dict[str, str]
) -> None:
    """300 slow heads on 256 descriptors: all get in and are closed, health answers in 1 s.

    And running short of descriptors is not logged (at most once).
    """
    proxy = serve(
        start_proxy, gitlab, tmp_path / "cache", nofile_limit=256, **{HEADER_TIMEOUT: "1"}, **http
    )
    slow = SlowHeads(proxy.port, 300)
    stop = threading.Event()

    def attack() -> None:  # a few dozen new connections at a time, every byte late
        while not stop.wait(0.05):
            slow.fill(at_most=20, connect_timeout=0.1)
            slow.trickled()

    attacker = threading.Thread(target=attack)
    attacker.start()
    latencies = []
    try:
        end = time.monotonic() + 3  # header_timeout three times over: closed ones come back
        while time.monotonic() < end:
            latencies.append(_health_seconds(proxy))
            time.sleep(0.05)  # the probes' pace, not a wait for a condition
        held = slow.held
    finally:
        stop.set()
        attacker.join()
    try:
        _until(lambda: slow.trickled() == 0, "the server to close them", 5)
    finally:
        slow.close()
    assert held >= 100  # hundreds were held open at once
    assert slow.refused == 0  # the listen queue held every new connection until accepted
    assert slow.closed_by_server >= 300
    assert max(latencies) < 1.0
    assert proxy.log is not None
    assert proxy.log.read_text().count(ACCEPT_FAILED) <= 1


@pytest.mark.e2e
def test_head_is_closed_after_header_timeout(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, http: dict[str, str]
) -> None:
    """A connection still sending its head a byte at a time is closed after header_timeout."""
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", **{HEADER_TIMEOUT: "1"}, **http)
    slow = SlowHeads(proxy.port, 1)
    try:
        slow.fill()
        took = _until(lambda: slow.trickled() == 0, "the close", 5)
    finally:
        slow.close()
    assert took >= 0.8
    assert proxy.log is not None
    assert LATE_HEAD in proxy.log.read_text()


@pytest.mark.e2e
def test_idle_connection_after_a_response_owes_the_next_head(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, http: dict[str, str]
) -> None:
    """After a response, a kept-alive connection trickling its next head is closed too."""
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", **{HEADER_TIMEOUT: "1"}, **http)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /-/health HTTP/1.1\r\nHost: proxy\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        sock.settimeout(None)
        sock.sendall(b"GET /-/health HTTP/1.1\r\nX-Slow: ")

        def trickled_until_closed() -> bool:
            if _closed_by_peer(sock):
                return True
            sock.send(b"a")  # never a whole head: one header value growing
            return False

        took = _until(trickled_until_closed, "the close", 5)
    assert took >= 0.8


@pytest.mark.e2e
def test_past_max_connections_the_idle_longest_is_closed(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, http: dict[str, str]
) -> None:
    """With max_connections open and idle, a new client gets in and the oldest idle one goes."""
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", **{MAX_CONNECTIONS: "4"}, **http)
    idle = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(4)]
    try:
        _health_seconds(proxy)
        _until(lambda: _closed_by_peer(idle[0]), "the oldest to be closed", 5)
        assert not any(_closed_by_peer(sock) for sock in idle[1:])
    finally:
        for sock in idle:
            sock.close()


def _cached(gitlab: FakeGitLab, proxy: ProxyProcess, content: bytes) -> str:
    """The URL of a file of `content` in project 42, fetched once so that it is cached."""
    sha256 = gitlab.add_file(42, "big", "1.0", "big-1.0-py3-none-any.whl", content)
    assert sha256 == hashlib.sha256(content).hexdigest()
    url = f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{sha256}/big-1.0-py3-none-any.whl"
    assert httpx.get(url, timeout=30).headers["x-cache"] == "MISS"
    return url


def _sent_by_kernel(proxy: ProxyProcess) -> float:
    """The proxy's count of file bytes it sent with os.sendfile."""
    metrics = httpx.get(proxy.url + "/-/metrics", timeout=5).text
    line = next(line for line in metrics.splitlines() if line.startswith(SENDFILE_METRIC))
    return float(line.split()[-1])


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("size", "wanted", "start", "end"),
    [
        (5_000_000, "", 0, None),
        (5_000_000, "bytes=1000-2999999", 1000, 3_000_000),
        (5_000_000, "bytes=-10", -10, None),
        (20_000, "", 0, None),
        (20_000, "bytes=100-199", 100, 200),
    ],
)
def test_a_cached_file_is_sent_by_the_kernel_unless_small(
    gitlab: FakeGitLab,
    start_proxy: Start,
    tmp_path: Path,
    http: dict[str, str],
    size: int,
    wanted: str,
    start: int,
    end: int | None,
) -> None:
    """A hit, whole or a range, comes byte for byte from os.sendfile (zero copy); a file of
    at most 64 KiB is read where it is opened and sent with the head instead."""
    acme(gitlab)
    content = os.urandom(size)
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE, **http)
    url = _cached(gitlab, proxy, content)
    before = _sent_by_kernel(proxy)
    response = httpx.get(url, headers={"range": wanted} if wanted else {}, timeout=30)
    assert (response.headers["x-cache"], response.content) == ("HIT", content[start:end])
    assert response.headers["content-length"] == str(len(content[start:end]))
    by_kernel = len(content[start:end]) if size > 64 * 1024 else 0
    assert _sent_by_kernel(proxy) - before == by_kernel


def _joined_mid_fill(gitlab: FakeGitLab, proxy: ProxyProcess, content: bytes) -> bytes:
    """Two clients of one cold file, the second joining while GitLab holds the rest back:
    the first's body (checked to be `content`), and what the second got before it ended
    (an error raised by httpx, whole or not, as the proxy ended it)."""
    sha256 = gitlab.add_file(42, "big", "1.0", "big-1.0-py3-none-any.whl", content)
    url = f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{sha256}/big-1.0-py3-none-any.whl"
    gitlab.stall_files_after = len(content) // 3
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.get, url, timeout=30)
        assert gitlab.stalled.wait(10)
        with httpx.stream("GET", url, timeout=30) as second:
            assert second.headers["x-cache"] == "MISS"  # a follower of the running fill
            gitlab.stall_release.set()
            got = bytearray()
            for chunk in second.iter_raw():
                got.extend(chunk)
        assert first.result().content == bytes(got)
    return bytes(got)


@pytest.mark.e2e
def test_clients_of_a_running_fill_are_sent_its_bytes_by_the_kernel(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """The fill's first client and one that joins mid-fill both get the file from the
    growing file by os.sendfile, byte for byte."""
    acme(gitlab)
    content = os.urandom(6_000_000)
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    before = _sent_by_kernel(proxy)
    assert _joined_mid_fill(gitlab, proxy, content) == content
    assert _sent_by_kernel(proxy) - before == 2 * len(content)


@pytest.mark.e2e
def test_a_follower_of_a_fill_with_wrong_bytes_never_gets_a_clean_end(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """A fill that fails its hash breaks its zero-copy followers' connections short of
    the file's length."""
    acme(gitlab)
    content = os.urandom(6_000_000)
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    gitlab.corrupt_files = True
    with pytest.raises(httpx.RemoteProtocolError):
        _joined_mid_fill(gitlab, proxy, content)


@pytest.mark.e2e
def test_a_client_that_stops_reading_is_cut_off_after_send_timeout(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, http: dict[str, str]
) -> None:
    """A client that takes none of a cached file for send_timeout is disconnected, and
    the proxy goes on answering."""
    acme(gitlab)
    content = os.urandom(8_000_000)
    proxy = serve(
        start_proxy, gitlab, tmp_path / "cache", token=SERVICE, **{SEND_TIMEOUT: "1"}, **http
    )
    path = _cached(gitlab, proxy, content).removeprefix(proxy.url)
    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", proxy.port))
        stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
        assert proxy.log is not None
        log = proxy.log
        took = _until(lambda: STALLED in log.read_text(), "the stalled client's cut-off", 10)
        assert took >= 0.8
        _health_seconds(proxy)
        stalled.settimeout(10)
        received = 0
        with contextlib.suppress(ConnectionResetError):  # closed: what was sent is not all
            while chunk := stalled.recv(1 << 20):
                received += len(chunk)
        assert received < len(content)


@pytest.mark.e2e
def test_a_head_request_for_a_cached_file_sends_no_body(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, http: dict[str, str]
) -> None:
    """HEAD of a hit declares the file's length and sends none of it: the next response on
    the same connection reads clean."""
    acme(gitlab)
    content = os.urandom(100_000)
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE, **http)
    url = _cached(gitlab, proxy, content)
    with httpx.Client(timeout=10) as client:
        head = client.head(url)
        health = client.get(proxy.url + "/-/health")
    assert (head.headers["x-cache"], head.headers["content-length"]) == ("HIT", "100000")
    assert (head.content, health.status_code) == (b"", 200)


@pytest.mark.e2e
def test_a_request_head_past_head_size_is_refused(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, http: dict[str, str]
) -> None:
    """An unfinished head past 256 KiB is answered 400 and closed, not held for
    header_timeout."""
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", **http)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        with contextlib.suppress(OSError):  # the server may close before it has all
            sock.sendall(b"GET /-/health HTTP/1.1\r\nX-Big: " + b"a" * 300_000)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")


@pytest.mark.e2e
def test_pipelined_hits_are_answered_in_order(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, http: dict[str, str]
) -> None:
    """Three requests for a cached file in one packet get the file three times (each sent
    by the kernel on its own request's response), and the connection then owes a head."""
    acme(gitlab)
    content = os.urandom(100_000)
    proxy = serve(
        start_proxy, gitlab, tmp_path / "cache", token=SERVICE, **{HEADER_TIMEOUT: "1"}, **http
    )
    path = _cached(gitlab, proxy, content).removeprefix(proxy.url)
    client = h11.Connection(h11.CLIENT)
    bodies: list[bytes] = []
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: p\r\n\r\n".encode() * 3)
        while len(bodies) < 3:
            client.send(h11.Request(method="GET", target=path, headers=[("Host", "p")]))
            client.send(h11.EndOfMessage())
            body = b""
            while not isinstance(event := client.next_event(), h11.EndOfMessage):
                if event is h11.NEED_DATA:
                    client.receive_data(sock.recv(1 << 16))
                elif isinstance(event, h11.Data):
                    body += event.data
            bodies.append(body)
            client.start_next_cycle()
        took = _until(lambda: _closed_by_peer(sock), "the idle connection's close", 5)
    assert bodies == [content] * 3
    assert took >= 0.5


def test_auto_is_httptools_when_it_imports() -> None:
    """server.http: auto and httptools pick httptools' protocol, h11 picks h11's."""
    chosen = [guarded_protocol(http) for http in ("auto", "httptools", "h11")]
    assert chosen == [GuardedHttpToolsProtocol, GuardedHttpToolsProtocol, GuardedH11Protocol]


def test_without_httptools_auto_falls_back_to_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    """When httptools cannot be imported, auto serves with h11 and httptools is an error."""
    monkeypatch.setitem(sys.modules, "proxy.guardhttptools", None)  # import fails
    assert guarded_protocol("auto") is GuardedH11Protocol
    with pytest.raises(ProxyError, match="httptools"):
        guarded_protocol("httptools")


@pytest.mark.parametrize(
    ("descriptors", "expected"),
    [
        (256, Limits(header_timeout=5.0, max_connections=128, backlog=16)),
        (1024, Limits(header_timeout=5.0, max_connections=640, backlog=64)),
        (65536, Limits(header_timeout=5.0, max_connections=1000, backlog=2048)),
        (64, Limits(header_timeout=5.0, max_connections=1, backlog=16)),
    ],
)
def test_plan_keeps_descriptors_to_spare(descriptors: int, expected: Limits) -> None:
    """max_connections shrinks to leave a reserve and a few accept batches below the limit."""
    assert plan(header_timeout=5.0, max_connections=1000, descriptors=descriptors) == expected


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, args, None)


def test_throttle_passes_one_of_a_kind_a_minute_then_counts_the_rest() -> None:
    """Repeats within the interval are held; the first after it says how many were."""
    now = [0.0]
    throttle = Throttle(interval=60, clock=lambda: now[0])
    passed = [throttle.filter(_record(ACCEPT_FAILED)) for _ in range(1000)]
    assert passed == [True] + [False] * 999
    now[0] = 61.0
    record = _record(ACCEPT_FAILED)
    assert throttle.filter(record)
    assert record.getMessage() == f"{ACCEPT_FAILED} (and 999 more in 61 s)"


def test_throttle_lets_other_records_through() -> None:
    """Records that start with none of its prefixes always pass."""
    throttle = Throttle(interval=60, clock=lambda: 0.0)
    assert all(throttle.filter(_record("Task exception was never retrieved")) for _ in range(3))


def test_throttle_matches_the_formatted_message() -> None:
    """A prefix given as a %-argument counts as the message's start."""
    throttle = Throttle(interval=60, clock=lambda: 0.0)
    assert throttle.filter(_record("%s after %g s", LATE_HEAD, 5.0))
    assert not throttle.filter(_record("%s after %g s", LATE_HEAD, 5.0))


def test_connections_of_a_socket_without_a_protocol_number_get_tcp_nodelay() -> None:
    """On uvicorn's --workers socket (made without a protocol number) a connection still
    sends a response's body right behind its head (TCP_NODELAY), not a delayed ACK later."""
    listening = socket.socket(socket.AF_INET)  # as uvicorn's Config.bind_socket makes it
    listening.bind(("127.0.0.1", 0))
    nodelay: list[int] = []

    async def connect() -> None:
        made = asyncio.Event()

        class Recording(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()
                made.set()

        server = await asyncio.get_running_loop().create_server(Recording, sock=listening)
        async with server:
            _, writer = await asyncio.open_connection(*listening.getsockname())
            await asyncio.wait_for(made.wait(), 10)
            writer.close()
            await writer.wait_closed()

    loop = DeepQueueLoop()
    try:
        loop.run_until_complete(connect())
    finally:
        loop.close()
        listening.close()
    assert nodelay == [1]
