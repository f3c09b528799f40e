"""Core metadata files (PEP 658/714, design 3.7): a wheel's `.metadata`, its dependencies told."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import quote

from proxy.coremeta import CoreMetadata, Found, NoRanges
from proxy.fileaccess import FileAccess
from proxy.filereplies import FileReply, Passed, in_memory, not_found
from proxy.fillreads import Fill
from proxy.forwarding import Source
from proxy.models import Caller, Reply
from proxy.recent import Recent

WARMED_KEPT = 4096
"""Wheels remembered as having had their dependencies' pages fetched ahead."""


class MetadataFiles:
    """Answers `<wheel>.metadata` requests, and has the dependencies a resolution reads
    next (from a wheel's metadata served or a wheel downloaded) told once to `on_metadata`."""

    def __init__(
        self,
        *,
        metadata: CoreMetadata,
        access: FileAccess,
        whole: Callable[[Caller, str, str], Awaitable[FileReply | Passed | Reply]],
        on_metadata: Callable[[Caller, bytes], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._metadata = metadata
        self._access = access
        self._whole = whole
        self._on_metadata = on_metadata
        self._spawn = spawn
        self._warmed: Recent[str, None] = Recent(
            WARMED_KEPT
        )  # wheels whose dependencies were looked at

    def __repr__(self) -> str:
        return f"MetadataFiles(mode={self._metadata.mode!r})"

    async def serve(
        self,
        caller: Caller,
        sha256: str,
        wheel: str,
        *,
        vetted: bool,
        fallback: bool,
        source: Source | None,
        held: Found | bool | None,
    ) -> FileReply | Reply:
        """`<wheel>.metadata` of a wheel this caller may read: from the cache, else (mode
        "always") from GitLab's ranges of the wheel, else from the whole wheel through
        the usual fill (`whole`). A 404 for anything else: never a guess, never the
        wheel's bytes. `held`: CoreMetadata.local's answer, when it was read."""
        path = f"{caller.scope.api_path}/files/{sha256}/{quote(wheel, safe='+')}"
        if not wheel.endswith(".whl") or not (vetted or fallback):
            return not_found()
        if not vetted:
            refusal = await self._access.check(caller, path, sha256, wheel, fallback=True)
            if refusal is not None:
                return refusal
        try:
            if source is not None:  # a public index's wheel: no ranges through PublicIndex
                raise NoRanges("a public file")
            if isinstance(held, Found):
                found: Found | None = held
            elif held is False or not self._metadata.remote:
                found = None
            else:
                found = await self._metadata.find(
                    sha256, wheel, path=path, authorization=caller.upstream, looked=True
                )
        except NoRanges:
            answer = await self._whole(caller, sha256, wheel)
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
            return not_found()
        data = found.data
        if self._metadata.remote and self._warmed.first(sha256, None):
            # Mode "always", a wheel's metadata served the first time here: a resolution
            # goes on from it (its dependencies' pages are fetched ahead when not fresh).
            self._on_metadata(caller, data)

        return in_memory(data, "MISS" if found.fetched else "HIT", sha256=found.sha256)

    def downloading(self, caller: Caller, fill: Fill, sha256: str, filename: str) -> None:
        """A whole wheel being downloaded (to resolve, as pip does): its dependencies are
        told once it is held, the first time only."""
        if self._metadata.mode == "off" or not filename.endswith(".whl"):
            return
        if self._warmed.first(sha256, None):
            self._spawn(self._ahead(caller, fill, filename))

    async def _ahead(self, caller: Caller, fill: Fill, wheel: str) -> None:
        """Once a wheel a client downloads is held, the pages of its dependencies are
        fetched ahead (when not fresh): the resolver asks for them next."""
        while not fill.done:
            await fill.changed()
        if fill.ok:
            found = await self._metadata.held(fill.sha256, wheel)
            if found is not None:
                self._on_metadata(caller, found.data)
