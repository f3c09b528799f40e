"""The slow-client guard on uvicorn's HTTP protocols: head deadlines and sizes, shedding, sends."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, cast

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from proxy import zerocopy

log = logging.getLogger("proxy.server")

LATE_HEAD = "closed a connection whose request head took over"
OVER_LIMIT = "closed the connection idle longest"
STALLED = "closed a connection whose client took no bytes for"
BIG_HEAD = "Request head too large."


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """What one server process allows its clients."""

    header_timeout: float  # seconds from connecting, or from the last response, to a whole head
    max_connections: int  # open at once; past it, the one idle longest is closed
    backlog: int  # how many connections asyncio accepts in one go (uvicorn's backlog)
    send_timeout: float = 60.0  # seconds a response may wait on a client that takes nothing
    head_size: int = 256 * 1024  # of an unfinished head, then a 400 (the app 431s past 64 KiB)


class Connections:
    """One process's open connections; those owing a request head, idle longest first."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.senders = zerocopy.Senders()
        self._open: set[Guard] = set()
        self._owing: dict[Guard, None] = {}  # insertion order: idle longest first

    def opened(self, connection: Guard) -> None:
        """Count a new connection; past the limit, shed the one idle longest (maybe this one)."""
        self._open.add(connection)
        if len(self._open) > self.limits.max_connections:
            oldest = next(iter(self._owing))
            log.warning("%s: %d connections open", OVER_LIMIT, len(self._open))
            oldest.shed()

    def owes_head(self, connection: Guard) -> None:
        """The connection waits for a request head, from now (its idle time starts)."""
        self._owing.pop(connection, None)
        self._owing[connection] = None

    def paid(self, connection: Guard) -> None:
        """The connection has a whole request head, or is closing."""
        self._owing.pop(connection, None)

    def closed(self, connection: Guard) -> None:
        self._owing.pop(connection, None)
        self._open.discard(connection)


class Holding:
    """A connection's transport that can hold a response head until the response's first
    body bytes, so the two go to the socket in one write: a small page is one send (one
    syscall, a quarter of a cache hit's CPU, py-spy) instead of two."""

    __slots__ = ("_held", "raw")

    def __init__(self, raw: asyncio.Transport) -> None:
        self.raw = raw
        self._held: list[bytes] | None = None

    def hold(self) -> None:
        """Keep what is written from now until release()."""
        self._held = []

    def release(self) -> None:
        """Write what was held, in one write."""
        held, self._held = self._held, None
        if held:
            self.raw.write(b"".join(held))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is None:
            self.raw.write(data)
        else:
            self._held.append(bytes(data))

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self.release()
        self.raw.close()

    def abort(self) -> None:
        self._held = None
        self.raw.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


if TYPE_CHECKING:

    class _Uvicorn(asyncio.Protocol):
        """What the guard uses of uvicorn's HTTP protocols (H11Protocol, HttpToolsProtocol)."""

        transport: asyncio.Transport
        loop: asyncio.AbstractEventLoop
        cycle: Any  # the protocol's RequestResponseCycle, the latest whose head arrived
        app: Any

        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None: ...

        def on_response_complete(self) -> None: ...

        def send_400_response(self, msg: str) -> None: ...

else:
    _Uvicorn = object


class Guard(_Uvicorn):
    """Mixed in before a uvicorn HTTP protocol: the connection is closed when its request
    head is late or too large, when others need room, or when its client takes nothing for
    send_timeout; the app is offered the ASGI zero-copy send extension (zerocopy.EXTENSION),
    whose bytes send_file_body frames."""

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
        self._head_bytes = 0  # of an unfinished head, in reads that completed none
        self.app = functools.partial(self._run_app, self.app)

    async def send_file_body(
        self, cycle: Any, file: IO[bytes], offset: int, count: int, *, stall: float
    ) -> None:
        """Send bytes [offset, offset + count) of `file` as `cycle`'s next body bytes, framed
        as the protocol frames a body; exceptions as for zerocopy.send_file."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.holding = Holding(transport)
        super().connection_made(cast(asyncio.Transport, self.holding))
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
        elif self._deadline is not None and not self.transport.is_closing():
            # h11 bounds a head itself (h11_max_incomplete_event_size); httptools does not.
            self._head_bytes += len(data)
            if self._head_bytes > self._connections.limits.head_size:
                self._head_arrived()
                self.send_400_response(BIG_HEAD)  # as uvicorn answers a head it cannot parse

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Unless a pipelined request is under way, the next request's head is owed.
        if self.cycle.response_complete and not self.transport.is_closing():
            self._await_head()

    def shed(self) -> None:
        """Close the connection without an answer."""
        self._head_arrived()
        if not self.transport.is_closing():
            self.transport.close()

    async def _run_app(self, app: Any, scope: Any, receive: Any, send: Any) -> None:
        """Run `app` for one request, zero-copy send offered, each send bounded."""
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        # uvicorn hands the app its cycle's bound send; with httptools, self.cycle may
        # already be a later pipelined request's.
        cycle = send.__self__
        scope["extensions"] = {**(scope.get("extensions") or {}), zerocopy.EXTENSION: {}}
        limit = self._connections.limits.send_timeout

        async def sending(message: Any) -> None:
            if cycle.disconnected:
                return
            try:
                if message["type"] == zerocopy.EXTENSION:
                    self.holding.release()
                    await self._send_file(cycle, message)
                    more = message.get("more_body", False)
                    message = {"type": "http.response.body", "more_body": more}
                elif message["type"] == "http.response.start":
                    self.holding.hold()  # until the first body bytes: one write for both
                try:
                    if cycle.flow.write_paused:  # uvicorn's send waits for the client
                        async with asyncio.timeout(limit):
                            await send(message)
                    else:  # it will not wait: no timer to arm and cancel (a cache hit)
                        await send(message)
                finally:
                    if message["type"] == "http.response.body":
                        self.holding.release()
            except TimeoutError:
                log.warning("%s %g s (server.send_timeout)", STALLED, limit)
                self._drop(cycle)
            except OSError:  # the client is gone, or the file ended short
                self._drop(cycle)

        await app(scope, receive, sending)

    async def _send_file(self, cycle: Any, message: Any) -> None:
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
            await self.send_file_body(cycle, file, offset, count, stall=stall)

    def _drop(self, cycle: Any) -> None:
        """Abort the connection mid-response: no clean end, later sends are dropped."""
        cycle.disconnected = True  # uvicorn's own mark of a client gone
        self.transport.abort()

    def _await_head(self) -> None:
        self._head_arrived()
        self._deadline = self.loop.call_later(self._connections.limits.header_timeout, self._late)
        self._connections.owes_head(self)

    def _head_arrived(self) -> None:
        self._head_bytes = 0
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._connections.paid(self)

    def _late(self) -> None:
        self._deadline = None
        timeout = self._connections.limits.header_timeout
        log.warning("%s %g s (server.header_timeout)", LATE_HEAD, timeout)
        self.shed()


class GuardedH11Protocol(Guard, H11Protocol):
    """uvicorn's h11 protocol under the Guard."""

    async def send_file_body(
        self, cycle: Any, file: IO[bytes], offset: int, count: int, *, stall: float
    ) -> None:
        await zerocopy.send_file(
            self.conn,
            self.holding.raw,
            file,
            offset,
            count,
            stall=stall,
            senders=self._connections.senders,
        )
