"""Simple pages: cache first, then GitLab, then store; fresh, revalidated or stale."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from anyio import to_thread

from proxy import pagerender
from proxy.access import Keeper
from proxy.answers import REDIRECTS, Answer, retry_after
from proxy.cache import Store, StoredPage
from proxy.codings import Coding
from proxy.errors import (
    CacheError,
    OfflineMiss,
    UpstreamError,
    UpstreamStatus,
)
from proxy.flights import Flights
from proxy.forwarding import Followed, Forwarding, is_public
from proxy.hotpages import Hot, HotKey, HotPages
from proxy.metadatainjector import MetadataInjector, dependencies
from proxy.models import CacheStatus, Caller, NormalizedName, Page, Reply, Scope
from proxy.rendered import Renderer, Rendering
from proxy.uploads import Uploads
from proxy.uploadtimes import Early, UploadTimes, bare
from proxy.upstream import GitLab

log = logging.getLogger("proxy.mirror")
Representation = Literal["html", "json"]
_ACCEPT: dict[Representation, str] = {
    "json": "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
    "html": "text/html",
}
_VARY = "Accept, Accept-Encoding"


@dataclass(frozen=True, slots=True)
class _View:
    """How one request's page is sent: where its links point, its coding, its caching."""

    base_url: str
    coding: Coding
    public: bool
    """Shared caches may keep it: GitLab gave it to an anonymous caller, and the proxy
    asked for no token either."""
    ttl: float


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one trip to the cache and GitLab found for a page, before any one view of it."""

    page: Page
    cache: CacheStatus
    only_held: bool = False
    fresh: float | None = None  # seconds it stays fresh (None: a whole page_ttl)


# A page request in flight to GitLab is shared by every request for the same page that
# GitLab answers the same way (caller.origin: the scope and what GitLab sees; the page key:
# the owner, so passthrough credentials never share).
_FlightKey = tuple[str, str]


class Mirror:
    """Answers page requests from the cache and GitLab; hands uploads to `uploads`."""

    def __init__(
        self,
        *,
        store: Store,
        upstream: GitLab,
        keeper: Keeper,
        page_ttl: float,
        offline: bool,
        probe_writable: Callable[[], str] = lambda: "writable",
        clock: Callable[[], float] = time.time,
        renderer: Renderer,
        forwarding: Forwarding | None = None,
        metadata: MetadataInjector | None = None,
        times: UploadTimes | None = None,
        stale_while_revalidate: float = 0.0,
        hot: HotPages | None = None,
        uploads: Uploads,
    ) -> None:
        self._uploads = uploads
        self._hot = hot
        self._stale_while_revalidate = stale_while_revalidate
        self._flights: Flights[_Outcome | Reply] = Flights()
        self._forwarding = forwarding
        self._metadata = metadata
        self._times = times
        self._store = store
        self._upstream = upstream
        self._keeper = keeper
        self._page_ttl = page_ttl
        self.offline = offline
        self._probe_writable = probe_writable
        self._clock = clock
        self._renderer = renderer

    def __repr__(self) -> str:
        return f"Mirror(upstream={self._upstream!r}, offline={self.offline})"

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether the proxy can serve (its cache is writable, or full: it still serves what
        it holds and streams the rest), and whether GitLab answers."""
        try:
            cache = await to_thread.run_sync(self._probe_writable)
        except OSError as exc:
            return False, {
                "cache": f"not writable ({exc.strerror})",
                "gitlab": await self._gitlab(),
            }
        return True, {"cache": cache, "gitlab": await self._gitlab()}

    async def _gitlab(self) -> str:
        return "offline (not asked)" if self.offline else await self._upstream.reachable()

    # -- pages -------------------------------------------------------------------------

    async def page(
        self,
        caller: Caller,
        name: NormalizedName | None,
        *,
        accept: str,
        base_url: str,
        coding: Coding = "identity",
    ) -> Reply:
        """A simple page (index when name is None), its links pointing at base_url, its
        body in `coding`, with an ETag and a max-age of what is left of its freshness."""
        representation: Representation = "json" if pagerender.wants_json(accept) else "html"
        ttl = self._keeper.page_ttl(self._page_ttl)
        public = self._keeper.shareable(caller)
        view = _View(base_url, coding, public, ttl)
        hot_key = HotKey(caller.owner, name or "", representation, base_url, coding)
        if self._hot is not None and not self.offline:
            now = self._clock()
            if (hot := self._hot.get(hot_key, now)) is not None:
                return _reply(hot.rendering, view, "HIT", fresh=hot.fresh_until - now)
        stamp = self._hot.stamp(name or "") if self._hot is not None else b""
        stored = await self._stored(caller.owner, name or "", representation)
        now = self._clock()
        if stored is not None and (self.offline or now - stored.fetched_at < ttl):
            fresh = 0.0 if self.offline else ttl - (now - stored.fetched_at)
            rendering = await self._rendering(stored.page, view, only_held=self.offline)
            if self._hot is not None and not self.offline:
                self._hot.keep(hot_key, Hot(rendering, stored.fetched_at + ttl, stamp))
            return _reply(rendering, view, "HIT", fresh=fresh)
        if self.offline:
            fallback = stored or await self._fallback(caller, name or "", representation)
            if fallback is not None:
                return await self._render(fallback.page, view, "HIT", only_held=True, fresh=0.0)
            what = f"the page of {name!r}" if name else "the index"
            scope = caller.scope
            raise OfflineMiss(f"offline mode: {what} of {scope.kind}/{scope.id} is not cached")
        if stored is not None and now - stored.fetched_at < ttl + self._stale_while_revalidate:
            # cache.stale_while_revalidate: the page GitLab confirmed a moment ago now, a
            # fresh one for the next request; its links stay (GitLab was reachable lately).
            self._flights.start(*self._flight(caller, name, representation, ttl)).add_done_callback(
                _unheard
            )
            return await self._render(stored.page, view, "STALE", fresh=0.0)
        outcome = await self._flights.join(*self._flight(caller, name, representation, ttl))
        if isinstance(outcome, Reply):
            return outcome
        return await self._render(
            outcome.page, view, outcome.cache, only_held=outcome.only_held, fresh=outcome.fresh
        )

    def warm(self, caller: Caller, names: Iterable[NormalizedName]) -> None:
        """Start fetching the pages of `names` that are not held fresh, as the caller's
        own requests would (one flight each, which the caller's request then joins): a
        resolver asks for them next. Nothing is rendered; a failure is only logged."""
        if self.offline:
            return
        ttl = self._keeper.page_ttl(self._page_ttl)
        for name in names:
            # The flight reads the store first: a page held fresh is not asked for again.
            flight = self._flight(caller, name, "json", ttl, asked=False)
            self._flights.start(*flight).add_done_callback(_unheard)

    def warm_dependencies(self, caller: Caller, metadata: bytes) -> None:
        """warm() the pages of the unconditional dependencies `metadata` names."""
        self.warm(caller, dependencies(metadata))

    def _flight(
        self,
        caller: Caller,
        name: NormalizedName | None,
        representation: Representation,
        ttl: float,
        *,
        asked: bool = True,
    ) -> tuple[_FlightKey, Callable[[], Coroutine[Any, Any, _Outcome | Reply]]]:
        """One request to GitLab per page however many clients ask (issue 10): the key
        of the caller's page among the flights, and the work to do for it. A page a client
        `asked` for (not one fetched ahead) has its dependencies' pages fetched ahead as
        soon as its newest wheels' metadata is read ahead: one level, never the closure."""
        key = (caller.origin, Store.page_key(caller.owner, name or "", representation))
        return key, partial(self._fetch, caller, name, representation, ttl, asked)

    async def aclose(self) -> None:
        """Cancel the requests to GitLab still in flight (background revalidations)."""
        await self._flights.aclose()

    async def _fetch(
        self,
        caller: Caller,
        name: NormalizedName | None,
        representation: Representation,
        ttl: float,
        asked: bool,
    ) -> _Outcome | Reply:
        """The page from GitLab (or the cache, when a request that just ended stored it),
        stored; the stale page when GitLab fails; GitLab's own answer when it is not a page."""
        stored = await self._stored(caller.owner, name or "", representation)
        now = self._clock()
        if stored is not None and now - stored.fetched_at < ttl:
            return _Outcome(stored.page, "HIT", fresh=ttl - (now - stored.fetched_at))
        # A cold page: its upload times are asked for while the page is (no validator
        # can make GitLab's answer a 304, and every file will need a time).
        early = self._early(caller, name) if stored is None else None
        try:
            return await self._refresh(caller, name, representation, stored, early, asked)
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
        asked: bool,
    ) -> _Outcome | Reply:
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
                then = partial(self.warm_dependencies, caller) if asked else None
                self._metadata.read_ahead(page, authorization=caller.upstream, then=then)
        except UpstreamError as exc:
            # Read only now: a page GitLab answers needs no fallback (one thread hop less).
            fallback = stored or await self._fallback(caller, name or "", representation)
            if fallback is None:
                raise
            log.warning("serving a stale page for %s: %s", key, exc)
            return _Outcome(fallback.page, "STALE", only_held=True, fresh=0.0)
        if isinstance(followed, Reply):
            return followed
        unchanged = followed.page is None if followed else answer.status == 304
        if unchanged and same is not None:
            kept = same.page if followed else await self._timed(caller, name, same.page, None)
            same = StoredPage(kept, now, followed.etag if followed else same.etag)
            await self._keep(caller.owner, same, name, vouch=caller)
            return _Outcome(same.page, "REVALIDATED")
        if followed is not None and followed.page is not None:
            stored = StoredPage(followed.page, now, followed.etag)
            await self._keep(caller.owner, stored, name, vouch=caller)
            return _Outcome(followed.page, "MISS")
        if page is None:
            # 401/403/404 and the 302 that forwards unknown names to pypi.org: the
            # client's business, never cached as this project's page.
            return Reply(answer.status, answer.body, dict(answer.headers), "BYPASS")
        before = stored.page if stored and not is_public(stored.etag) else None
        page = await self._timed(caller, name, page, before, early)
        if caller.personal and await self._anyone_sees(caller, name, representation, page):
            # GitLab gives this page to anyone: the credential added nothing, and a
            # credential GitLab did not need leaves no record (design 3.4).
            return _Outcome(page, "MISS")
        stored = StoredPage(page, now, answer.headers.get("etag", ""))
        await self._keep(caller.owner, stored, name, vouch=caller)
        return _Outcome(page, "MISS")

    async def _stored(
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

    async def _fallback(
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
        stored = await self._stored(caller.public_owner, name or "", representation)
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

        await to_thread.run_sync(keep)

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

    async def _render(
        self,
        page: Page,
        view: _View,
        cache: CacheStatus,
        *,
        only_held: bool = False,
        fresh: float | None = None,
    ) -> Reply:
        """The page as sent; `fresh`: seconds it stays fresh (None: a whole page_ttl)."""
        return _reply(await self._rendering(page, view, only_held=only_held), view, cache, fresh)

    async def _rendering(self, page: Page, view: _View, *, only_held: bool) -> Rendering:
        """The page's body for this view: its core metadata advertised, and only its held
        files when `only_held`."""
        held = self._store.held if only_held and page.kind == "project" else None
        metadata = self._metadata

        def rendering() -> Rendering:  # one thread hop for both
            shown = page
            if metadata is not None:
                # PEP 658/714, for what can be served: offline or stale, only from the cache.
                shown = metadata.injected(page, remote=not only_held)
            return self._renderer.rendered(
                shown, base_url=view.base_url, held=held, coding=view.coding
            )

        return await self._renderer.run(rendering)

    async def upload(
        self, scope: Scope, *, headers: Mapping[str, str], body: AsyncIterator[bytes]
    ) -> Reply:
        """An upload passed to `uploads` (Uploads.upload): streamed to GitLab, the cached
        pages it makes stale dropped."""
        return await self._uploads.upload(scope, headers=headers, body=body)


def _reply(rendering: Rendering, view: _View, cache: CacheStatus, fresh: float | None) -> Reply:
    """A rendering as sent to one request; `fresh`: seconds it stays fresh (None: a whole
    page_ttl)."""
    max_age = max(0, int(view.ttl if fresh is None else fresh))
    headers = {
        "content-type": rendering.content_type,
        "vary": _VARY,
        "etag": rendering.etag,
        "cache-control": f"{'public' if view.public else 'private'}, max-age={max_age}",
    }
    if rendering.coding != "identity":
        headers["content-encoding"] = rendering.coding
    return Reply(200, rendering.body, headers, cache)


def _unheard(flight: asyncio.Task[_Outcome | Reply]) -> None:
    """Log how a page fetched in the background failed: no client waits to hear it."""
    if not flight.cancelled() and (exc := flight.exception()) is not None:
        log.warning("revalidating a page in the background failed: %r", exc)


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
