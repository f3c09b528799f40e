"""Files: from the cache to whoever may read them, else from GitLab through one shared fill
(or, when the cache has no room, streamed through uncached)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from anyio import to_thread

from proxy.access import Keeper
from proxy.cache import Store
from proxy.coremeta import CoreMetadata, Found
from proxy.errors import CacheError, OfflineMiss
from proxy.fileaccess import FileAccess
from proxy.filereplies import (
    Asked,
    FileReply,
    Passed,
    Small,
    cached_reply,
    in_memory,
    not_found,
    read_small,
)
from proxy.fillreads import Fill
from proxy.fills import Filler
from proxy.forwarding import Forwarding, Source
from proxy.hotfiles import HotFile, HotFiles, verified
from proxy.metadatafiles import MetadataFiles
from proxy.models import Caller, Reply
from proxy.passthrough import Fetch, Passthrough, cold
from proxy.recent import Recent
from proxy.storage import Opened
from proxy.upstream import GitLab

UNFIT_REMEMBERED = 1024
PRESIGNED_FOR = 300
"""Seconds a redirect's presigned URL is valid (storage.redirect)."""
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
        self._forwarding = forwarding
        self._metadata = metadata
        self._store = store
        self._upstream = upstream
        self._filler = filler
        self._keeper = keeper
        self.offline = offline
        self._tasks: set[asyncio.Task[None]] = set()
        self._access = FileAccess(
            upstream=upstream,
            keeper=keeper,
            offline=offline,
            refusal_ttl=refusal_ttl,
            spawn=self._spawn,
        )
        self._passthrough = Passthrough(
            upstream=upstream,
            access=self._access,
            spawn=self._spawn,
            on_mismatch=on_mismatch,
            on_bypass=on_bypass,
        )
        self._metadata_files: MetadataFiles | None = None
        if metadata is not None:
            self._metadata_files = MetadataFiles(
                metadata=metadata,
                access=self._access,
                whole=self.file,
                on_metadata=on_metadata,
                spawn=self._spawn,
            )
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
        the fill has not written yet is passed through to GitLab (`Passthrough.ranged`)
        while the fill goes on, so the file is still cached.
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
            assert self._metadata_files is not None, "a wheel's `.metadata` needs core metadata"
            return await self._metadata_files.serve(
                caller,
                key,
                known.wheel,
                vetted=vetted,
                fallback=fallback,
                source=source,
                held=known.metadata,
            )
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
                return not_found()
            if await to_thread.run_sync(self._store.has_file, key):
                refusal = await self._access.check(caller, path, key, filename, fallback=fallback)
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
        fetch = Fetch(caller, url, authorization, key, filename, asked)
        # --- cold ranges and HEAD (design 3.2): after the access decision, before any fill.
        if asked.head:
            return await self._passthrough.head(fetch, vetted=vetted)
        # A full disk, or a file known not to fit: don't open a fill only to drop it.
        if not await to_thread.run_sync(self._filler.has_room, self._unfit.get(key)):
            return await self._passthrough.through(fetch, vetted=vetted)
        fill = self._filler.start(
            key, url, authorization=authorization, origin=origin, vetted=vetted
        )
        if public and key not in self._public:
            self._public[key] = fill
            self._spawn(self._seen(fill))
        # A whole wheel downloaded to resolve (pip) tells its dependencies only once here;
        # a client probing with ranges (uv) read them already and asks for their pages itself.
        if self._metadata_files is not None and not asked.range:
            self._metadata_files.downloading(caller, fill, key, filename)
        if cold(asked, fill):
            passed = await self._passthrough.ranged(fetch, vetted=vetted)
            if passed is not None:
                return passed
        await fill.ready.wait()
        if isinstance(fill.error, CacheError):
            if fill.length is not None:
                self._unfit.put(key, fill.length)
            return await self._passthrough.through(fetch, vetted=vetted)
        if fill.status == 0 and fill.error is not None:
            raise fill.error
        if fill.status != 200:
            await self._access.refused(caller, key, filename, fill.status)
            return Reply(fill.status, fill.error_body, dict(fill.headers), "BYPASS")
        if not vetted:
            await self._access.remember(caller, path, key, filename)
        if not fill.done and cold(asked, fill):
            passed = await self._passthrough.ranged(fetch, vetted=True)
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
                return await self._passthrough.through(fetch, vetted=True)
            committed.cache = "MISS"
            reply = committed
        return reply

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

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background; aclose() waits for it."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
