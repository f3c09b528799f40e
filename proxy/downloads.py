"""Files: from the cache to whoever may read them, else from GitLab through one shared fill."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import quote

from anyio import to_thread

from proxy.access import Keeper
from proxy.cache import Store
from proxy.errors import OfflineMiss, UpstreamError, UpstreamUnavailable
from proxy.fills import Body, Filler
from proxy.models import CacheStatus, Reply, Scope
from proxy.upstream import GitLab

READ_CHUNK = 128 * 1024


@dataclass(slots=True)
class FileReply:
    """A file to stream: its size (when known) and a way to read any byte range."""

    size: int | None
    cache: CacheStatus
    chunks: Callable[[int, int | None], Body]
    """chunks(start, end): the bytes [start, end); end None means to the end."""
    release: Callable[[], None] = field(default=lambda: None)
    """Frees what `chunks` would have used, for a HEAD that reads nothing."""


class Downloads:
    """Answers file requests (design 3.2) under the access rules of the Keeper."""

    def __init__(
        self, *, store: Store, upstream: GitLab, filler: Filler, keeper: Keeper, offline: bool
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._filler = filler
        self._keeper = keeper
        self.offline = offline

    def __repr__(self) -> str:
        return f"Downloads(upstream={self._upstream!r}, offline={self.offline})"

    async def file(
        self, scope: Scope, sha256: str, filename: str, *, authorization: str | None
    ) -> FileReply | Reply:
        """A file from the cache, or from GitLab through one shared fill."""
        key = sha256.lower()
        path = f"{scope.api_path}/files/{sha256}/{quote(filename, safe='+')}"
        now_ok, later_ok = await self._keeper.vouched(scope.key, authorization, key)
        upstream_auth = self._keeper.upstream_authorization(authorization)
        if not now_ok and (
            self._filler.rival(key, path, authorization=upstream_auth)
            or await to_thread.run_sync(self._store.has_file, key)
        ):
            # Held (or being fetched for someone else), but not yet shown to be readable
            # here by this caller: knowing a sha256 is not access. GitLab decides, or,
            # when it can't be asked, what it decided before.
            refusal = await self._check(scope, path, key, authorization, fallback=later_ok)
            if refusal is not None:
                return refusal
        hit = await self._open_cached(key)
        if hit is not None:
            return hit
        if self.offline:
            raise OfflineMiss(f"offline mode: {filename} is not cached")
        fill = self._filler.start(key, path, authorization=upstream_auth)
        await fill.ready.wait()
        if fill.status == 0 and fill.error is not None:
            raise fill.error
        if fill.status != 200:
            return Reply(fill.status, fill.error_body, dict(fill.headers), "BYPASS")
        await self._keeper.vouch(scope.key, authorization, [key])
        if not fill.done:
            # No await from here until the caller reads: Filler.read counts the reader
            # at once, and a counted reader keeps the fill's file open.
            return FileReply(
                fill.length, "MISS", lambda start, end: self._filler.read(fill, start, end)
            )
        if fill.error is not None:
            raise fill.error
        committed = await self._open_cached(key)
        if committed is None:
            raise UpstreamUnavailable("the file was fetched but could not be read back")
        committed.cache = "MISS"
        return committed

    async def _check(
        self, scope: Scope, path: str, sha256: str, authorization: str | None, *, fallback: bool
    ) -> Reply | None:
        """None when GitLab (or, offline, its earlier word) lets the caller read the file."""
        if self.offline:
            if fallback:
                return None
            raise OfflineMiss("offline mode: this file was never served through this URL")
        try:
            answer = await self._upstream.check(
                path, authorization=self._keeper.upstream_authorization(authorization)
            )
        except UpstreamError:
            if fallback:
                return None
            raise
        if answer.status < 400:
            await self._keeper.vouch(scope.key, authorization, [sha256])
            return None
        return Reply(answer.status, answer.body, dict(answer.headers), "BYPASS")

    async def _open_cached(self, key: str) -> FileReply | None:
        opened = await to_thread.run_sync(self._open_with_size, key)
        if opened is None:
            return None
        handle, size = opened
        return FileReply(
            size,
            "HIT",
            lambda start, end: Body(_read_handle(handle, start, end), handle.close),
            handle.close,
        )

    def _open_with_size(self, key: str) -> tuple[IO[bytes], int] | None:
        handle = self._store.open_file(key)
        return None if handle is None else (handle, os.fstat(handle.fileno()).st_size)


async def _read_handle(
    handle: IO[bytes], start: int, end: int | None
) -> AsyncGenerator[bytes, None]:
    """Bytes [start, end) of an open cached file; closes it when done."""
    try:
        await to_thread.run_sync(handle.seek, start)
        remaining = None if end is None else end - start
        while remaining is None or remaining > 0:
            size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
            chunk: bytes = await to_thread.run_sync(handle.read, size)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
    finally:
        await to_thread.run_sync(handle.close)
