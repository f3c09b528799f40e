"""One page's trip to GitLab: asked (with a validator), parsed, timed and kept, or stale."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from anyio import to_thread

from proxy.access import Keeper
from proxy.answers import REDIRECTS, Answer, retry_after
from proxy.cache import Store, StoredPage
from proxy.drain import Serial
from proxy.errors import CacheError, UpstreamError, UpstreamStatus
from proxy.forwarding import Followed, Forwarding, is_public
from proxy.metadatainjector import MetadataInjector
from proxy.models import CacheStatus, Caller, NormalizedName, Page, Reply, Scope
from proxy.rendered import Renderer
from proxy.uploadtimes import Early, UploadTimes, bare
from proxy.upstream import GitLab

log = logging.getLogger("proxy.mirror")  # the page policy's records, as before this module
Representation = Literal["html", "json"]
_ACCEPT: dict[Representation, str] = {
    "json": "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
    "html": "text/html",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one trip to the cache and GitLab found for a page, before any one view of it."""

    page: Page
    cache: CacheStatus
    only_held: bool = False
    fresh: float | None = None  # seconds it stays fresh (None: a whole page_ttl)


class PageFetcher:
    """Pages from the cache when fresh, else from GitLab (or a followed public index):
    revalidated, stored with their files vouched for, the stale page when GitLab fails."""

    def __init__(
        self,
        *,
        store: Store,
        upstream: GitLab,
        keeper: Keeper,
        page_ttl: float,
        clock: Callable[[], float] = time.time,
        renderer: Renderer,
        forwarding: Forwarding | None = None,
        metadata: MetadataInjector | None = None,
        times: UploadTimes | None = None,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._keeper = keeper
        self._page_ttl = page_ttl
        self._clock = clock
        self._writes = Serial()
        self._renderer = renderer
        self._forwarding = forwarding
        self._metadata = metadata
        self._times = times

    def __repr__(self) -> str:
        return f"PageFetcher(upstream={self._upstream!r})"

    async def fetch(
        self,
        caller: Caller,
        name: NormalizedName | None,
        representation: Representation,
        ttl: float,
        then: Callable[[bytes], None] | None,
    ) -> Outcome | Reply:
        """The page from GitLab (or the cache, when a request that just ended stored it),
        stored; the stale page when GitLab fails; GitLab's own answer when it is not a page.
        `then` is given the metadata of its newest wheels read ahead (MetadataInjector)."""
        stored = await self.stored(caller.owner, name or "", representation)
        now = self._clock()
        if stored is not None and now - stored.fetched_at < ttl:
            return Outcome(stored.page, "HIT", fresh=ttl - (now - stored.fetched_at))
        # A cold page: its upload times are asked for while the page is (no validator
        # can make GitLab's answer a 304, and every file will need a time).
        early = self._early(caller, name) if stored is None else None
        try:
            return await self._refresh(caller, name, representation, stored, early, then)
        finally:
            if early is not None:
                early.cancel()

    async def _refresh(
        self,
        caller: Caller,
        name: NormalizedName | None,
        representation: Representation,
        stored: StoredPage | None,
        early: Early | None,
        then: Callable[[bytes], None] | None,
    ) -> Outcome | Reply:
        key = Store.page_key(caller.owner, name or "", representation)
        now = self._clock()
        followed: Followed | Reply | None = None
        # A validator only for the representation asked for: a page GitLab gave as HTML
        # to a JSON request is asked for whole, so JSON turned on since is seen.
        same = stored if stored and _representation(stored.page) == representation else None
        try:
            answer = await self._ask(
                caller.scope,
                name,
                representation,
                authorization=caller.upstream,
                etag=same.etag if same and not is_public(same.etag) else None,
                quick=stored is not None,
            )
            if answer.status in REDIRECTS and name and self._forwarding is not None:
                # GitLab forwards a name it does not hold; asked again at each
                # revalidation, so a name GitLab starts holding wins at once.
                followed = await self._forwarding.follow(
                    caller.scope,
                    name,
                    answer,
                    json=representation == "json",
                    etag=same.etag if same else None,
                )
            # A 200 that cannot be parsed (PageError) is a failure like a 5xx: stale wins.
            page = await self._parse(answer, name) if answer.status == 200 else None
            if page is not None and self._metadata is not None:
                self._metadata.read_ahead(page, authorization=caller.upstream, then=then)
        except UpstreamError as exc:
            # Read only now: a page GitLab answers needs no fallback (one thread hop less).
            fallback = stored or await self.fallback(caller, name or "", representation)
            if fallback is None:
                raise
            log.warning("serving a stale page for %s: %s", key, exc)
            return Outcome(fallback.page, "STALE", only_held=True, fresh=0.0)
        if isinstance(followed, Reply):
            return followed
        unchanged = followed.page is None if followed else answer.status == 304
        if unchanged and same is not None:
            kept = same.page if followed else await self._timed(caller, name, same.page, None)
            same = StoredPage(kept, now, followed.etag if followed else same.etag)
            await self._keep(caller.owner, same, name, vouch=caller)
            return Outcome(same.page, "REVALIDATED")
        if followed is not None and followed.page is not None:
            stored = StoredPage(followed.page, now, followed.etag)
            await self._keep(caller.owner, stored, name, vouch=caller)
            return Outcome(followed.page, "MISS")
        if page is None:
            # 401/403/404 and the 302 that forwards unknown names to pypi.org: the
            # client's business, never cached as this project's page.
            return Reply(answer.status, answer.body, dict(answer.headers), "BYPASS")
        before = stored.page if stored and not is_public(stored.etag) else None
        page = await self._timed(caller, name, page, before, early)
        if caller.personal and await self._anyone_sees(caller, name, representation, page):
            # GitLab gives this page to anyone: the credential added nothing, and a
            # credential GitLab did not need leaves no record (design 3.4).
            return Outcome(page, "MISS")
        stored = StoredPage(page, now, answer.headers.get("etag", ""))
        await self._keep(caller.owner, stored, name, vouch=caller)
        return Outcome(page, "MISS")

    async def stored(
        self, owner: str, name: str, representation: Representation
    ) -> StoredPage | None:
        """The stored page for a request: for JSON, the JSON page or the HTML page GitLab
        gave a JSON request, whichever GitLab confirmed last."""
        wanted = ("json", "html") if representation == "json" else ("html",)

        def latest() -> StoredPage | None:  # one thread hop for both representations
            found = [self._store.get_page(Store.page_key(owner, name, kind)) for kind in wanted]
            kept = [stored for stored in found if stored is not None]
            return max(kept, key=lambda stored: stored.fetched_at, default=None)

        return await to_thread.run_sync(latest)

    async def fallback(
        self, caller: Caller, name: str, representation: Representation
    ) -> StoredPage | None:
        """A page to serve when GitLab can't be asked: the other representation (every
        client that asks for JSON also accepts HTML), else what GitLab gives anyone."""
        other = "html" if representation == "json" else "json"
        keys = [Store.page_key(caller.owner, name, other)]
        if caller.personal:
            keys += [Store.page_key(caller.public_owner, name, r) for r in (representation, other)]

        def first() -> StoredPage | None:  # one thread hop for every key
            return next(filter(None, map(self._store.get_page, keys)), None)

        return await to_thread.run_sync(first)

    async def _anyone_sees(
        self,
        caller: Caller,
        name: NormalizedName | None,
        representation: Representation,
        page: Page,
    ) -> bool:
        """Whether GitLab shows an anonymous client the same page (asked at most once per
        page_ttl: the anonymous answer is kept as the scope's public page)."""
        stored = await self.stored(caller.public_owner, name or "", representation)
        now = self._clock()
        if stored is None or now - stored.fetched_at >= self._keeper.page_ttl(self._page_ttl):
            try:
                answer = await self._ask(
                    caller.scope, name, representation, authorization=None, etag=None, quick=True
                )
            except UpstreamError:
                return False
            if answer.status != 200:
                return False
            public = await self._parse(answer, name)
            await self._keeper.vouch(caller, _files(public), public=True)
            stored = StoredPage(public, now, answer.headers.get("etag", ""))
            await self._keep(caller.public_owner, stored, name)
        # Upload times are asked of the package API separately: the pages are compared
        # without them (in a worker thread: pages can be huge).
        public_page = stored.page
        return await to_thread.run_sync(lambda: bare(public_page) == bare(page))

    def _early(self, caller: Caller, name: NormalizedName | None) -> Early | None:
        if self._times is None or name is None:
            return None
        return self._times.early(caller.scope, name, authorization=caller.upstream)

    async def _timed(
        self,
        caller: Caller,
        name: NormalizedName | None,
        page: Page,
        before: Page | None,
        early: Early | None = None,
    ) -> Page:
        """A page of GitLab's files with PEP 700 upload times and sizes: those the stored
        page `before` had, the rest asked of GitLab's package API with the caller's
        upstream credentials (bounded; none on failure)."""
        if self._times is None or name is None or page.kind != "project":
            return page
        times = self._times
        return await times.complete(
            caller.scope, name, page, before=before, authorization=caller.upstream, early=early
        )

    async def _parse(self, answer: Answer, name: NormalizedName | None) -> Page:
        page = await self._renderer.parse(
            answer.body,
            content_type=answer.headers.get("content-type", ""),
            page_url=answer.url,
            upstream_url=self._upstream.url,
            kind="project" if name else "index",
        )
        if name and self._forwarding is not None:
            page = await self._forwarding.unforward(page)  # GitLab EE's forward/ links
        return page

    async def _keep(
        self,
        owner: str,
        stored: StoredPage,
        name: NormalizedName | None,
        *,
        vouch: Caller | None = None,
    ) -> None:
        """Store a page under the representation GitLab gave (HTML for a JSON request
        stays HTML's); a cache that cannot (a full disk) still lets the page be served.
        `vouch`: GitLab gave the page's files to this caller (recorded in the same hop)."""
        key = Store.page_key(owner, name or "", _representation(stored.page))

        def keep() -> None:
            if vouch is not None:
                self._keeper.vouch_now(vouch, _files(stored.page))
            try:
                self._store.put_page(key, stored, name=name or "")
            except CacheError as exc:
                log.warning("cannot cache the page %s: %s", key, exc)

        await self._writes.run(keep)  # a burst's pages written by one thread, in turn

    async def _ask(
        self,
        scope: Scope,
        name: NormalizedName | None,
        representation: Representation,
        *,
        authorization: str | None,
        etag: str | None,
        quick: bool,
    ) -> Answer:
        """GET a page from GitLab; 5xx and 429 raise (the client holds off after a Retry-After)."""
        answer = await self._upstream.get(
            scope.api_path + ("/simple/" + name if name else "/simple"),
            accept=_ACCEPT[representation],
            authorization=authorization,
            etag=etag,
            quick=quick,
        )
        if answer.status >= 500 or answer.status == 429:
            retry = retry_after(answer.headers.get("retry-after"))
            raise UpstreamStatus(answer.status, retry_after=retry)
        return answer


def _representation(page: Page) -> Representation:
    """The representation GitLab (or a public index) gave this page in."""
    return "json" if page.json else "html"


def _files(page: Page) -> Iterator[tuple[str, str]]:
    """The (sha256, filename) pairs a package page lists, with the core metadata files it
    advertises with a hash (PEP 658: at the file's URL + ".metadata", so under its sha256);
    lazily: Keeper.vouch reads them in its worker thread, so a 50,000-link page does not
    hold the event loop."""
    for link in page.links:
        if link.sha256:
            yield link.sha256, link.filename
            metadata = next((v for k, v in link.attrs if k == "data-core-metadata"), "")
            if metadata.startswith("sha256="):
                yield link.sha256, link.filename + ".metadata"
