"""GitLab's word on one caller's file: asked when the cache cannot vouch, kept when given."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from proxy.access import Keeper
from proxy.errors import OfflineMiss, UpstreamError
from proxy.models import Caller, Reply
from proxy.upstream import GitLab


class FileAccess:
    """Whether GitLab lets a caller read a file, its answers recorded by the Keeper
    (design 3.4): a grant for the caller or for anyone, a 404 for a while."""

    def __init__(
        self,
        *,
        upstream: GitLab,
        keeper: Keeper,
        offline: bool,
        refusal_ttl: float,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._upstream = upstream
        self._keeper = keeper
        self._offline = offline
        self._refusal_ttl = refusal_ttl
        self._spawn = spawn

    def __repr__(self) -> str:
        return f"FileAccess(upstream={self._upstream!r}, offline={self._offline})"

    async def check(
        self, caller: Caller, path: str, sha256: str, filename: str, *, fallback: bool
    ) -> Reply | None:
        """None when GitLab (or, offline, its earlier word) lets the caller read the file."""
        if self._offline:
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
            await self.remember(caller, path, sha256, filename)
            return None
        await self.refused(caller, sha256, filename, answer.status)
        return Reply(answer.status, answer.body, dict(answer.headers), "BYPASS")

    async def remember(self, caller: Caller, path: str, sha256: str, filename: str) -> None:
        """Record what GitLab just served; a caller with its own credentials has it recorded
        in the background, since that first asks GitLab again (the download need not wait)."""
        if not caller.personal:
            await self._keeper.vouch(caller, [(sha256, filename)], public=True)
            return
        self._spawn(self._vouch_personal(caller, path, sha256, filename))

    async def refused(self, caller: Caller, sha256: str, filename: str, status: int) -> None:
        """GitLab's 404 for a caller GitLab lets into the scope: no such name for this
        sha256 here. Remembered, so a wrong name is never asked for twice."""
        if status == 404 and not caller.personal:
            await self._keeper.refuse(caller, sha256, filename, ttl=self._refusal_ttl)

    async def _vouch_personal(self, caller: Caller, path: str, sha256: str, filename: str) -> None:
        """GitLab let a caller with its own credentials read the file: it gets a record of
        its own only when GitLab would not give the file to anyone (a credential GitLab did
        not need creates nothing)."""
        try:
            public = (await self._upstream.check(path, authorization=None)).status < 400
        except UpstreamError:
            public = False
        await self._keeper.vouch(caller, [(sha256, filename)], public=public)
