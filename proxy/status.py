"""What the status page tells a viewer: the proxy's state, cut to what that viewer may read."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from anyio import to_thread

from proxy.access import Keeper, Mode
from proxy.cache import FileStats, Store
from proxy.errorlog import ErrorLog
from proxy.errors import CacheError
from proxy.fills import Filler
from proxy.grants import Grants
from proxy.models import Scope
from proxy.reachability import Heard, Reachability
from proxy.routes import target
from proxy.tally import Counts, Tally

log = logging.getLogger("proxy.status")
REFRESH = 2.0
"""Seconds a reading of the cache's size and scopes is served before it is read again."""
LISTINGS = 4
"""Base URLs whose index URLs are kept per reading (a Host header is the client's choice)."""
Credentials = Literal["none", "proxy token", "GitLab token"]


@dataclass(frozen=True, kw_only=True)
class Usage:
    """What the cache holds, against its bound."""

    files: int
    pinned: int
    pages: int
    bytes: int
    """Files, pages and access records: what counts toward max_size."""
    max_size: int


@dataclass(frozen=True, kw_only=True)
class FillFact:
    """A download into the cache in progress in this process."""

    filename: str | None
    """None when the viewer may not read the scope it is for."""
    written: int
    length: int | None
    """Content-Length, when GitLab gave one."""


@dataclass(frozen=True, kw_only=True)
class ErrorFact:
    """One of the last errors."""

    at: float
    route: str
    line: str | None
    """None when the line may name a scope the viewer may not read."""


@dataclass(frozen=True, kw_only=True)
class ScopeFact:
    """A project or group the cache has pages of, and its index URL on this proxy."""

    scope: str
    """As in GitLab's URLs: "projects/42", "groups/acme%2Fsub"."""
    index_url: str


@dataclass(frozen=True, kw_only=True)
class Facts:
    """Everything the status page shows one viewer."""

    version: str
    upstream: str
    """GitLab's URL, without any `user:password@`."""
    mode: Mode
    credentials: Credentials
    """What a client sends the proxy to read: nothing, a proxy token or its own GitLab token."""
    offline: bool
    gitlab: Heard
    usage: Usage
    traffic: Counts
    """This process's requests since it started."""
    started: float
    fills: tuple[FillFact, ...]
    errors: tuple[ErrorFact, ...]
    scopes: tuple[ScopeFact, ...]
    hidden_scopes: int
    """Scopes the cache holds that this viewer may not see."""
    now: float


@dataclass(frozen=True, slots=True)
class _Held:
    """One reading of the cache (in a worker thread), reused for REFRESH seconds."""

    stats: FileStats
    scopes: tuple[str, ...]
    """Scope keys ("projects/42") with stored pages."""
    public: frozenset[str]
    """Scopes with pages GitLab gave an anonymous client (passthrough)."""
    at: float


@dataclass(frozen=True, slots=True)
class _Sight:
    """Which scope-level facts a viewer may read."""

    everything: bool
    scopes: frozenset[str] = frozenset()

    def may(self, scope: str | None) -> bool:
        return self.everything or (scope is not None and scope in self.scopes)


