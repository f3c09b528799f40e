"""httpx's transport to GitLab and the public index: HTTP/1.1 connections (`wireconn`) kept
alive in a pool per origin, TLS as httpx would make it."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable

import httpx

from proxy.wireconn import Body, Connection, request_head

MAX_PER_ORIGIN = 100
"""Connections open at once to one (scheme, host, port); more requests wait ("pool")."""
KEEPALIVE_EXPIRY = 5.0
"""Seconds an idle connection is kept for reuse (httpx's default)."""

Origin = tuple[str, str, int]
Timeouts = dict[str, float | None]  # httpx's "timeout" extension
Connect = Callable[[httpx.Request, float | None], Awaitable[Connection]]


def tls_context(ca_bundle: str = "") -> ssl.SSLContext:
    """The trust httpx gives `verify=ca_bundle or True` without trust_env (certifi's roots,
    or the bundle: a PEM file or a hashed directory), offering HTTP/1.1 by ALPN."""
    if not ca_bundle:
        context = httpx.create_ssl_context(verify=True, trust_env=False)
    elif os.path.isdir(ca_bundle):
        context = ssl.create_default_context(capath=ca_bundle)
    else:
        context = ssl.create_default_context(cafile=ca_bundle)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Pool:
    """The connections to one origin: idle ones kept `expiry` seconds, at most `limit` open,
    requests beyond it waiting their turn."""

    def __init__(self, connect: Connect, *, limit: int, expiry: float) -> None:
        self._connect = connect
        self._limit = limit
        self._expiry = expiry
        self._idle: deque[Connection] = deque()  # oldest first
        self._open: set[Connection] = set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _expire(self) -> None:
        expired = time.monotonic() - self._expiry
        while self._idle and self._idle[0].idle_since < expired:
            self._drop(self._idle.popleft())

    def _full(self) -> bool:
        return len(self._open) + self._connecting >= self._limit

    def _drop(self, connection: Connection) -> None:
        connection.close()
        self._open.discard(connection)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def acquire(
        self, request: httpx.Request, timeouts: Timeouts, *, fresh: bool
    ) -> tuple[Connection, bool]:
        """A connection (and whether it was used before): an idle one unless `fresh`, else a
        new one, else the first given back within the pool timeout (PoolTimeout)."""
        loop = asyncio.get_running_loop()
        timeout = timeouts.get("pool")
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            self._expire()
            while self._idle and not fresh:
                connection = self._idle.pop()  # the most recently used: the least likely stale
                if connection.usable():
                    return connection, True
                self._drop(connection)  # the server closed it meanwhile
            if self._full() and self._idle:
                self._drop(self._idle.popleft())  # room for a fresh one
            if not self._full():
                return await self._opened(request, timeouts.get("connect")), False
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # our turn came as we gave up: the next waiter's
                if isinstance(exc, TimeoutError):
                    message = "no connection came free in time"
                    raise httpx.PoolTimeout(message, request=request) from exc
                raise

    async def _opened(self, request: httpx.Request, within: float | None) -> Connection:
        self._connecting += 1
        try:
            connection = await self._connect(request, within)
        except BaseException:
            self._wake()  # the slot is free again
            raise
        finally:
            self._connecting -= 1
        self._open.add(connection)
        return connection

    def release(self, connection: Connection) -> None:
        """Take back a connection whose exchange ended: kept when reusable, else closed."""
        if connection.reusable() and connection in self._open:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
            self._wake()
        else:
            self._drop(connection)

    def close(self) -> None:
        """Close every connection, idle or not."""
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()


class Wire(httpx.AsyncBaseTransport):
    """HTTP/1.1 over asyncio, parsed by httptools: a keep-alive pool per origin (at most
    `max_per_origin` connections, idle ones kept `keepalive_expiry` seconds), TLS with
    `tls_context(ca_bundle)`. No proxies, no HTTP/2.

    Timeouts come from the request's "timeout" extension (connect, read, write, pool). A
    GET or HEAD that fails on a reused connection before any response byte is sent again
    once on a new connection. Messages name the origin's host and port, never a path.
    """

    def __init__(
        self,
        *,
        ca_bundle: str = "",
        max_per_origin: int = MAX_PER_ORIGIN,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ) -> None:
        self._expiry = keepalive_expiry
        self._ca_bundle = ca_bundle
        self._tls: ssl.SSLContext | None = None
        self._limit = max_per_origin
        self._pools: dict[Origin, _Pool] = {}

    def __repr__(self) -> str:
        return f"Wire(origins={len(self._pools)})"

    def _pool(self, origin: Origin) -> _Pool:
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(
                lambda request, within: self._connect(origin, request, within),
                limit=self._limit,
                expiry=self._expiry,
            )
        return pool

    async def _connect(
        self, origin: Origin, request: httpx.Request, within: float | None
    ) -> Connection:
        scheme, host, port = origin
        where = f"{host}:{port}"
        if scheme == "https" and self._tls is None:
            self._tls = tls_context(self._ca_bundle)
        tls = self._tls if scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(within):
                _, connection = await loop.create_connection(
                    lambda: Connection(where),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"connecting to {where} took too long", request=request
            ) from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS
            raise httpx.ConnectError(
                f"could not connect to {where}: {exc}", request=request
            ) from exc
        return connection

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` on a pooled connection and return its response, body unread."""
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"no {url.scheme!r} here", request=request)
        port = url.port or (443 if url.scheme == "https" else 80)
        origin = (url.scheme, url.raw_host.decode("ascii"), port)
        head = request_head(request)
        timeouts = request.extensions.get("timeout", {})
        pool = self._pool(origin)
        retry = request.method in ("GET", "HEAD")
        fresh = False
        while True:
            connection, reused = await pool.acquire(request, timeouts, fresh=fresh)
            try:
                response = await self._exchange(connection, request, head, timeouts)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                pool.release(connection)
                if not (retry and reused and not connection.received):
                    raise
                retry, fresh = False, True  # a connection the server had closed: once more
                continue
            except BaseException:
                pool.release(connection)
                raise
            assert isinstance(response.stream, Body)
            response.stream.on_close(pool.release)
            return response

    async def _exchange(
        self, connection: Connection, request: httpx.Request, head: bytes, timeouts: Timeouts
    ) -> httpx.Response:
        connection.begin(request)
        try:
            await connection.send(request, head, timeouts.get("write"))
        except httpx.WriteError:
            # The server may have answered and closed before taking the whole body (a 401
            # or 413 to an upload): its answer, when there is one, is the better news.
            try:
                return await connection.response(request, timeouts.get("read"))
            except httpx.TransportError:
                pass
            raise
        return await connection.response(request, timeouts.get("read"))

    async def aclose(self) -> None:
        """Close every connection of every origin."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
