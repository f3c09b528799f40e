"""create_app(settings): the lifespan builds upstream, cache and mirror; errors -> statuses."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from anyio import to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy import __version__
from proxy.access import REALM, Gate, Keeper, resolve_mode
from proxy.bundleimport import sweep_staging
from proxy.cache import Store
from proxy.config import load_for_workers
from proxy.coordination import Coordinator
from proxy.coremeta import CoreMetadata
from proxy.downloads import Downloads
from proxy.errorlog import ErrorLog, within
from proxy.errors import (
    BadRequest,
    CacheError,
    OfflineMiss,
    OfflineRefusal,
    ProxyError,
    TooLarge,
    Unauthorized,
    UpstreamStatus,
    UpstreamUnavailable,
)
from proxy.fills import Filler
from proxy.forwarding import Forwarding
from proxy.grants import Grants
from proxy.hotfiles import HotFiles
from proxy.hotpages import HotPages
from proxy.metadatainjector import MetadataInjector
from proxy.metrics import Metrics
from proxy.mirror import Mirror
from proxy.packageapi import PackageAPI
from proxy.pagefetch import PageFetcher
from proxy.publicindex import PublicIndex
from proxy.reachability import Reachability
from proxy.records import Records
from proxy.rendered import Renderer
from proxy.routes import Site, raw_path, routes, target
from proxy.settings import Settings
from proxy.spool import Spool
from proxy.status import Status
from proxy.statuspage import routes as status_routes
from proxy.stores import make_store
from proxy.tally import Ledger, Tally
from proxy.tokens import TokensFile
from proxy.uploads import Uploads
from proxy.uploadtimes import TIMEOUT as TIMES_TIMEOUT
from proxy.uploadtimes import UploadTimes
from proxy.upstream import GitLab, basic_authorization

log = logging.getLogger("proxy.app")
access_log = logging.getLogger("proxy.access")
# A username for service tokens when none is set: GitLab ignores it for personal,
# project and group access tokens and accepts any for deploy tokens.
DEFAULT_USERNAME = "gitlab-pypi-proxy"
LOGGED_ERRORS = ("proxy", "uvicorn.error")
"""Loggers whose warnings and errors the status page lists."""
MAX_HEADER_BYTES = 64 * 1024
_USERINFO = re.compile(r"(//)[^/@]*@")
_UNPRINTABLE = re.compile(r"[^\x20-\x5b\x5d-\x7e]")
"""A character a log line shows escaped: all but printable ASCII, and the backslash."""


def status_for(exc: ProxyError) -> int:
    """The one place where the proxy's errors become HTTP statuses (design 3.5)."""
    if isinstance(exc, UpstreamStatus):
        return 429 if exc.status == 429 else 502
    if isinstance(exc, UpstreamUnavailable):
        return 504 if exc.timeout else 502
    table: list[tuple[type[ProxyError], int]] = [
        (BadRequest, 400),
        (Unauthorized, 401),
        (OfflineMiss, 404),
        (OfflineRefusal, 503),
        (TooLarge, 413),
        (CacheError, 507),
    ]
    return next((status for kind, status in table if isinstance(exc, kind)), 502)


async def _on_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    status = status_for(exc)
    headers = {"x-cache": "BYPASS"}
    if isinstance(exc, Unauthorized):
        headers["www-authenticate"] = REALM
    if isinstance(exc, UpstreamStatus) and exc.retry_after:
        headers["retry-after"] = str(int(exc.retry_after + 0.999))
    # A 5xx is the proxy's or GitLab's failure: a warning (the status page lists them).
    level = logging.WARNING if status >= 500 else logging.INFO
    log.log(level, "%s %s -> %d: %s", request.method, _loggable(request.scope), status, exc)
    return PlainTextResponse(
        f"{status} {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n",
        status,
        headers=headers,
    )


