"""Files: from the cache to whoever may read them, else from GitLab through one shared fill
(or, when the cache has no room, streamed through uncached)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from anyio import to_thread

from proxy.access import Keeper
from proxy.answers import Download
from proxy.cache import Store
from proxy.coremeta import CoreMetadata, Found, NoRanges
from proxy.errors import (
    CacheError,
    HashMismatch,
    IncompleteBody,
    OfflineMiss,
    UpstreamError,
    UpstreamUnavailable,
)
from proxy.filereplies import (
    Asked,
    FileReply,
    Passed,
    Small,
    cached_reply,
    in_memory,
    read_small,
    unread,
)
from proxy.fillreads import Body, Fill
from proxy.fills import Filler
from proxy.forwarding import Forwarding, Source
from proxy.hotfiles import HotFile, HotFiles, verified
from proxy.models import Caller, Reply
from proxy.ranges import first_byte, partial
from proxy.recent import Recent
from proxy.storage import Opened
from proxy.upstream import GitLab

UNFIT_REMEMBERED = 1024
PRESIGNED_FOR = 300
"""Seconds a redirect's presigned URL is valid (storage.redirect)."""
WARMED_KEPT = 4096
"""Wheels remembered as having had their dependencies' pages fetched ahead."""
_NOT_FOUND = b'{"message":"404 Package Not Found"}'
_PLAIN = Asked()  # a GET of the whole file


