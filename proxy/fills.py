"""One upstream download per file, streamed to every reader while it fills the cache."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from anyio import to_thread

from proxy.cache import Store
from proxy.errors import CacheError, HashMismatch, IncompleteBody, ProxyError
from proxy.upstream import GitLab

log = logging.getLogger("proxy.fills")
READ_CHUNK = 256 * 1024


@dataclass(eq=False)
class Fill:
    """The state of one download into the cache, shared by all its readers."""

    sha256: str
    status: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    error_body: bytes = b""
    length: int | None = None
    path: Path | None = None
    written: int = 0
    done: bool = False
    error: ProxyError | None = None
    readers: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

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


class Filler:
    """Starts fills, lets late readers join them, and commits verified files to the Store."""

    def __init__(self, store: Store, upstream: GitLab) -> None:
        self._store = store
        self._upstream = upstream
        self._active: dict[str, Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_mismatch: list[str] = []

    def start(self, sha256: str, path: str, *, authorization: str | None) -> Fill:
        """The running fill for this file, or a new one; it runs whether or not anyone reads."""
        fill = self._active.get(sha256)
        if fill is not None:
            return fill
        fill = Fill(sha256)
        self._active[sha256] = fill
        task = asyncio.create_task(self._run(fill, path, authorization))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    async def aclose(self) -> None:
        """Cancel running fills (at shutdown); their temp files are removed."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _run(self, fill: Fill, path: str, authorization: str | None) -> None:
        handle: IO[bytes] | None = None
        try:
            async with self._upstream.download(path, authorization=authorization) as download:
                fill.status, fill.headers = download.status, download.headers
                if download.status != 200:
                    fill.error_body = download.error_body
                    return
                fill.length = download.length
                handle, temp = await to_thread.run_sync(self._store.new_temp)
                fill.path = temp
                fill.ready.set()
                digest = hashlib.sha256()
                async for chunk in download.chunks:
                    await to_thread.run_sync(_write, handle, chunk)  # type: ignore[arg-type]
                    digest.update(chunk)
                    fill.written += len(chunk)
                    fill.notify()
            if fill.length is not None and fill.written != fill.length:
                raise IncompleteBody(f"got {fill.written} of {fill.length} bytes")
            if digest.hexdigest() != fill.sha256.lower():
                self.on_mismatch.append(fill.sha256)
                raise HashMismatch(f"{fill.sha256[:12]}… hashes to {digest.hexdigest()[:12]}…")
            await to_thread.run_sync(self._store.put_file, fill.sha256, temp)
        except ProxyError as exc:
            log.warning("fill of %s failed: %s", fill.sha256, exc)
            fill.error = exc
        except OSError as exc:
            log.warning("fill of %s failed: %s", fill.sha256, exc)
            fill.error = CacheError(f"cannot write the cache: {exc.strerror}")
        finally:
            if handle is not None:
                await to_thread.run_sync(handle.close)
            self._active.pop(fill.sha256, None)
            fill.done = True
            fill.ready.set()
            fill.notify()
            await _remove_if_unread(fill)

    def read(self, fill: Fill, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes [start, end) of a fill as they arrive.

        The last byte is held back until the file is verified, so a client never sees a
        clean end of a body that failed its hash: it sees the connection break instead.
        Call it with no await between checking the fill and calling: the reader is
        counted at once, so the temp file outlives the fill until the last reader is done.
        """
        assert fill.path is not None, "read() needs a fill that started its body"
        fill.readers += 1
        return self._read(fill, fill.path, start, end)

    async def _read(
        self, fill: Fill, path: Path, start: int, end: int | None
    ) -> AsyncIterator[bytes]:
        try:
            handle = await to_thread.run_sync(open, path, "rb")
        except BaseException:
            fill.readers -= 1
            await _remove_if_unread(fill)
            raise
        try:
            await to_thread.run_sync(handle.seek, start)
            position = start
            while end is None or position < end:
                done, written = fill.done, fill.written
                if done and fill.error is not None:
                    raise fill.error
                limit = written if done else written - 1
                if end is not None:
                    limit = min(limit, end)
                if position < limit:
                    size = min(READ_CHUNK, limit - position)
                    chunk: bytes = await to_thread.run_sync(handle.read, size)
                    position += len(chunk)
                    yield chunk
                elif done:
                    return
                else:
                    await fill.changed()
        finally:
            fill.readers -= 1
            await to_thread.run_sync(handle.close)
            await _remove_if_unread(fill)


def _write(handle: IO[bytes], chunk: bytes) -> None:
    """Write and flush, so readers with their own handle see the bytes at once."""
    handle.write(chunk)
    handle.flush()


async def _remove_if_unread(fill: Fill) -> None:
    """Unlink the temp file once the fill is over and no reader has it open."""
    if fill.done and fill.readers == 0 and fill.path is not None:
        path = fill.path
        await to_thread.run_sync(lambda: path.unlink(missing_ok=True))