class Status:
    """Gathers the facts from what the proxy keeps in memory (and a reading of the cache at
    most every REFRESH seconds); never asks GitLab."""

    def __init__(
        self,
        *,
        version: str,
        upstream_url: str,
        offline: bool,
        service: bool,
        store: Store,
        grants: Grants,
        keeper: Keeper,
        filler: Filler,
        tally: Tally,
        heard: Reachability,
        errors: ErrorLog,
        refresh: float = REFRESH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._version = version
        self._upstream = _without_userinfo(upstream_url)
        self._offline = offline
        self._service = service
        self._store = store
        self._grants = grants
        self._keeper = keeper
        self._filler = filler
        self._tally = tally
        self._heard = heard
        self._errors = errors
        self._refresh = refresh
        self._clock = clock
        self._started = clock()
        self._held: _Held | None = None
        self._listed_for: _Held | None = None
        self._listings: dict[str, dict[str, ScopeFact]] = {}
        self._reading: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Status(upstream={self._upstream!r})"

    async def facts(self, authorization: str | None, base_url: str) -> Facts:
        """The facts for a viewer who sent this Authorization (or none)."""
        held = await self._reading_of_cache()
        heard = self._heard.heard()
        sight = await self._sight(authorization, held, down=self._offline or not heard.answers)
        stats, mode = held.stats, self._keeper.gate.mode
        fills = tuple(
            FillFact(filename=_shown(fill.url, sight), written=fill.written, length=fill.length)
            for fill in self._filler.running()
        )
        errors = tuple(
            ErrorFact(at=e.at, route=e.route, line=e.line if sight.may(e.scope) else None)
            for e in self._errors.last()
        )
        listed = self._listed(held, base_url)
        seen = [listed[key] for key in held.scopes if sight.may(key)]
        return Facts(
            version=self._version,
            upstream=self._upstream,
            mode=mode,
            credentials=_credentials(mode, service=self._service),
            offline=self._offline,
            gitlab=heard,
            usage=Usage(
                files=stats.files,
                pinned=stats.pinned,
                pages=stats.pages,
                bytes=stats.total_bytes,
                max_size=self._store.max_size,
            ),
            traffic=self._tally.counts(),
            started=self._started,
            fills=fills,
            errors=errors,
            scopes=tuple(seen),
            hidden_scopes=len(held.scopes) - len(seen),
            now=self._clock(),
        )

    def _listed(self, held: _Held, base_url: str) -> dict[str, ScopeFact]:
        """Each scope of a reading with its index URL, made once per reading and base URL
        (a few base URLs: behind a proxy or by IP and by name)."""
        if self._listed_for is not held:
            self._listed_for, self._listings = held, {}
        listed = self._listings.get(base_url)
        if listed is None:
            listed = {
                key: ScopeFact(scope=_shown_scope(key), index_url=_index(base_url, key))
                for key in held.scopes
            }
            if len(self._listings) < LISTINGS:
                self._listings[base_url] = listed
        return listed

    async def aclose(self) -> None:
        """Stop a reading of the cache still running (at shutdown)."""
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)

    async def _reading_of_cache(self) -> _Held:
        """The last reading; a new one starts in a worker thread when it is older than
        `refresh` seconds, and only the very first request waits for it."""
        held = self._held
        stale = held is None or time.monotonic() - held.at > self._refresh
        if stale and (self._reading is None or self._reading.done()):
            self._reading = asyncio.create_task(self._read())
        if held is None:
            assert self._reading is not None
            await asyncio.shield(self._reading)
            held = self._held
        assert held is not None
        return held

    async def _read(self) -> None:
        try:
            self._held = await to_thread.run_sync(self._read_cache)
        except CacheError as exc:
            log.warning("cannot read the cache's size for the status page: %s", exc)
            if self._held is None:
                self._held = _Held(FileStats(0, 0, 0), (), frozenset(), time.monotonic())

    def _read_cache(self) -> _Held:
        stats = self._store.stats()
        scopes: set[str] = set()
        public: set[str] = set()
        for key in self._store.page_keys():
            scope, _, who = key.partition("|")[0].partition("@")
            scopes.add(scope)
            if who == "anyone":
                public.add(scope)
        return _Held(stats, tuple(sorted(scopes)), frozenset(public), time.monotonic())

    async def _sight(self, authorization: str | None, held: _Held, *, down: bool) -> _Sight:
        """open: everything; tokens: everything with a valid proxy token, else nothing;
        passthrough: scopes GitLab gives anyone, and those GitLab accepted this viewer's
        credential for within auth_ttl (or ever, while GitLab cannot be asked)."""
        gate = self._keeper.gate
        if gate.mode != "passthrough":
            return _Sight(gate.mode == "open" or gate.admits(authorization))
        if not authorization:
            return _Sight(False, held.public)
        now, ttl = self._clock(), gate.auth_ttl

        def accepted() -> frozenset[str]:
            found = set()
            for key in held.scopes:
                caller = self._keeper.caller(_scope(key), authorization)
                try:
                    when = self._grants.accepted(caller.owner)
                except CacheError:
                    continue
                if when is not None and (down or now - when < ttl):
                    found.add(key)
            return frozenset(found)

        return _Sight(False, held.public | await to_thread.run_sync(accepted))


def _credentials(mode: Mode, *, service: bool) -> Credentials:
    if mode == "tokens":
        return "proxy token"
    return "none" if mode == "open" and service else "GitLab token"


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}".rstrip("/")


def _shown_scope(key: str) -> str:
    """A scope key as GitLab's URLs write it (keys are lower-cased: `%2f` back to `%2F`)."""
    return key.replace("%2f", "%2F")


def _scope(key: str) -> Scope:
    kind, _, ident = key.partition("/")
    return Scope("groups" if kind == "groups" else "projects", ident)


def _index(base_url: str, key: str) -> str:
    return f"{base_url}{_scope(_shown_scope(key)).api_path}/simple"


def _shown(url: str, sight: _Sight) -> str | None:
    """A fill's file name, if the viewer may read the scope it is fetched through (a file
    of a public index: only a viewer who may read everything)."""
    found = target(url.encode("latin-1", "replace"))
    if found.kind == "file":
        return found.filename if sight.may(found.scope.key if found.scope else None) else None
    return unquote(url.rsplit("/", 1)[-1]) if sight.everything else None
