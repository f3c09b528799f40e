"""Files answered straight from GitLab, never cached: HEADs, cold ranges, files without room."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from proxy.answers import Download
from proxy.errors import HashMismatch, IncompleteBody, UpstreamUnavailable
from proxy.fileaccess import FileAccess
from proxy.filereplies import Asked, FileReply, Passed, unread
from proxy.fillreads import Body, Fill
from proxy.models import Caller, Reply
from proxy.ranges import first_byte, partial
from proxy.upstream import GitLab


@dataclass(frozen=True, slots=True)
class Fetch:
    """A file request GitLab (or a public index) is asked about: who asks, where, for what."""

    caller: Caller
    url: str
    authorization: str | None
    """What goes upstream: the caller's (or service) credential, None for a public index."""
    sha256: str
    filename: str
    asked: Asked


class Passthrough:
    """GitLab's answers to file requests passed on as they come (X-Cache BYPASS), after
    the access decision; what GitLab grants or refuses on the way is kept by `access`."""

    def __init__(
        self,
        *,
        upstream: GitLab,
        access: FileAccess,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        on_mismatch: Callable[[], None],
        on_bypass: Callable[[], None],
    ) -> None:
        self._upstream = upstream
        self._access = access
        self._spawn = spawn
        self._on_mismatch = on_mismatch
        self._on_bypass = on_bypass

    def __repr__(self) -> str:
        return f"Passthrough(upstream={self._upstream!r})"

    async def through(self, fetch: Fetch, *, vetted: bool) -> FileReply | Passed | Reply:
        """The file straight from its source, not cached (X-Cache BYPASS): hashed on the
        way like a fill, its last chunk held back until the hash matches. The upstream
        response stays open until the body is read, or closed unread (a client gone).
        A partial Range goes through to GitLab as it is (`ranged`)."""
        if cold(fetch.asked, None):
            passed = await self.ranged(fetch, vetted=vetted)
            if passed is not None:
                return passed
        opening = self._upstream.download(fetch.url, authorization=fetch.authorization)
        opened = await self._open(opening, fetch, vetted=vetted, wanted=200)
        if opened is None:
            raise UpstreamUnavailable("GitLab sent part of a file it was asked for whole")
        if isinstance(opened, Reply):
            return opened
        download, stack = opened
        self._on_bypass()

        def close() -> None:
            self._spawn(stack.aclose())

        return FileReply(
            download.length,
            "BYPASS",
            lambda start, end: Body(self._hashed(download, fetch.sha256, stack), close),
            close,
            ranged=False,
            sha256=fetch.sha256,
        )

    async def ranged(self, fetch: Fetch, *, vetted: bool) -> Passed | Reply | None:
        """GitLab's answer to the caller's own ranged request, as a direct client would get
        it (GitLab's 206 or refusal, X-Cache BYPASS, never cached); None when GitLab sent the
        whole file instead (no ranges there, or its If-Range did not hold): the fill serves.

        If-Range naming this file's own ETag holds by definition (the sha256 names the
        bytes) and GitLab does not know that tag, so it is left out; any other goes as is.
        """
        asked = fetch.asked
        own = asked.if_range.strip() == f'"{fetch.sha256}"'
        opening = self._upstream.ranged(
            fetch.url,
            byte_range=asked.range,
            if_range=None if own else asked.if_range or None,
            authorization=fetch.authorization,
        )
        opened = await self._open(opening, fetch, vetted=vetted, wanted=206)
        if not isinstance(opened, tuple):
            return opened
        download, stack = opened
        body = Body(_exact(download, stack), lambda: self._spawn(stack.aclose()))
        return Passed(download.status, download.headers, download.length, body)

    async def head(self, fetch: Fetch, *, vetted: bool) -> FileReply | Reply:
        """A HEAD of a file not held: what GitLab says of it (its real size; Accept-Ranges
        only when GitLab answers ranges, since a Range is passed through to it), nothing
        downloaded, X-Cache BYPASS."""
        probe = await self._upstream.head(fetch.url, authorization=fetch.authorization)
        if probe.status >= 300:
            await self._access.refused(fetch.caller, fetch.sha256, fetch.filename, probe.status)
            return Reply(probe.status, probe.body, dict(probe.headers), "BYPASS")
        if not vetted:
            await self._access.remember(fetch.caller, fetch.url, fetch.sha256, fetch.filename)
        return FileReply(probe.size, "BYPASS", unread, ranged=probe.ranges)

    async def _open(
        self,
        opening: AbstractAsyncContextManager[Download],
        fetch: Fetch,
        *,
        vetted: bool,
        wanted: int,
    ) -> tuple[Download, contextlib.AsyncExitStack] | Reply | None:
        """Open a download for the caller: while open, when GitLab answered `wanted` (its
        grant recorded); GitLab's refusal as a Reply; None (closed) for another 2xx."""
        stack = contextlib.AsyncExitStack()
        download = await stack.enter_async_context(opening)
        try:
            if download.status != wanted:
                await stack.aclose()
                if download.status < 300:
                    return None
                caller, sha256, filename = fetch.caller, fetch.sha256, fetch.filename
                await self._access.refused(caller, sha256, filename, download.status)
                return Reply(download.status, download.error_body, dict(download.headers), "BYPASS")
            if not vetted:
                await self._access.remember(fetch.caller, fetch.url, fetch.sha256, fetch.filename)
        except BaseException:
            await stack.aclose()
            raise
        return download, stack

    async def _hashed(
        self, download: Download, sha256: str, stack: contextlib.AsyncExitStack
    ) -> AsyncGenerator[bytes, None]:
        """GitLab's body, each chunk passed on once the next one arrived; the last one only
        when the whole body is there and hashes to `sha256`."""
        try:
            digest, held, got = hashlib.sha256(), b"", 0
            async for chunk in download.chunks:
                if held:
                    yield held
                digest.update(chunk)
                held, got = chunk, got + len(chunk)
            if download.length is not None and got != download.length:
                raise IncompleteBody(f"got {got} of {download.length} bytes")
            if digest.hexdigest() != sha256:
                self._on_mismatch()
                raise HashMismatch(f"{sha256[:12]}… hashes to {digest.hexdigest()[:12]}…")
            if held:
                yield held
        finally:
            await stack.aclose()


def cold(asked: Asked, fill: Fill | None) -> bool:
    """Whether `asked` is a partial Range whose first byte `fill` has not written yet
    (no fill, a fill without its body yet, or a suffix of a file of unknown size): such a
    range goes to GitLab. A range starting in written bytes is served from the fill.
    `bytes=0-` is a download, not a peek: the fill serves it."""
    if not asked.range or not partial(asked.range):
        return False
    if fill is None or not fill.ready.is_set() or fill.fd is None:
        return True
    first = first_byte(asked.range, fill.length)
    return first is None or first >= fill.written


async def _exact(
    download: Download, stack: contextlib.AsyncExitStack
) -> AsyncGenerator[bytes, None]:
    """GitLab's body as it comes, breaking off if it ends short of its Content-Length;
    closes the download after."""
    try:
        got = 0
        async for chunk in download.chunks:
            got += len(chunk)
            yield chunk
        if download.length is not None and got != download.length:
            raise IncompleteBody(f"got {got} of {download.length} bytes")
    finally:
        await stack.aclose()
