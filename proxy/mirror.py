"""Simple pages and uploads: cache first, then GitLab, then store; fresh, revalidated or stale."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping

from anyio import to_thread

from proxy import pages
from proxy.access import Keeper
from proxy.cache import Store, StoredPage
from proxy.errors import OfflineMiss, OfflineRefusal, Unauthorized, UpstreamError, UpstreamStatus
from proxy.models import CacheStatus, NormalizedName, Page, Reply, Scope, normalize
from proxy.upstream import Answer, GitLab, retry_after

log = logging.getLogger("proxy.mirror")
# twine sends the form fields before the file (`content` last), so the name is near the start.
_SNIFF_BYTES = 64 * 1024
_NAME_FIELD = re.compile(rb'name="name"\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]{1,200})\r\n')


class Mirror:
    """Answers page and upload requests from the cache and GitLab."""

    def __init__(
        self,
        *,
        store: Store,
        upstream: GitLab,
        keeper: Keeper,
        page_ttl: float,
        offline: bool,
        service_authorization: str | None,
        allow_service_upload: bool = False,
        probe_writable: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._keeper = keeper
        self._page_ttl = page_ttl
        self.offline = offline
        self._service = service_authorization
        self._allow_service_upload = allow_service_upload
        self._probe_writable = probe_writable
        self._clock = clock

    def __repr__(self) -> str:
        return f"Mirror(upstream={self._upstream!r}, offline={self.offline})"

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether the proxy can serve (its cache is writable), and whether GitLab answers."""
        try:
            await to_thread.run_sync(self._probe_writable)
            cache = "writable"
        except OSError as exc:
            cache = f"not writable ({exc.strerror})"
        gitlab = "offline (not asked)" if self.offline else await self._upstream.reachable()
        return cache == "writable", {"cache": cache, "gitlab": gitlab}

    # -- pages -------------------------------------------------------------------------

    async def page(
        self,
        scope: Scope,
        name: NormalizedName | None,
        *,
        accept: str,
        authorization: str | None,
        base_url: str,
    ) -> Reply:
        """A simple page (index when name is None), its links pointing at base_url."""
        representation = "json" if pages.wants_json(accept) else "html"
        owner, ttl = self._keeper.page_owner(scope.key, authorization, self._page_ttl)
        key = Store.page_key(owner, name or "", representation)
        stored: StoredPage | None = await to_thread.run_sync(self._store.get_page, key)
        now = self._clock()
        if stored is not None and (self.offline or now - stored.fetched_at < ttl):
            return await self._render(stored.page, base_url, "HIT", only_held=self.offline)
        # When GitLab can't be asked, the page in the other representation will do:
        # every client that asks for JSON also accepts HTML.
        other = Store.page_key(owner, name or "", "html" if representation == "json" else "json")
        fallback = stored or await to_thread.run_sync(self._store.get_page, other)
        if self.offline:
            if fallback is not None:
                return await self._render(fallback.page, base_url, "HIT", only_held=True)
            what = f"the page of {name!r}" if name else "the index"
            raise OfflineMiss(f"offline mode: {what} of {scope.kind}/{scope.id} is not cached")
        path = scope.api_path + ("/simple/" + name if name else "/simple")
        try:
            answer = await self._ask(
                path,
                accept="application/vnd.pypi.simple.v1+json, text/html;q=0.1"
                if representation == "json"
                else "text/html",
                authorization=self._keeper.upstream_authorization(authorization),
                etag=stored.etag if stored else None,
                quick=stored is not None,
            )
            # A 200 that cannot be parsed (PageError) is a failure like a 5xx: stale wins.
            page = self._parse(answer, name) if answer.status == 200 else None
        except UpstreamError as exc:
            if fallback is None:
                raise
            log.warning("serving a stale page for %s: %s", key, exc)
            return await self._render(fallback.page, base_url, "STALE", only_held=True)
        if answer.status == 304 and stored is not None:
            await self._keeper.vouch(scope.key, authorization, _shas(stored.page))
            stored = StoredPage(stored.page, now, stored.etag)
            await to_thread.run_sync(lambda: self._store.put_page(key, stored, name=name or ""))
            return await self._render(stored.page, base_url, "REVALIDATED")
        if page is None:
            # 401/403/404 and the 302 that forwards unknown names to pypi.org: the
            # client's business, never cached as this project's page.
            return Reply(answer.status, answer.body, dict(answer.headers), "BYPASS")
        await self._keeper.vouch(scope.key, authorization, _shas(page))
        fresh = StoredPage(page, now, answer.headers.get("etag", ""))
        await to_thread.run_sync(lambda: self._store.put_page(key, fresh, name=name or ""))
        return await self._render(page, base_url, "MISS")

    async def _ask(
        self, path: str, *, accept: str, authorization: str | None, etag: str | None, quick: bool
    ) -> Answer:
        """GET from GitLab; 5xx and 429 raise (the client holds off after a Retry-After)."""
        answer = await self._upstream.get(
            path, accept=accept, authorization=authorization, etag=etag, quick=quick
        )
        if answer.status >= 500 or answer.status == 429:
            retry = retry_after(answer.headers.get("retry-after"))
            raise UpstreamStatus(answer.status, retry_after=retry)
        return answer

    def _parse(self, answer: Answer, name: NormalizedName | None) -> Page:
        return pages.parse(
            answer.body,
            content_type=answer.headers.get("content-type", ""),
            page_url=answer.url,
            upstream_url=self._upstream.url,
            kind="project" if name else "index",
        )

    async def _render(
        self, page: Page, base_url: str, cache: CacheStatus, *, only_held: bool = False
    ) -> Reply:
        if only_held and page.kind == "project":
            shas = frozenset(link.sha256 for link in page.links if link.sha256)
            page = page.only(await to_thread.run_sync(self._store.held, shas))
        body, content_type = pages.render(page, base_url=base_url)
        return Reply(200, body, {"content-type": content_type, "vary": "Accept"}, cache)

    # -- uploads ----

    def _upload_authorization(self, client: str | None) -> str | None:
        """What GitLab sees for an upload: the client's own GitLab credentials; the
        service token only where access.allow_service_upload says so; never a proxy token."""
        gate = self._keeper.gate
        proxy_token = gate.mode == "tokens" and gate.admits(client)
        if client and not proxy_token:
            return client
        if gate.mode == "tokens" and not proxy_token:
            raise Unauthorized("uploads need your GitLab credentials, or a proxy token")
        if self._service and self._allow_service_upload:
            return self._service
        if self._service or proxy_token:
            raise Unauthorized("uploads use your own GitLab credentials; none were sent")
        return None

    async def upload(
        self, scope: Scope, *, headers: Mapping[str, str], body: AsyncIterator[bytes]
    ) -> Reply:
        """Stream an upload to GitLab; on success drop the cached pages of its name."""
        if self.offline:
            raise OfflineRefusal("offline mode: uploads need GitLab")
        headers = {**headers}
        credentials = self._upload_authorization(headers.pop("authorization", None))
        if credentials:
            headers["authorization"] = credentials
        head = bytearray()

        async def sniffing() -> AsyncIterator[bytes]:
            async for chunk in body:
                if len(head) < _SNIFF_BYTES:
                    head.extend(chunk[: _SNIFF_BYTES - len(head)])
                yield chunk

        answer = await self._upstream.upload(scope.api_path, headers=headers, body=sniffing())
        if 200 <= answer.status < 300:
            found = _NAME_FIELD.search(bytes(head))
            if found:
                name = normalize(found.group(1).decode("utf-8", "replace").strip())
                await to_thread.run_sync(self._store.drop_pages, name)
            else:
                await to_thread.run_sync(self._store.drop_all_pages)
        return Reply(answer.status, answer.body, dict(answer.headers), "BYPASS")


def _shas(page: Page) -> list[str]:
    return [link.sha256 for link in page.links if link.sha256]
