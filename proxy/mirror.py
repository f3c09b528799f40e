"""The pull-through policy: cache first, then GitLab, then store; fresh, revalidated or stale."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Literal
from urllib.parse import quote

from anyio import to_thread

from proxy import pages
from proxy.access import Gate
from proxy.cache import Grants, Store, StoredPage
from proxy.errors import (
    OfflineMiss,
    OfflineRefusal,
    Unauthorized,
    UpstreamError,
    UpstreamStatus,
    UpstreamUnavailable,
)
from proxy.fills import Filler
from proxy.models import NormalizedName, Page, Scope, normalize
from proxy.upstream import Answer, GitLab

log = logging.getLogger("proxy.mirror")
CacheStatus = Literal["HIT", "MISS", "STALE", "REVALIDATED", "BYPASS"]
READ_CHUNK = 256 * 1024
# twine sends the form fields before the file (`content` last), so the name is near the start.
_SNIFF_BYTES = 64 * 1024
_NAME_FIELD = re.compile(rb'name="name"\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]{1,200})\r\n')


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete answer for the client (a page, or GitLab's own error passed on)."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    cache: CacheStatus


@dataclass(slots=True)
class FileReply:
    """A file to stream: its size (when known) and a way to read any byte range."""

    size: int | None
    cache: CacheStatus
    chunks: Callable[[int, int | None], AsyncIterator[bytes]]
    """chunks(start, end): the bytes [start, end); end None means to the end."""
    release: Callable[[], None] = field(default=lambda: None)
    """Frees what `chunks` would have used, for a HEAD that reads nothing."""


class Mirror:
    """Answers page, file and upload requests from the cache and GitLab."""

    def __init__(
        self,
        *,
        store: Store,
        grants: Grants,
        upstream: GitLab,
        filler: Filler,
        page_ttl: float,
        offline: bool,
        service_authorization: str | None,
        gate: Gate | None = None,
        allow_service_upload: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._gate = gate or Gate("open", {})
        self._allow_service_upload = allow_service_upload
        self._store = store
        self._grants = grants
        self._upstream = upstream
        self._filler = filler
        self._page_ttl = page_ttl
        self.offline = offline
        self._service = service_authorization
        self._clock = clock
        self._quiet_until = 0.0

    def __repr__(self) -> str:
        return f"Mirror(upstream={self._upstream!r}, offline={self.offline})"

    def read_authorization(self, client: str | None) -> str | None:
        """What GitLab sees for a read: the service credentials, else the client's own
        (never a proxy token: in tokens mode the client's header is ours, not GitLab's)."""
        if self._gate.mode == "passthrough":
            return client
        if self._gate.mode == "tokens":
            return self._service
        return self._service or client

    @property
    def _passthrough(self) -> bool:
        return self._gate.mode == "passthrough"

    async def _vouch(self, scope: Scope, authorization: str | None, shas: Iterable[str]) -> None:
        """GitLab let this caller read this scope and these files: remember both."""
        now = self._clock()
        credential = self._gate.credential(scope.key, authorization)

        def record() -> None:
            self._grants.bind(scope.key, shas)
            if self._passthrough:
                self._grants.remember(credential, now)

        await to_thread.run_sync(record)

    async def _vouched(
        self, scope: Scope, authorization: str | None, sha256: str
    ) -> tuple[bool, bool]:
        """(may serve now without asking GitLab, may serve while GitLab can't be asked)."""
        credential = self._gate.credential(scope.key, authorization)

        def look() -> tuple[bool, float | None]:
            bound = self._grants.is_bound(scope.key, sha256)
            return bound, self._grants.remembered(credential) if self._passthrough else 0.0

        bound, when = await to_thread.run_sync(look)
        if not bound or when is None:
            return False, False
        recent = not self._passthrough or self._clock() - when < self._gate.auth_ttl
        return recent, True

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether the proxy can serve (its cache is writable), and whether GitLab answers."""
        try:
            await to_thread.run_sync(self._filler.probe_writable)
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
        # Passthrough: GitLab answers each caller for itself (group listings are filtered
        # per caller), so each credential has its own pages, fresh for auth_ttl at most.
        owner = scope.key
        ttl = self._page_ttl
        if self._passthrough:
            owner += "@" + self._gate.credential(scope.key, authorization)[:32]
            ttl = min(ttl, self._gate.auth_ttl)
        key = Store.page_key(owner, name or "", representation)
        stored: StoredPage | None = await to_thread.run_sync(self._store.get_page, key)
        now = self._clock()
        if stored is not None and (self.offline or now - stored.fetched_at < ttl):
            return await self._render(stored.page, base_url, "HIT", only_held=self.offline)
        # When GitLab can't be asked, the page in the other representation will do:
        # every client that asks for JSON also accepts HTML.
        other = Store.page_key(
            scope.key, name or "", "html" if representation == "json" else "json"
        )
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
                authorization=self.read_authorization(authorization),
                etag=stored.etag if stored else None,
                quick=stored is not None,
            )
        except UpstreamError as exc:
            if fallback is None:
                raise
            log.warning("serving a stale page for %s: %s", key, exc)
            return await self._render(fallback.page, base_url, "STALE", only_held=True)
        if answer.status == 304 and stored is not None:
            await self._vouch(scope, authorization, _shas(stored.page))
            stored = StoredPage(stored.page, now, stored.etag)
            await to_thread.run_sync(lambda: self._store.put_page(key, stored, name=name or ""))
            return await self._render(stored.page, base_url, "REVALIDATED")
        if answer.status != 200:
            # 401/403/404 and the 302 that forwards unknown names to pypi.org: the
            # client's business, never cached as this project's page.
            return Reply(answer.status, answer.body, dict(answer.headers), "BYPASS")
        page = pages.parse(
            answer.body,
            content_type=answer.headers.get("content-type", ""),
            page_url=answer.url,
            upstream_url=self._upstream.url,
            kind="project" if name else "index",
        )
        await self._vouch(scope, authorization, _shas(page))
        fresh = StoredPage(page, now, answer.headers.get("etag", ""))
        await to_thread.run_sync(lambda: self._store.put_page(key, fresh, name=name or ""))
        return await self._render(page, base_url, "MISS")

    async def _ask(
        self, path: str, *, accept: str, authorization: str | None, etag: str | None, quick: bool
    ) -> Answer:
        """GET from GitLab, honouring a Retry-After it gave us; 5xx and 429 raise."""
        if self._clock() < self._quiet_until:
            raise UpstreamStatus(429, retry_after=self._quiet_until - self._clock())
        answer = await self._upstream.get(
            path, accept=accept, authorization=authorization, etag=etag, quick=quick
        )
        if answer.status >= 500 or answer.status == 429:
            retry = _seconds(answer.headers.get("retry-after"))
            if answer.status == 429 and retry:
                self._quiet_until = self._clock() + retry
            raise UpstreamStatus(answer.status, retry_after=retry)
        return answer

    async def _render(
        self, page: Page, base_url: str, cache: CacheStatus, *, only_held: bool = False
    ) -> Reply:
        if only_held and page.kind == "project":
            shas = frozenset(link.sha256 for link in page.links if link.sha256)
            page = page.only(await to_thread.run_sync(self._store.held, shas))
        body, content_type = pages.render(page, base_url=base_url)
        return Reply(200, body, {"content-type": content_type, "vary": "Accept"}, cache)

    # -- files -------------------------------------------------------------------------

    async def file(
        self, scope: Scope, sha256: str, filename: str, *, authorization: str | None
    ) -> FileReply | Reply:
        """A file from the cache, or from GitLab through one shared fill."""
        key = sha256.lower()
        path = f"{scope.api_path}/files/{sha256}/{quote(filename, safe='+')}"
        now_ok, later_ok = await self._vouched(scope, authorization, key)
        if not now_ok and await to_thread.run_sync(self._store.has_file, key):
            # Held, but not yet shown to be readable here by this caller: knowing a
            # sha256 is not access. GitLab decides, or, when it can't be asked, what it
            # decided before.
            refusal = await self._check(scope, path, key, authorization, fallback=later_ok)
            if refusal is not None:
                return refusal
        hit = await self._open_cached(key)
        if hit is not None:
            return hit
        if self.offline:
            raise OfflineMiss(f"offline mode: {filename} is not cached")
        fill = self._filler.start(key, path, authorization=self.read_authorization(authorization))
        await fill.ready.wait()
        if fill.status == 0 and fill.error is not None:
            raise fill.error
        if fill.status != 200:
            return Reply(fill.status, fill.error_body, dict(fill.headers), "BYPASS")
        await self._vouch(scope, authorization, [key])
        if fill.done:
            if fill.error is not None:
                raise fill.error
            committed = await self._open_cached(key)
            if committed is not None:
                committed.cache = "MISS"
                return committed
            raise UpstreamUnavailable("the file was fetched but could not be read back")
        return FileReply(
            fill.length,
            "MISS",
            lambda start, end: self._filler.read(fill, start, end),
        )

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
                path, authorization=self.read_authorization(authorization)
            )
        except UpstreamError:
            if fallback:
                return None
            raise
        if answer.status < 400:
            await self._vouch(scope, authorization, [sha256])
            return None
        return Reply(answer.status, answer.body, dict(answer.headers), "BYPASS")

    async def _open_cached(self, key: str) -> FileReply | None:
        opened = await to_thread.run_sync(self._open_with_size, key)
        if opened is None:
            return None
        handle, size = opened
        return FileReply(
            size, "HIT", lambda start, end: _read_handle(handle, start, end), handle.close
        )

    def _open_with_size(self, key: str) -> tuple[IO[bytes], int] | None:
        handle = self._store.open_file(key)
        return None if handle is None else (handle, os.fstat(handle.fileno()).st_size)

    # -- uploads -----------------------------------------------------------------------

    async def upload(
        self, scope: Scope, *, headers: Mapping[str, str], body: AsyncIterator[bytes]
    ) -> Reply:
        """Stream an upload to GitLab; on success drop the cached pages of its name."""
        if self.offline:
            raise OfflineRefusal("offline mode: uploads need GitLab")
        if "authorization" not in headers and self._service:
            if not self._allow_service_upload:
                raise Unauthorized("uploads use your own GitLab credentials; none were sent")
            headers = {**headers, "authorization": self._service}
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


async def _read_handle(handle: IO[bytes], start: int, end: int | None) -> AsyncIterator[bytes]:
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


def _shas(page: Page) -> list[str]:
    return [link.sha256 for link in page.links if link.sha256]


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
