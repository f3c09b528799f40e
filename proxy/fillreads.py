"""A fill's shared state and its readers: its bytes, or where they are in its file, as written."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Generic, Self, TypeVar

from anyio import to_thread

from proxy.errors import IncompleteBody, ProxyError

T = TypeVar("T")
READ_CHUNK = 128 * 1024


@dataclass(eq=False)
class Fill:
    """The state of one download into the cache, shared by all its readers."""

    sha256: str
    origin: str = ""
    """A salted hash of the path, scope and credentials it is fetched with."""
    url: str = ""
    """What it is fetched from: GitLab's path (/api/v4/...) or a public index's URL."""
    vetted: bool = False
    """GitLab already let its first caller read the file: another worker's fill will do."""
    status: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    error_body: bytes = b""
    length: int | None = None
    fd: int | None = None
    """A read-only descriptor on the growing file; it outlives the file's name."""
    written: int = 0
    verified: bool = False
    """The whole body arrived and hashed right: readers may have all of it, cached or not."""
    done: bool = False
    error: ProxyError | None = None
    readers: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def wrote(self, count: int) -> None:
        """`count` more bytes are in the file: wake the readers."""
        self.written += count
        self.notify()

    def notify(self) -> None:
        """Wake every reader waiting for more bytes or the end."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        """Wait until the next write, the end or a failure."""
        await self._changed.wait()

    @property
    def ok(self) -> bool:
        """True when the body is complete, verified and committed."""
        return self.done and self.error is None

    def finish(self, error: ProxyError | None = None) -> None:
        """Mark the fill over and wake everyone; closes the descriptor if nobody reads."""
        self.error = self.error or error
        self.done = True
        self.ready.set()
        self.notify()
        self.release()

    def release(self) -> None:
        """Close the descriptor once the fill is over and its last reader is gone."""
        if self.done and self.readers == 0 and self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Owned(Generic[T]):
    """An async iterator whose cleanup runs even if it is never iterated.

    Starlette may drop a response's iterator before its first step (a client gone
    before the head was sent); a plain generator's `finally` would then never run.
    """

    def __init__(self, items: AsyncGenerator[T, None], cleanup: Callable[[], None]) -> None:
        self._items = items
        self._cleanup = cleanup
        self._started = False
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        self._started = True
        return await self._items.__anext__()

    async def aclose(self) -> None:
        """Finish the generator, or run the cleanup it never reached."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            await self._items.aclose()
        else:
            self._cleanup()


class Body(_Owned[bytes]):
    """The bytes of a body, in chunks."""


class Spans(_Owned[tuple[int, int]]):
    """Where a body's bytes are in `file` (offset, count), span after span as they are
    written: for a server that sends files itself."""

    def __init__(
        self,
        file: BinaryIO,
        spans: AsyncGenerator[tuple[int, int], None],
        cleanup: Callable[[], None],
    ) -> None:
        super().__init__(spans, cleanup)
        self.file = file


def read_fill(fill: Fill, start: int = 0, end: int | None = None) -> Body:
    """The bytes [start, end) of a fill as they arrive.

    The last byte (of the file, or of the range) is held back until the file is
    verified, so a client never sees a clean end of a body that failed its hash: it
    sees the connection break instead.
    A verified body is read to its end even if the Store could not keep it.
    Call it with no await between checking the fill and calling: the reader is
    counted at once, so the descriptor stays open until the last reader is done.
    """
    assert fill.fd is not None, "read_fill() needs a fill that started its body"
    fill.readers += 1

    def unread() -> None:
        fill.readers -= 1
        fill.release()

    return Body(_read(fill, fill.fd, start, end), unread)


def follow_fill(fill: Fill, start: int = 0, end: int | None = None) -> Spans:
    """Where the bytes [start, end) of a fill are in its file, as they arrive: `read_fill`'s
    rule, for a server that sends them from the file itself (zero copy).

    Each span is the bytes written since the last one (the last byte held back until the
    file is verified); a fill that fails raises its error instead of the last span.
    The same call rule as `read_fill`.
    """
    assert fill.fd is not None, "follow_fill() needs a fill that started its body"
    fill.readers += 1
    file = open(fill.fd, "rb", buffering=0, closefd=False)  # noqa: SIM115 (closed below)

    def unfollow() -> None:
        file.close()
        fill.readers -= 1
        fill.release()

    async def spans() -> AsyncGenerator[tuple[int, int], None]:
        try:
            async for span in _spans(fill, start, end):
                yield span
        finally:
            unfollow()

    return Spans(file, spans(), unfollow)


async def _read(fill: Fill, fd: int, start: int, end: int | None) -> AsyncGenerator[bytes, None]:
    try:
        async for offset, count in _spans(fill, start, end):
            while count > 0:
                size = min(READ_CHUNK, count)
                chunk: bytes = await to_thread.run_sync(os.pread, fd, size, offset)
                if not chunk:
                    raise IncompleteBody("the file being filled ended early")
                offset, count = offset + len(chunk), count - len(chunk)
                yield chunk
    finally:
        fill.readers -= 1
        fill.release()


async def _spans(fill: Fill, start: int, end: int | None) -> AsyncGenerator[tuple[int, int], None]:
    """The spans (offset, count) of [start, end) of a fill as they are written.

    The last byte (of the file, or of the range) waits until the file is verified, so a
    reader never sees a clean end of a body that failed its hash: it gets the error.
    """
    position = start
    while True:
        done, written = fill.done, fill.written
        if done and fill.error is not None and not fill.verified:
            raise fill.error
        limit = written if end is None else min(written, end)
        if not done:
            # The last byte waits for the verdict: a range ends no sooner than the file.
            limit = min(limit, (written if end is None else end) - 1)
        if position < limit:
            yield position, limit - position
            position = limit
        elif done:
            return
        else:
            await fill.changed()