class Downloads:
    """Answers file requests (design 3.2) under the access rules of the Keeper."""

    def __init__(
        self,
        *,
        store: Store,
        upstream: GitLab,
        filler: Filler,
        keeper: Keeper,
        offline: bool,
        refusal_ttl: float = 300.0,
        on_mismatch: Callable[[], None] = lambda: None,
        on_bypass: Callable[[], None] = lambda: None,
        forwarding: Forwarding | None = None,
        metadata: CoreMetadata | None = None,
        redirect: bool = False,
        on_metadata: Callable[[Caller, bytes], None] = lambda caller, data: None,
        hot: HotFiles | None = None,
    ) -> None:
        self._hot = hot
        self._redirect = redirect
        self._on_metadata = on_metadata
        self._warmed: Recent[str, None] = Recent(
            WARMED_KEPT
        )  # wheels whose dependencies were looked at
        self._forwarding = forwarding
        self._metadata = metadata
        self._store = store
        self._upstream = upstream
        self._filler = filler
        self._keeper = keeper
        self.offline = offline
        self._refusal_ttl = refusal_ttl
        self._on_mismatch = on_mismatch
        self._on_bypass = on_bypass
        self._tasks: set[asyncio.Task[None]] = set()
        self._unfit: Recent[str, int] = Recent(UNFIT_REMEMBERED)
        """sha256 -> length of files whose fill found no room, the oldest first."""
        self._public: dict[str, Fill] = {}  # running fills from a public URL, by sha256

    def __repr__(self) -> str:
        return f"Downloads(upstream={self._upstream!r}, offline={self.offline})"

    async def file(
        self, caller: Caller, sha256: str, filename: str, asked: Asked = _PLAIN
    ) -> FileReply | Passed | Reply:
        """A file from the cache, or from GitLab through a fill this caller may share.

        Knowing a sha256 is not access: the cache serves a file only under a name GitLab
        gave it through this scope, to this caller or to anyone (design 3.4, 3.7); any
        other caller asks GitLab first, with a HEAD or with its own download.
        A file the cache has no room for (or cannot write) is streamed through uncached.
        A file not held: a HEAD asks GitLab and fetches nothing; a Range whose first byte
        the fill has not written yet is passed through to GitLab (`_pass`) while the fill
        goes on, so the file is still cached.
        """
        key = sha256.lower()
        hot = self._hot.get(caller.owner, key, filename) if self._hot is not None else None
        if hot is not None:
            return in_memory(hot.data, "HIT", sha256=hot.sha256, modified=hot.modified)
        path = f"{caller.scope.api_path}/files/{sha256}/{quote(filename, safe='+')}"
        mark = self._hot.mark() if self._hot is not None else b""
        known = await to_thread.run_sync(self._known, caller, key, filename)
        if known.hot is not None and known.until is not None and self._hot is not None:
            self._hot.keep(caller.owner, key, filename, known.hot, until=known.until, mark=mark)
        vetted, fallback, source = known.vetted, known.fallback, known.source
        if known.wheel is not None:
            return await self._core_metadata(caller, key, known.wheel, known)
        if source is None and filename.endswith(".metadata"):
            # GitLab serves no core metadata: a `.metadata` name is only ever a followed
            # page's, with its own hash. Without that record, never the wheel's bytes.
            vetted = fallback = False
        if source is not None:
            key = source.sha256  # a core-metadata file: addressed by its wheel, hashed by itself
            if source.public and not source.seen and key not in self._public:
                # A public page naming a sha256 is not access to bytes the cache got from
                # elsewhere (another scope's GitLab): GitLab decides, as for anyone it
                # never answered, until the bytes have been seen at a public URL.
                vetted = not await to_thread.run_sync(self._store.has_file, key)
        if not vetted:
            if await self._keeper.refused(caller, key, filename):
                return Reply(404, _NOT_FOUND, {"content-type": "application/json"}, "BYPASS")
            if await to_thread.run_sync(self._store.has_file, key):
                refusal = await self._check(caller, path, key, filename, fallback=fallback)
                if refusal is not None:
                    return refusal
                vetted = True
        if vetted and self._redirect and not asked.head:
            # A HEAD is answered here: a URL presigned for GET refuses HEAD (S3 signs the method).
            url = await to_thread.run_sync(self._presign, key, filename)
            if url is not None:
                # After the access check, as GitLab does: the bytes never pass through here.
                return Reply(302, b"", {"location": url, "cache-control": "no-store"}, "HIT")
        if known.opened is not None:
            return cached_reply(known.opened, key)
        # _known tried to open it already when the caller was vouched for GitLab's file.
        looked = known.vetted and source is None and not self._redirect
        if vetted and not looked:
            hit = await self._open_cached(key)
            if hit is not None:
                return hit
        if vetted and self._metadata is not None and await self._metadata.settled(key):
            # A range read for its metadata brought the whole wheel: it is stored now.
            hit = await self._open_cached(key)
            if hit is not None:
                return hit
        if self.offline:
            raise OfflineMiss(f"offline mode: {filename} is not cached")
        public = source is not None and source.public and vetted
        if source is not None and public:
            # A file of a followed public page: from the public index, never with a
            # credential, one fetch for every caller (the sha256 decides, not who asks).
            url, authorization, origin = source.url, None, ""
        else:
            # GitLab's path, or its EE forward/ route for a file its firewall page gave.
            url = source.url if source is not None and vetted else path
            authorization, origin = caller.upstream, caller.origin
        fetch = _Fetch(caller, url, authorization, key, filename, asked)
        # --- cold ranges and HEAD (design 3.2): after the access decision, before any fill.
        if asked.head:
            return await self._head(fetch, vetted=vetted)
        # A full disk, or a file known not to fit: don't open a fill only to drop it.
        if not await to_thread.run_sync(self._filler.has_room, self._unfit.get(key)):
            return await self._through(fetch, vetted=vetted)
        fill = self._filler.start(
            key, url, authorization=authorization, origin=origin, vetted=vetted
        )
        if public and key not in self._public:
            self._public[key] = fill
            self._spawn(self._seen(fill))
        # A whole wheel downloaded to resolve (pip) tells its dependencies only once here;
        # a client probing with ranges (uv) read them already and asks for their pages itself.
        ahead = self._metadata is not None and self._metadata.mode != "off" and not asked.range
        if ahead and filename.endswith(".whl") and self._warmed.first(key, None):
            self._spawn(self._ahead(caller, fill, filename))
        if _cold(asked, fill):
            passed = await self._pass(fetch, vetted=vetted)
            if passed is not None:
                return passed
        await fill.ready.wait()
        if isinstance(fill.error, CacheError):
            if fill.length is not None:
                self._unfit.put(key, fill.length)
            return await self._through(fetch, vetted=vetted)
        if fill.status == 0 and fill.error is not None:
            raise fill.error
        if fill.status != 200:
            await self._refused(caller, key, filename, fill.status)
            return Reply(fill.status, fill.error_body, dict(fill.headers), "BYPASS")
        if not vetted:
            await self._remember(caller, path, key, filename)
        if not fill.done and _cold(asked, fill):
            passed = await self._pass(fetch, vetted=True)
            if passed is not None:
                return passed
        if not fill.done:
            # No await from here until the caller reads: Filler.read counts the reader
            # at once, and a counted reader keeps the fill's file open.
            reply = FileReply(
                fill.length,
                "MISS",
                lambda start, end: self._filler.read(fill, start, end),
                sha256=key,
                follow=lambda start, end: self._filler.follow(fill, start, end),
            )
        else:
            if fill.error is not None:
                raise fill.error
            committed = await self._open_cached(key)
            if committed is None:  # evicted at once: it does not fit the cache
                return await self._through(fetch, vetted=True)
            committed.cache = "MISS"
            reply = committed
        return reply

    # -- core metadata (PEP 658/714, design 3.7) ---------------------------------------

    def _known(self, caller: Caller, key: str, filename: str) -> _Known:
        """(Blocking) what the cache says of a file request, read in one thread hop: whether
        the caller may have it, where a followed page put it, and the cached file opened
        (or, for a GitLab wheel's `.metadata`, the metadata held) when it may be served."""
        forwarding, metadata = self._forwarding, self._metadata
        if filename.endswith(".metadata") and metadata and metadata.mode != "off":
            # A followed page's own record of this name, when the caller may have it;
            # else (GitLab serves no `.metadata`) the wheel's core metadata.
            own = forwarding.source_now(key, filename) if forwarding else None
            if own is not None:
                vetted, fallback = self._keeper.vouched_now(caller, key, filename)
                if vetted:
                    return _Known(vetted, fallback, own)
            wheel = filename.removesuffix(".metadata")
            until = self._keeper.vouched_until(caller, key, wheel)
            vetted, fallback = self._keeper.standing(until)
            source = forwarding.source_now(key, wheel) if forwarding else None
            held: Found | bool | None = None
            hot = None
            if wheel.endswith(".whl") and (vetted or fallback) and source is None:
                held = metadata.local(key, wheel)
                if vetted and isinstance(held, Found) and not held.fetched:
                    hot = verified(held.data, held.sha256)
            return _Known(vetted, fallback, source, wheel, held, hot=hot, until=until)
        until = self._keeper.vouched_until(caller, key, filename)
        vetted, fallback = self._keeper.standing(until)
        source = forwarding.source_now(key, filename) if vetted and forwarding else None
        opened, hot = None, None
        if vetted and source is None and not self._redirect:
            opened = read_small(self._store.files.open_range(key))
            if isinstance(opened, Small):
                hot = verified(opened.data, key, opened.modified)
        return _Known(vetted, fallback, source, opened=opened, hot=hot, until=until)

    async def _core_metadata(
        self, caller: Caller, sha256: str, wheel: str, known: _Known
    ) -> FileReply | Reply:
        """`<wheel>.metadata` of a wheel this caller may read: from the cache, else (mode
        "always") from GitLab's ranges of the wheel, else from the whole wheel through
        the usual fill. A 404 for anything else: never a guess, never the wheel's bytes."""
        assert self._metadata is not None
        path = f"{caller.scope.api_path}/files/{sha256}/{quote(wheel, safe='+')}"
        vetted, fallback, source = known.vetted, known.fallback, known.source
        if not wheel.endswith(".whl") or not (vetted or fallback):
            return Reply(404, _NOT_FOUND, {"content-type": "application/json"}, "BYPASS")
        if not vetted:
            refusal = await self._check(caller, path, sha256, wheel, fallback=True)
            if refusal is not None:
                return refusal
        try:
            if source is not None:  # a public index's wheel: no ranges through PublicIndex
                raise NoRanges("a public file")
            if isinstance(known.metadata, Found):
                found: Found | None = known.metadata
            elif known.metadata is False or not self._metadata.remote:
                found = None
            else:
                found = await self._metadata.find(
                    sha256, wheel, path=path, authorization=caller.upstream, looked=True
                )
        except NoRanges:
            answer = await self.file(caller, sha256, wheel)
            if isinstance(answer, Reply):
                return answer
            assert isinstance(answer, FileReply), "a whole-file GET is never passed through"
            body = answer.chunks(0, None)
            try:
                async for _chunk in body:
                    pass
            finally:
                await body.aclose()
            found = await self._metadata.held(sha256, wheel)
        if found is None:
            return Reply(404, _NOT_FOUND, {"content-type": "application/json"}, "BYPASS")
        data = found.data
        if self._metadata.remote and self._warmed.first(sha256, None):
            # Mode "always", a wheel's metadata served the first time here: a resolution
            # goes on from it (its dependencies' pages are fetched ahead when not fresh).
            self._on_metadata(caller, data)

        return in_memory(data, "MISS" if found.fetched else "HIT", sha256=found.sha256)

    async def _through(self, fetch: _Fetch, *, vetted: bool) -> FileReply | Passed | Reply:
        """The file straight from its source, not cached (X-Cache BYPASS): hashed on the
        way like a fill, its last chunk held back until the hash matches. The upstream
        response stays open until the body is read, or closed unread (a client gone).
        A partial Range goes through to GitLab as it is (`_pass`)."""
        if _cold(fetch.asked, None):
            passed = await self._pass(fetch, vetted=vetted)
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

    async def _pass(self, fetch: _Fetch, *, vetted: bool) -> Passed | Reply | None:
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

    async def _open(
        self,
        opening: AbstractAsyncContextManager[Download],
        fetch: _Fetch,
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
                await self._refused(fetch.caller, fetch.sha256, fetch.filename, download.status)
                return Reply(download.status, download.error_body, dict(download.headers), "BYPASS")
            if not vetted:
                await self._remember(fetch.caller, fetch.url, fetch.sha256, fetch.filename)
        except BaseException:
            await stack.aclose()
            raise
        return download, stack

    async def _head(self, fetch: _Fetch, *, vetted: bool) -> FileReply | Reply:
        """A HEAD of a file not held: what GitLab says of it (its real size; Accept-Ranges
        only when GitLab answers ranges, since a Range is passed through to it), nothing
        downloaded, X-Cache BYPASS."""
        probe = await self._upstream.head(fetch.url, authorization=fetch.authorization)
        if probe.status >= 300:
            await self._refused(fetch.caller, fetch.sha256, fetch.filename, probe.status)
            return Reply(probe.status, probe.body, dict(probe.headers), "BYPASS")
        if not vetted:
            await self._remember(fetch.caller, fetch.url, fetch.sha256, fetch.filename)
        return FileReply(probe.size, "BYPASS", unread, ranged=probe.ranges)

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

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background; aclose() waits for it."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(
        self, caller: Caller, path: str, sha256: str, filename: str, *, fallback: bool
    ) -> Reply | None:
        """None when GitLab (or, offline, its earlier word) lets the caller read the file."""
        if self.offline:
            if fallback:
                return None
            raise OfflineMiss("offline mode: this file was never served through this URL")
        try:
            answer = await self._upstream.check(path, authorization=caller.upstream)
        except UpstreamError:
            if fallback:
                return None
            raise
        if answer.status < 400:
            await self._remember(caller, path, sha256, filename)
            return None
        await self._refused(caller, sha256, filename, answer.status)
        return Reply(answer.status, answer.body, dict(answer.headers), "BYPASS")

    async def _remember(self, caller: Caller, path: str, sha256: str, filename: str) -> None:
        """Record what GitLab just served; a caller with its own credentials has it recorded
        in the background, since that first asks GitLab again (the download need not wait)."""
        if not caller.personal:
            await self._keeper.vouch(caller, [(sha256, filename)], public=True)
            return
        self._spawn(self._vouch_personal(caller, path, sha256, filename))

    async def _ahead(self, caller: Caller, fill: Fill, wheel: str) -> None:
        """Once a wheel a client downloads is held, the pages of its dependencies are
        fetched ahead (when not fresh): the resolver asks for them next."""
        assert self._metadata is not None
        while not fill.done:
            await fill.changed()
        if fill.ok:
            found = await self._metadata.held(fill.sha256, wheel)
            if found is not None:
                self._on_metadata(caller, found.data)

    async def _seen(self, fill: Fill) -> None:
        """Once a public fill is verified, its bytes are known to be public (until that is
        recorded, the running fill says so)."""
        try:
            while not fill.done:
                await fill.changed()
            if fill.ok and self._forwarding is not None:
                await self._forwarding.seen(fill.sha256)
        finally:
            self._public.pop(fill.sha256, None)

    async def _vouch_personal(self, caller: Caller, path: str, sha256: str, filename: str) -> None:
        """GitLab let a caller with its own credentials read the file: it gets a record of
        its own only when GitLab would not give the file to anyone (a credential GitLab did
        not need creates nothing)."""
        try:
            public = (await self._upstream.check(path, authorization=None)).status < 400
        except UpstreamError:
            public = False
        await self._keeper.vouch(caller, [(sha256, filename)], public=public)

    async def _refused(self, caller: Caller, sha256: str, filename: str, status: int) -> None:
        """GitLab's 404 for a caller GitLab lets into the scope: no such name for this
        sha256 here. Remembered, so a wrong name is never asked for twice."""
        if status == 404 and not caller.personal:
            await self._keeper.refuse(caller, sha256, filename, ttl=self._refusal_ttl)

    async def aclose(self) -> None:
        """Wait for the records of finished downloads, and close what was left unread (at
        shutdown)."""
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task

    def _presign(self, key: str, filename: str) -> str | None:
        return self._store.files.presign(key, filename=filename, expires=PRESIGNED_FOR)

    async def _open_cached(self, key: str) -> FileReply | None:
        opened = await to_thread.run_sync(self._open_small, key)
        return None if opened is None else cached_reply(opened, key)

    def _open_small(self, key: str) -> Opened | Small | None:
        return read_small(self._store.files.open_range(key))


@dataclass(frozen=True, slots=True)
class _Fetch:
    """A file request GitLab (or a public index) is asked about: who asks, where, for what."""

    caller: Caller
    url: str
    authorization: str | None
    """What goes upstream: the caller's (or service) credential, None for a public index."""
    sha256: str
    filename: str
    asked: Asked


@dataclass(frozen=True, slots=True)
class _Known:
    """What the cache says of a file request (Downloads._known)."""

    vetted: bool
    fallback: bool
    source: Source | None
    wheel: str | None = None
    """For a GitLab wheel's `<wheel>.metadata`, the wheel's name."""
    metadata: Found | bool | None = None
    """Then: CoreMetadata.local's answer (None: not read, or the cache cannot tell)."""
    opened: Opened | Small | None = None
    """The cached file, open (or read, when small), when it may be served as it is."""
    hot: HotFile | None = None
    """Bytes that may be kept in memory for this caller and name (HotFiles), checked."""
    until: float | None = None
    """Keeper.vouched_until's answer: how long `hot` may be served to this caller."""


def _cold(asked: Asked, fill: Fill | None) -> bool:
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
