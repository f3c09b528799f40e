"""Core metadata files (PEP 658/714): extracted once per wheel or read by ranges, and kept."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from anyio import to_thread

from proxy.cache import Store
from proxy.errors import CacheError, ProxyError, UpstreamUnavailable
from proxy.grants import Grants
from proxy.metadata import NoMetadata, Piece, Span, drive, extract_from, steps
from proxy.models import project_of
from proxy.recent import Recent
from proxy.upstream import GitLab
from proxy.values import MetadataMode

log = logging.getLogger("proxy.coremeta")
RECENT_KEPT = 256
"""Metadata read from GitLab lately, kept in memory too (served while it is stored, and
after): a few KB each."""
NO_RANGES_KEPT = 4096
"""Wheels remembered as refused a Range by GitLab (their metadata comes with the wheel)."""
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})")


class NoRanges(Exception):
    """GitLab did not answer a Range request with a 206: read the whole wheel instead."""


@dataclass(frozen=True, slots=True)
class Found:
    """A wheel's core metadata: its bytes and their own sha256."""

    sha256: str
    data: bytes
    fetched: bool
    """True when read from GitLab just now (X-Cache MISS)."""


class CoreMetadata:
    """Design 3.7: a wheel's METADATA, from the cache's records, its held wheel or (mode
    "always") GitLab's ranges; kept in the Store by its own sha256, with a record
    wheel sha256 -> metadata sha256 ("" when the wheel has none: never asked again)."""

    def __init__(
        self, *, mode: MetadataMode, store: Store, grants: Grants, upstream: GitLab, offline: bool
    ) -> None:
        self.mode = mode
        self.offline = offline
        self._store = store
        self._grants = grants
        self._upstream = upstream
        self._running: dict[str, asyncio.Future[Found | None]] = {}
        self._recent: Recent[str, Found] = Recent(RECENT_KEPT)  # read from GitLab lately
        self._whole: Recent[str, None] = Recent(RECENT_KEPT)  # wheels read whole by range lately
        self._stores: dict[str, asyncio.Future[None]] = {}  # by wheel sha256
        self._ahead: set[asyncio.Task[None]] = set()
        self._no_ranges: Recent[str, None] = Recent(NO_RANGES_KEPT)

    def __repr__(self) -> str:
        return f"CoreMetadata(mode={self.mode!r}, offline={self.offline})"

    @property
    def remote(self) -> bool:
        """Whether metadata of wheels not held can be read from GitLab."""
        return self.mode == "always" and not self.offline

    async def held(self, sha256: str, filename: str) -> Found | None:
        """The metadata from the cache (its file, or extracted from the held wheel); None
        when neither is held or the wheel has none."""
        found = await to_thread.run_sync(self.local, sha256, filename)
        return found if isinstance(found, Found) else None

    async def find(
        self,
        sha256: str,
        filename: str,
        *,
        path: str,
        authorization: str | None,
        looked: bool = False,
    ) -> Found | None:
        """The metadata, from the cache or, when allowed, from GitLab's ranges of the wheel
        at `path` (one read at a time per wheel); None when the wheel has none or it
        cannot be had. Raises NoRanges when GitLab ignores Range. `looked`: the caller
        has just read the cache for it (local() said None)."""
        if (recent := self._recent.get(sha256)) is not None:
            return replace(recent, fetched=False)  # read already: held, in memory
        if not looked:
            found = await to_thread.run_sync(self.local, sha256, filename)
            if found is not None:
                return found if isinstance(found, Found) else None
        if not self.remote:
            return None
        if (recent := self._recent.get(sha256)) is not None:  # read while we looked
            return replace(recent, fetched=False)
        if sha256 in self._no_ranges:
            raise NoRanges("GitLab ignored a Range request for this wheel before")
        running = self._running.get(sha256)
        if running is None:
            running = asyncio.ensure_future(self._remote(sha256, filename, path, authorization))
            self._running[sha256] = running
            running.add_done_callback(lambda _: self._running.pop(sha256, None))
        return await asyncio.shield(running)

    def read_ahead(
        self,
        wheels: Iterable[tuple[str, str, str]],
        *,
        authorization: str | None,
        then: Callable[[bytes], None],
    ) -> None:
        """Mode "always": start reading the metadata of `wheels` (sha256, filename, GitLab
        path) with the credentials GitLab just gave their page to, so a resolver's request
        that follows the page finds it read or on its way; `then` is given each metadata
        read. A failure is the later request's business (it asks again)."""
        if not self.remote:
            return
        for sha256, filename, path in wheels:
            if sha256 not in self._running:
                task = asyncio.ensure_future(
                    self._read_ahead(sha256, filename, path, authorization, then)
                )
                self._ahead.add(task)
                task.add_done_callback(self._ahead.discard)

    async def _read_ahead(
        self,
        sha256: str,
        filename: str,
        path: str,
        authorization: str | None,
        then: Callable[[bytes], None],
    ) -> None:
        try:
            found = await self.find(sha256, filename, path=path, authorization=authorization)
        except (NoRanges, ProxyError) as exc:
            log.debug("no metadata read ahead for %s: %s", filename, exc)
            return
        if found is not None:
            then(found.data)

    async def aclose(self) -> None:
        """Stop the reads ahead still running (at shutdown); let the stores end."""
        for task in list(self._ahead):
            task.cancel()
        await asyncio.gather(*self._ahead, return_exceptions=True)
        await asyncio.gather(*self._stores.values(), return_exceptions=True)

    def local(self, sha256: str, filename: str) -> Found | bool | None:
        """(Blocking) the metadata from the cache; False when the wheel is known to have
        none; None when the cache cannot tell (neither is held)."""
        known = self._grants.metadata_of(sha256)
        if known == "":
            return False
        if known:
            handle = self._store.open_file(known)
            if handle is not None:
                with handle:
                    return Found(known, handle.read(), fetched=False)
        return self._extract(sha256, filename)

    def advertised(
        self, sha256: str, filename: str, *, remote: bool, extract: bool
    ) -> tuple[str, bool]:
        """(Blocking) what a page may say of this wheel's metadata: "sha256=<hex>", "true"
        (`remote`: GitLab will be asked) or "" (nothing); and whether it was extracted now
        from the held wheel (only when `extract`)."""
        if (recent := self._recent.get(sha256)) is not None:  # read lately
            return "sha256=" + recent.sha256, False
        known = self._grants.metadata_of(sha256)
        if known == "":
            return "", False
        if known and (remote or self._store.has_file(known) or self._store.has_file(sha256)):
            return "sha256=" + known, False
        found = self._extract(sha256, filename) if extract else None
        if isinstance(found, Found):
            return "sha256=" + found.sha256, True
        return ("true" if found is None and remote else ""), found is not None

    def _extract(self, sha256: str, filename: str) -> Found | bool | None:
        """(Blocking) the metadata extracted from the held wheel, kept; False when it has
        none; None when the wheel is not held."""
        handle = self._store.open_file(sha256, use=False)
        if handle is None:
            return None
        with handle:
            try:
                data = extract_from(handle, filename)
            except NoMetadata as exc:
                log.info("no core metadata in %s: %s", filename, exc)
                self._known(sha256, "", filename)
                return False
        return self._keep(sha256, _found(data, fetched=False), filename)

    async def _remote(
        self, sha256: str, filename: str, path: str, authorization: str | None
    ) -> Found | None:
        whole: list[bytes] = []

        async def read(span: Span) -> Piece:
            piece = await self._range(path, authorization, span)
            if piece.offset == 0 and len(piece.data) == piece.size:
                whole.append(piece.data)  # a small wheel: the tail read was all of it
            return piece

        try:
            data = await drive(steps(filename), read)
        except NoRanges:
            self._no_ranges.put(sha256, None)
            raise
        except NoMetadata as exc:
            log.info("no core metadata in %s: %s", filename, exc)
            await to_thread.run_sync(self._known, sha256, "", filename)
            return None

        found = _found(data, fetched=True)

        def keep() -> None:
            if whole:
                self._adopt(sha256, filename, whole[0])
            self._keep(sha256, found, filename)

        # Served at once; stored meanwhile (find() gives it from memory, and a download
        # of the wheel waits for it: settled()).
        self._recent.put(sha256, found)
        if whole:
            self._whole.put(sha256, None)
        task = asyncio.ensure_future(to_thread.run_sync(keep))
        self._stores[sha256] = task
        task.add_done_callback(lambda _: self._stores.pop(sha256, None))
        task.add_done_callback(_stored)
        return found

    async def settled(self, sha256: str) -> bool:
        """Wait until what a range read brought of this wheel is stored; whether the read
        brought the whole wheel lately (it is held now, unless it failed its sha256)."""
        task = self._stores.get(sha256)
        if task is not None:
            await asyncio.wait([task])
        return sha256 in self._whole

    def _adopt(self, sha256: str, filename: str, wheel: bytes) -> None:
        """(Blocking) keep a wheel a range read brought whole as the cached file, when it
        hashes to its sha256: its download is then a hit, not a second fetch."""
        if hashlib.sha256(wheel).hexdigest() != sha256:
            log.warning("a range read of %s… does not hash to its sha256", sha256[:12])
            return
        try:
            self._put(sha256, wheel, ".whl", project_of(filename))
        except (CacheError, OSError) as exc:
            log.warning("cannot keep the wheel %s…: %s", sha256[:12], exc)

    def _put(self, digest: str, data: bytes, suffix: str, name: str) -> None:
        """(Blocking) store `data` as the cached file `digest` (of project `name`), unless
        it is held already."""
        if self._store.has_file(digest):
            return
        fd, temporary = tempfile.mkstemp(dir=self._store.tmp, suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            self._store.put_file(digest, Path(temporary), name=name)
        finally:
            Path(temporary).unlink(missing_ok=True)

    async def _range(self, path: str, authorization: str | None, span: Span) -> Piece:
        """One ranged GET of the wheel; NoRanges unless GitLab answers with the bytes asked."""
        header = f"bytes={span.start}" if span.start < 0 else f"bytes={span.start}-{span.end - 1}"
        async with self._upstream.download(
            path, authorization=authorization, byte_range=header
        ) as download:
            if download.status != 206:
                raise NoRanges(f"GitLab answered a Range request with {download.status}")
            match = _CONTENT_RANGE.fullmatch(download.headers.get("content-range", ""))
            if match is None:
                raise NoRanges("GitLab's 206 has no usable Content-Range")
            first, last, size = (int(group) for group in match.groups())
            expected = max(0, size + span.start) if span.start < 0 else span.start
            wanted = last + 1 - first
            if first != expected or last >= size or (span.start >= 0 and last >= span.end):
                raise NoRanges(f"GitLab sent bytes {first}-{last} for {header}")
            data = bytearray()
            async for chunk in download.chunks:
                data += chunk
                if len(data) > wanted:
                    break
            if len(data) != wanted:
                raise UpstreamUnavailable(f"GitLab sent {len(data)} of {wanted} bytes asked")
            return Piece(first, bytes(data), size)

    def _known(self, wheel: str, metadata: str, filename: str) -> None:
        """(Blocking) record the wheel's metadata ("": none), then mark the pages that
        advertise it (its project's) as changed."""
        self._grants.set_metadata(wheel, metadata)
        self._store.changes.files(project_of(filename))

    def _keep(self, wheel: str, found: Found, filename: str) -> Found:
        """(Blocking) store the metadata under its own sha256 and record it for the wheel; a
        cache that cannot store it still lets this answer be served."""
        try:
            self._put(found.sha256, found.data, ".metadata", project_of(filename))
            self._known(wheel, found.sha256, filename)
        except (CacheError, OSError) as exc:
            log.warning("cannot keep the core metadata of %s: %s", wheel[:12], exc)
        return found


def _found(data: bytes, *, fetched: bool) -> Found:
    return Found(hashlib.sha256(data).hexdigest(), data, fetched=fetched)


def _stored(task: asyncio.Future[None]) -> None:
    """Log how storing read metadata failed: its reader was answered already."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("cannot keep core metadata read from GitLab: %r", exc)
