"""The HTTP server: uvicorn, with deadlines on request heads and stalled sends, a bound on
connections, and cached files sent by the kernel (the zero-copy send extension)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import uvicorn

from proxy.errors import ProxyError
from proxy.guard import (
    LATE_HEAD,
    OVER_LIMIT,
    STALLED,
    Connections,
    Guard,
    GuardedH11Protocol,
    Limits,
)
from proxy.values import HttpMode

log = logging.getLogger("proxy.server")

# asyncio's accept loop logs this on every EMFILE/ENFILE, thousands of times a second.
ACCEPT_FAILED = "socket.accept() out of system resource"
MAX_BACKLOG = 2048  # uvicorn's default
LISTEN_QUEUE = 2048  # connections the kernel holds for accept(), whatever the batch
WANTED_DESCRIPTORS = 65536  # the soft limit serve asks for, within the hard limit
_TCP = (socket.AF_INET, socket.AF_INET6)


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
    http: HttpMode = "auto",
    **options: Any,
) -> None:
    """uvicorn.run(app, **options) with Limits from the settings and the descriptor limit,
    on the guarded protocol `http` names."""
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
    protocol = functools.partial(guarded_protocol(http), connections=Connections(limits))
    uvicorn.run(
        app,
        http=cast("type[asyncio.Protocol]", protocol),
        h11_max_incomplete_event_size=limits.head_size,
        backlog=limits.backlog,
        loop="proxy.server:DeepQueueLoop",  # uvicorn calls it for a loop
        **options,
    )


def guarded_protocol(http: HttpMode) -> type[Guard]:
    """The protocol class for server.http: httptools' ("auto" when it is importable) or h11's.

    ProxyError when "httptools" is asked for and missing.
    """
    if http != "h11":
        try:
            from proxy.guardhttptools import GuardedHttpToolsProtocol
        except ImportError as exc:
            if http == "httptools":
                raise ProxyError(f"server.http is httptools, which cannot load: {exc}") from exc
        else:
            return GuardedHttpToolsProtocol
    return GuardedH11Protocol


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
