"""The HTTP server: uvicorn, with deadlines on request heads and stalled sends, a bound on
connections, and cached files sent by the kernel (the zero-copy send extension)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle
from uvicorn.server import ServerState

from proxy import zerocopy
from proxy.errors import ProxyError

log = logging.getLogger("proxy.server")

# asyncio's accept loop logs this on every EMFILE/ENFILE, thousands of times a second.
ACCEPT_FAILED = "socket.accept() out of system resource"
LATE_HEAD = "closed a connection whose request head took over"
OVER_LIMIT = "closed the connection idle longest"
STALLED = "closed a connection whose client took no bytes for"
MAX_BACKLOG = 2048  # uvicorn's default
LISTEN_QUEUE = 2048  # connections the kernel holds for accept(), whatever the batch
WANTED_DESCRIPTORS = 65536  # the soft limit serve asks for, within the hard limit
_TCP = (socket.AF_INET, socket.AF_INET6)


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """What one server process allows its clients."""

    header_timeout: float  # seconds from connecting, or from the last response, to a whole head
    max_connections: int  # open at once; past it, the one idle longest is closed
    backlog: int  # how many connections asyncio accepts in one go (uvicorn's backlog)
    send_timeout: float = 60.0  # seconds a response may wait on a client that takes nothing


def plan(
    *, header_timeout: float, max_connections: int, descriptors: int, send_timeout: float = 60.0
) -> Limits:
    """Limits that keep `descriptors` (the soft RLIMIT_NOFILE) from running out.

    Past max_connections the proxy closes connections itself, but only once it has
    accepted them, and asyncio accepts up to `backlog` at a time: a few backlogs and a
    reserve for cache files, upstream sockets and logs stay free.
    """
    backlog = min(MAX_BACKLOG, max(16, descriptors // 16))
    spare = max(64, descriptors // 8) + 4 * backlog
    room = max(1, min(max_connections, descriptors - spare))
    return Limits(
        header_timeout=header_timeout,
        max_connections=room,
        backlog=backlog,
        send_timeout=send_timeout,
    )


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard one (as Go and the JVM do); the result."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return WANTED_DESCRIPTORS
    wanted = WANTED_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, WANTED_DESCRIPTORS)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError):
        return soft
    return wanted


def run(
    app: Any,
    *,
    header_timeout: float,
    max_connections: int,
    send_timeout: float = 60.0,
    **options: Any,
) -> None:
    """uvicorn.run(app, **options) with Limits from the settings and the descriptor limit."""
    descriptors = raise_descriptor_limit()
    limits = plan(
        header_timeout=header_timeout,
        max_connections=max_connections,
        descriptors=descriptors,
        send_timeout=send_timeout,
    )
    if limits.max_connections < max_connections:
        log.warning(
            "at most %d connections per process (server.max_connections is %d): "
            "the open-file limit is %d",
            limits.max_connections,
            max_connections,
            descriptors,
        )
    # A partial of a module-level class, so that it pickles into --workers processes.
    protocol = functools.partial(GuardedH11Protocol, connections=Connections(limits))
    uvicorn.run(
        app,
        http=cast("type[asyncio.Protocol]", protocol),
        backlog=limits.backlog,
        loop="proxy.server:DeepQueueLoop",  # uvicorn calls it for a loop
        **options,
    )


@contextlib.contextmanager
def in_thread(app: Any, sock: socket.socket, *, deadline: float = 60.0) -> Iterator[None]:
    """Serve `app` on the bound socket `sock` from a thread of this process for the block.

    For commands that need the proxy itself (warm): no logging set up, no signal handlers
    (uvicorn installs them only in the main thread). ProxyError if it does not start.
    """
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=False, server_header=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + deadline
        while not server.started:  # a condition with a deadline
            if not thread.is_alive() or time.monotonic() > end:
                raise ProxyError("the proxy could not start (see the lines above)")
            time.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        thread.join()


class DeepQueueLoop(asyncio.SelectorEventLoop):
    """asyncio's loop, accepting `backlog` connections at a time but queueing LISTEN_QUEUE.

    asyncio listens with the same `backlog` it accepts in one go. A small batch keeps
    descriptors from running out before connections past max_connections are shed; a
    short queue would drop new connections (a second's SYN retry) under a flood.
    """

    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:
        given = kwargs.get("sock")
        if given is not None and given.family in _TCP and given.proto == 0:
            # uvicorn's --workers socket is made without a protocol number, and asyncio
            # sets TCP_NODELAY only on connections of an IPPROTO_TCP socket: without it a
            # page's body waits behind its head for a delayed ACK (40 ms). The same socket
            # under another descriptor, with its protocol named.
            kwargs["sock"] = socket.socket(
                given.family, given.type, socket.IPPROTO_TCP, fileno=given.dup().detach()
            )
        server = await super().create_server(*args, **kwargs)
        for listening in server.sockets:
            with listening.dup() as sock:  # the same listening socket, another descriptor
                sock.listen(LISTEN_QUEUE)
        return server


class Connections:
    """One process's open connections; those owing a request head, idle longest first."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._open: set[GuardedH11Protocol] = set()
        self._owing: dict[GuardedH11Protocol, None] = {}  # insertion order: idle longest first

    def opened(self, connection: GuardedH11Protocol) -> None:
        """Count a new connection; past the limit, shed the one idle longest (maybe this one)."""
        self._open.add(connection)
        if len(self._open) > self.limits.max_connections:
            oldest = next(iter(self._owing))
            log.warning("%s: %d connections open", OVER_LIMIT, len(self._open))
            oldest.shed()

    def owes_head(self, connection: GuardedH11Protocol) -> None:
        """The connection waits for a request head, from now (its idle time starts)."""
        self._owing.pop(connection, None)
        self._owing[connection] = None

    def paid(self, connection: GuardedH11Protocol) -> None:
        """The connection has a whole request head, or is closing."""
        self._owing.pop(connection, None)

    def closed(self, connection: GuardedH11Protocol) -> None:
        self._owing.pop(connection, None)
        self._open.discard(connection)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closed when its request head is late, when others need
    room, or when its client takes nothing for send_timeout; it offers the app the ASGI
    zero-copy send extension (zerocopy.EXTENSION)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        connections: Connections,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._connections = connections
        self._deadline: asyncio.TimerHandle | None = None
        self.app = functools.partial(self._run_app, self.app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()
        self._connections.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        self._connections.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # uvicorn starts a cycle for each complete head
            self._head_arrived()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if self.cycle is cycle and not self.transport.is_closing():
            self._await_head()  # the next request's, pipelined heads aside

    def shed(self) -> None:
        """Close the connection without an answer."""
        self._head_arrived()
        if not self.transport.is_closing():
            self.transport.close()

    async def _run_app(self, app: Any, scope: Any, receive: Any, send: Any) -> None:
        """Run `app` for the current request, zero-copy send offered, each send bounded."""
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        cycle = self.cycle  # this request's: the next starts once its response is complete
        scope["extensions"] = {**(scope.get("extensions") or {}), zerocopy.EXTENSION: {}}
        limit = self._connections.limits.send_timeout

        async def sending(message: Any) -> None:
            if cycle.disconnected:
                return
            try:
                if message["type"] == zerocopy.EXTENSION:
                    await self._send_file(cycle, message)
                    more = message.get("more_body", False)
                    message = {"type": "http.response.body", "more_body": more}
                async with asyncio.timeout(limit):  # uvicorn waits for the client to drain
                    await send(message)
            except TimeoutError:
                log.warning("%s %g s (server.send_timeout)", STALLED, limit)
                self._drop(cycle)
            except OSError:  # the client is gone, or the file ended short
                self._drop(cycle)

        await app(scope, receive, sending)

    async def _send_file(self, cycle: RequestResponseCycle, message: Any) -> None:
        """Send the file of a zero-copy message as the response's next body bytes."""
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"unexpected ASGI message {zerocopy.EXTENSION!r}")
        file: IO[bytes] = message["file"]
        offset = message.get("offset")
        if offset is None:
            offset = file.tell()
        count = message.get("count")
        if count is None:
            count = os.fstat(file.fileno()).st_size - offset
        if count > 0 and cycle.scope["method"] != "HEAD":
            stall = self._connections.limits.send_timeout
            await zerocopy.send_file(self.conn, self.transport, file, offset, count, stall=stall)

    def _drop(self, cycle: RequestResponseCycle) -> None:
        """Abort the connection mid-response: no clean end, later sends are dropped."""
        cycle.disconnected = True  # uvicorn's own mark of a client gone
        self.transport.abort()

    def _await_head(self) -> None:
        self._head_arrived()
        self._deadline = self.loop.call_later(self._connections.limits.header_timeout, self._late)
        self._connections.owes_head(self)

    def _head_arrived(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._connections.paid(self)

    def _late(self) -> None:
        self._deadline = None
        timeout = self._connections.limits.header_timeout
        log.warning("%s %g s (server.header_timeout)", LATE_HEAD, timeout)
        self.shed()


class Throttle(logging.Filter):
    """Lets through one record a minute of each of `prefixes`; the next says how many it held.

    For the asyncio logger, whose accept loop logs ACCEPT_FAILED for every failed accept,
    and for this module's own lines about closed connections.
    """

    def __init__(
        self,
        prefixes: tuple[str, ...] = (ACCEPT_FAILED, LATE_HEAD, OVER_LIMIT, STALLED),
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        prefix = next((p for p in self._prefixes if message.startswith(p)), None)
        if prefix is None:
            return True
        now = self._clock()
        last = self._last.get(prefix, -math.inf)
        if now - last < self._interval:
            self._held[prefix] = self._held.get(prefix, 0) + 1
            return False
        self._last[prefix] = now
        if held := self._held.pop(prefix, 0):
            record.msg, record.args = f"{message} (and {held} more in {now - last:.0f} s)", None
        return True