class Observed:
    """Gives every response an X-Cache header (BYPASS unless an endpoint said otherwise)
    and counts it by route kind and cache status (in the metrics and the tally)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, tally: Tally) -> None:
        self.app = app
        self.metrics = metrics
        self.tally = tally

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.monotonic()
        outcome: list[tuple[int, str]] = []
        body_sizes: list[Callable[[int], None]] = []
        if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            # Nothing the PyPI clients send comes near this; refuse before any work.
            app: ASGIApp = PlainTextResponse(
                "431 request headers too large\n", 431, headers={"x-cache": "BYPASS"}
            )
        else:
            app = self.app

        wanted = target(raw_path(scope))

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                cache = next((v for k, v in headers if k.lower() == b"x-cache"), None)
                if cache is None:
                    cache = b"BYPASS"
                    headers.append((b"x-cache", cache))
                message["headers"] = headers
                route = wanted.kind
                self.metrics.requests.labels(route, cache.decode("latin-1")).inc()
                outcome.append((message["status"], cache.decode("latin-1")))
                body_sizes.append(self.tally.response(route, *outcome[0]))
            elif body_sizes:  # a body chunk, or a file sent by the server (its count)
                body_sizes[0](message.get("count") or len(message.get("body", b"")))
            await send(message)

        try:
            with within(wanted.kind, wanted.scope.key if wanted.scope else None):
                await app(scope, receive, sending)
        finally:
            status, cache = outcome[0] if outcome else (0, "-")
            if access_log.isEnabledFor(logging.INFO):  # the path's escaping costs on every hit
                # The access log: no query string (tokens can travel there), no headers.
                access_log.info(
                    '%s - "%s %s" %d %s %.3fs',
                    (scope.get("client") or ("-",))[0],
                    scope["method"],
                    _loggable(scope),
                    status,
                    cache,
                    time.monotonic() - started,
                )


def create_app(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> Starlette:
    """The proxy as an ASGI app; `transport` lets unit tests put respx at the HTTP edge."""
    up = settings.upstream
    service = (
        basic_authorization(up.username or DEFAULT_USERNAME, up.token.reveal())
        if up.token
        else None
    )
    mode = resolve_mode(
        settings.access.mode, host=settings.server.host, service_token=bool(service)
    )
    metrics = Metrics()
    coordinator = Coordinator(
        settings.coordination.redis_url.reveal(),
        lease_ttl=settings.coordination.lease_ttl,
        on_wait=metrics.lease_waits.inc,
    )
    metrics.watch_coordination(lambda: coordinator.shared, lambda: coordinator.connected)
    tokens: Mapping[str, str] = {}
    if mode == "tokens":
        # With Redis, the replicas' tokens live there (`token add` writes them); else the file.
        tokens = (
            coordinator.tokens if coordinator.shared else TokensFile(settings.access.tokens_file)
        )
    if mode == "tokens" and not tokens and not coordinator.shared:
        log.warning(
            "access.mode is tokens but %s holds no token: every read gets 401 until "
            "`gitlab-pypi-proxy token add NAME`",
            settings.access.tokens_file,
        )
    tally = Tally()
    heard = Reachability()
    errors = ErrorLog()
    site = Site(
        public_url=settings.server.public_url,
        trusted_proxies=tuple(
            ipaddress.ip_network(item, strict=False) for item in settings.server.trusted_proxies
        ),
        max_upload_size=settings.server.max_upload_size,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        store = await to_thread.run_sync(make_store, settings)
        records = await to_thread.run_sync(
            lambda: Records(settings.cache.dir / "access", size_limit=store.side_limit)
        )
        grants = Grants(records)
        gate = Gate(mode, tokens, await to_thread.run_sync(grants.salt), settings.access.auth_ttl)
        spool = Spool(settings.cache.dir)
        await to_thread.run_sync(spool.sweep)
        await to_thread.run_sync(sweep_staging, store.tmp)
        index = PublicIndex(
            allowed_hosts=settings.forwarding.allowed_hosts,
            connect_timeout=up.connect_timeout,
            read_timeout=up.read_timeout,
            transport=transport,
        )
        forwarding = Forwarding(
            mode=settings.forwarding.mode,
            index=index,
            grants=grants,
            never=settings.forwarding.never,
            min_age=settings.forwarding.min_age,
        )
        upstream = GitLab(
            url=up.url,
            connect_timeout=up.connect_timeout,
            read_timeout=up.read_timeout,
            ca_bundle=up.ca_bundle,
            transport=transport,
            metrics=metrics,
            public=index,
            heard=heard,
        )
        filler = Filler(
            store,
            upstream,
            spool,
            on_mismatch=metrics.hash_mismatches.inc,
            on_evict=metrics.evictions.inc,
            coordinator=coordinator,
        )
        metrics.watch_cache(lambda: _size(store), filler.disk)
        keeper = Keeper(gate, grants, service=service)
        metadata = CoreMetadata(
            mode=settings.pages.metadata,
            store=store,
            grants=grants,
            upstream=upstream,
            offline=settings.cache.offline,
        )
        times_timeout = min(TIMES_TIMEOUT, up.connect_timeout)
        renderer, injector = Renderer(), MetadataInjector(metadata)
        mirror = Mirror(
            store=store,
            upstream=upstream,
            keeper=keeper,
            page_ttl=settings.cache.page_ttl,
            stale_while_revalidate=settings.cache.stale_while_revalidate,
            offline=settings.cache.offline,
            probe_writable=filler.probe_writable,
            renderer=renderer,
            hot=HotPages(store.changes, on_hit=metrics.page_memory_hits.inc),
            metadata=injector,
            pages=PageFetcher(
                store=store,
                upstream=upstream,
                keeper=keeper,
                page_ttl=settings.cache.page_ttl,
                renderer=renderer,
                forwarding=forwarding,
                metadata=injector,
                times=UploadTimes(
                    api=PackageAPI(upstream=upstream, budget=times_timeout),
                    timeout=times_timeout,
                ),
            ),
            uploads=Uploads(
                store=store,
                upstream=upstream,
                keeper=keeper,
                offline=settings.cache.offline,
                service_authorization=service,
                allow_service_upload=settings.access.allow_service_upload,
                on_upload=coordinator.invalidate,
            ),
        )
        downloads = Downloads(
            store=store,
            upstream=upstream,
            filler=filler,
            keeper=keeper,
            offline=settings.cache.offline,
            refusal_ttl=settings.cache.page_ttl,
            on_mismatch=metrics.hash_mismatches.inc,
            on_bypass=metrics.streamed_through.inc,
            forwarding=forwarding,
            metadata=metadata,
            redirect=settings.storage.redirect,
            on_metadata=mirror.warm_dependencies,
            hot=HotFiles(store.changes, on_hit=metrics.file_memory_hits.inc),
        )
        log.info(
            "proxying %s, cache in %s%s",
            up.url,
            settings.cache.dir,
            " (offline)" if settings.cache.offline else "",
        )

        async def drop_pages(name: str) -> None:  # an upload through any replica
            await to_thread.run_sync(
                lambda: store.drop_pages(name) if name else store.drop_all_pages()
            )

        await coordinator.start(drop_pages)
        ledger = Ledger(tally, settings.cache.dir)
        await to_thread.run_sync(ledger.start)
        status = Status(
            version=__version__,
            upstream_url=up.url,
            offline=settings.cache.offline,
            service=service is not None,
            store=store,
            grants=grants,
            keeper=keeper,
            filler=filler,
            tally=tally,
            heard=heard,
            errors=errors,
        )
        for name in LOGGED_ERRORS:
            logging.getLogger(name).addHandler(errors)
        try:
            yield {
                "mirror": mirror,
                "downloads": downloads,
                "site": site,
                "metrics": metrics,
                "keeper": keeper,
                "status": status,
                "coordinator": coordinator,
            }
        finally:
            for name in LOGGED_ERRORS:
                logging.getLogger(name).removeHandler(errors)
            await status.aclose()
            await mirror.aclose()
            await metadata.aclose()  # reads ahead of core metadata
            await filler.aclose()  # fills cancelled here let go of their leases
            await coordinator.aclose()
            await downloads.aclose()
            await upstream.aclose()
            await index.aclose()
            store.close()
            grants.close()
            await to_thread.run_sync(ledger.close)

    app = Starlette(
        routes=[*status_routes(), *routes()],
        lifespan=lifespan,
        exception_handlers={ProxyError: _on_error},
    )
    # A path Starlette cannot route is a 404 here, never a redirect to another path.
    app.router.redirect_slashes = False
    app.add_middleware(Observed, metrics=metrics, tally=tally)
    return app


def _loggable(scope: Scope) -> str:
    """The request's path as logs show it: as sent, without query string or `user:pass@`
    (an absolute-form target such as `http://user:token@host/...` would carry one), and
    every byte outside printable ASCII (a newline, a terminal escape) and every backslash
    as a backslash escape, so one request stays one unambiguous log line."""
    path = _USERINFO.sub(r"\1***@", raw_path(scope).decode("latin-1"))
    return _UNPRINTABLE.sub(lambda found: f"\\x{ord(found[0]):02x}", path)


def _size(store: Store) -> tuple[int, int]:
    stats = store.stats()
    return stats.files, stats.bytes


def app_from_environment() -> Starlette:
    """The factory uvicorn's worker processes call (serve --workers N)."""
    return create_app(load_for_workers())
