"""Simple pages: cache first, then GitLab, then store; fresh, revalidated or stale."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from anyio import to_thread

from proxy import pagerender
from proxy.access import Keeper
from proxy.cache import Store
from proxy.codings import Coding
from proxy.errors import OfflineMiss
from proxy.flights import Flights
from proxy.hotpages import Hot, HotKey, HotPages
from proxy.metadatainjector import MetadataInjector, dependencies
from proxy.models import CacheStatus, Caller, NormalizedName, Page, Reply, Scope
from proxy.pagefetch import Outcome, PageFetcher, Representation
from proxy.rendered import Renderer, Rendering
from proxy.uploads import Uploads
from proxy.upstream import GitLab

log = logging.getLogger("proxy.mirror")
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
        pages: PageFetcher,
        metadata: MetadataInjector | None = None,
        stale_while_revalidate: float = 0.0,
        hot: HotPages | None = None,
        uploads: Uploads,
    ) -> None:
        self._uploads = uploads
        self._hot = hot
        self._stale_while_revalidate = stale_while_revalidate
        self._flights: Flights[Outcome | Reply] = Flights()
        self._metadata = metadata
        self._store = store
        self._upstream = upstream
        self._keeper = keeper
        self._page_ttl = page_ttl
        self.offline = offline
        self._probe_writable = probe_writable
        self._clock = clock
        self._renderer = renderer
        self._pages = pages

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
        stored = await self._pages.stored(caller.owner, name or "", representation)
        now = self._clock()
        if stored is not None and (self.offline or now - stored.fetched_at < ttl):
            fresh = 0.0 if self.offline else ttl - (now - stored.fetched_at)
            rendering = await self._rendering(stored.page, view, only_held=self.offline)
            if self._hot is not None and not self.offline:
                self._hot.keep(hot_key, Hot(rendering, stored.fetched_at + ttl, stamp))
            return _reply(rendering, view, "HIT", fresh=fresh)
        if self.offline:
            fallback = stored or await self._pages.fallback(caller, name or "", representation)
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
    ) -> tuple[_FlightKey, Callable[[], Coroutine[Any, Any, Outcome | Reply]]]:
        """One request to GitLab per page however many clients ask (issue 10): the key
        of the caller's page among the flights, and the work to do for it. A page a client
        `asked` for (not one fetched ahead) has its dependencies' pages fetched ahead as
        soon as its newest wheels' metadata is read ahead: one level, never the closure."""
        key = (caller.origin, Store.page_key(caller.owner, name or "", representation))
        then = partial(self.warm_dependencies, caller) if asked else None
        return key, partial(self._pages.fetch, caller, name, representation, ttl, then)

    async def aclose(self) -> None:
        """Cancel the requests to GitLab still in flight (background revalidations)."""
        await self._flights.aclose()

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


def _unheard(flight: asyncio.Task[Outcome | Reply]) -> None:
    """Log how a page fetched in the background failed: no client waits to hear it."""
    if not flight.cancelled() and (exc := flight.exception()) is not None:
        log.warning("revalidating a page in the background failed: %r", exc)
