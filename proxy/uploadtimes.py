"""PEP 700 upload times and sizes of GitLab's own files, from GitLab's package API."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import anyio
from anyio import to_thread

from proxy.errors import ProxyError
from proxy.models import (
    SIZE_ATTR,
    UPLOAD_TIME_ATTR,
    NormalizedName,
    Page,
    Scope,
    pep700_time,
    version_of,
)
from proxy.packageapi import Package, PackageAPI

log = logging.getLogger("proxy.uploadtimes")
TIMEOUT = 2.0
"""Seconds a page miss waits at most for the package API; after that it has no times."""
CONCURRENCY = 4
"""Package-file listings asked of GitLab at once for one page."""
INLINE_LINKS = 256
"""Pages with at most this many links are walked on the event loop: a thread hop costs
more than the walk (and, on a loaded machine, a wait for the scheduler)."""
_FACTS = (UPLOAD_TIME_ATTR, SIZE_ATTR)
T = TypeVar("T")

Key = tuple[str, str]
"""(sha256 in lower case, file name): how a page's link and a package file meet."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What GitLab's package API says of one file."""

    upload_time: str
    """PEP 700's format (UTC, Z)."""
    size: int | None


def lacking(page: Page) -> list[str]:
    """The file names of the page's files that have no upload time yet."""
    return [
        link.filename
        for link in page.links
        if link.sha256 and not any(name == UPLOAD_TIME_ATTR for name, _ in link.attrs)
    ]


def bare(page: Page) -> Page:
    """The page without PEP 700 attributes: what GitLab's page itself says, to compare."""
    links = tuple(
        replace(link, attrs=tuple(a for a in link.attrs if a[0] not in _FACTS))
        if any(a[0] in _FACTS for a in link.attrs)
        else link
        for link in page.links
    )
    return replace(page, links=links)


def carry(before: Page | None, page: Page) -> Page:
    """`page` with the upload time and size of each file `before` listed with them (a file
    is the same file while its sha256 and name are)."""
    if before is None:
        return page
    known: dict[tuple[str | None, str], tuple[tuple[str, str], ...]] = {
        (link.sha256, link.filename): tuple(a for a in link.attrs if a[0] in _FACTS)
        for link in before.links
        if link.sha256
    }
    return _apply(page, known)


def annotate(page: Page, facts: Mapping[Key, Facts]) -> Page:
    """`page` with data-upload-time and data-size on each file `facts` knows (a file GitLab
    stored without a sha256 is matched by its name alone)."""
    known: dict[tuple[str | None, str], tuple[tuple[str, str], ...]] = {}
    for (sha256, filename), fact in facts.items():
        attrs: tuple[tuple[str, str], ...] = ((UPLOAD_TIME_ATTR, fact.upload_time),)
        if fact.size is not None:
            attrs += ((SIZE_ATTR, str(fact.size)),)
        known[(sha256 or None, filename)] = attrs
    return _apply(page, known)


def _apply(page: Page, known: Mapping[tuple[str | None, str], tuple[tuple[str, str], ...]]) -> Page:
    if not known:
        return page
    links = []
    for link in page.links:
        attrs = known.get((link.sha256, link.filename)) or known.get((None, link.filename))
        if attrs and not any(a[0] in _FACTS for a in link.attrs):
            link = replace(link, attrs=link.attrs + attrs)
        links.append(link)
    return replace(page, links=tuple(links))


@dataclass(frozen=True, slots=True)
class _Found:
    """What one lookup in the package API found."""

    facts: dict[Key, Facts]
    listed: frozenset[str] | None
    """The versions GitLab's listing showed (None: it was not read)."""


class Early:
    """The package API asked for every file of a name while GitLab is asked for its page
    (a cold page: none of its files can have a time yet)."""

    def __init__(self, task: asyncio.Task[_Found], deadline: float) -> None:
        self._task = task
        self.deadline = deadline
        """When (time.monotonic) the page stops waiting for the package API."""

    def __repr__(self) -> str:
        return f"Early(done={self._task.done()})"

    async def found(self) -> _Found:
        """What the package API said by the deadline (the lookup ends there by itself)."""
        return await self._task

    def cancel(self) -> None:
        """Stop asking: the page did not need it (not a 200, or GitLab failed)."""
        self._task.cancel()


class UploadTimes:
    """Completes pages of GitLab's files with their upload times and sizes, asked of
    GitLab's package API with the caller's upstream credentials, within `timeout`
    seconds; any failure just leaves the files without times."""

    def __init__(
        self, *, api: PackageAPI, timeout: float = TIMEOUT, concurrency: int = CONCURRENCY
    ) -> None:
        self._api = api
        self._timeout = timeout
        self._concurrency = concurrency

    def __repr__(self) -> str:
        return f"UploadTimes(timeout={self._timeout})"

    def early(self, scope: Scope, name: NormalizedName, *, authorization: str | None) -> Early:
        """Start asking for the times of every file of `name` now, for `complete`."""
        deadline = time.monotonic() + self._timeout
        lookup = self._bounded(scope, name, set(), authorization, deadline)
        return Early(asyncio.create_task(lookup), deadline)

    async def complete(
        self,
        scope: Scope,
        name: NormalizedName,
        page: Page,
        *,
        before: Page | None = None,
        authorization: str | None,
        early: Early | None = None,
    ) -> Page:
        """`page` with the times `before` knew of its files (carry), those `early` found,
        and the upload time and size of each file still without one that GitLab's package
        API shows this caller, all within the timeout. The walks over the links of a large
        page run in a worker thread."""
        deadline = early.deadline if early else time.monotonic() + self._timeout
        if early is not None:
            # What the early lookup found, applied in the same worker-thread hop.
            found = await early.found()
            page, versions = await _walk(page, _carried, before, page, found.facts)
            # Only versions the early listing did not show (uploaded since) are asked
            # for again; after a failure, not at all (the same question, moments ago).
            if versions is None or found.listed is None:
                return page
            versions -= found.listed
            if not versions:
                return page
        else:
            page, versions = await _walk(page, _carried, before, page, {})
        if versions is None:
            return page
        facts = (await self._bounded(scope, name, versions, authorization, deadline)).facts
        if not facts:
            return page
        return await _walk(page, annotate, page, facts)

    async def _bounded(
        self,
        scope: Scope,
        name: NormalizedName,
        versions: set[str],
        authorization: str | None,
        deadline: float,
    ) -> _Found:
        """What `_facts` found by `deadline`."""
        facts: dict[Key, Facts] = {}
        listed: frozenset[str] | None = None
        with anyio.move_on_after(deadline - time.monotonic()):
            try:
                listed = await self._facts(scope, name, versions, authorization, facts)
            except (ProxyError, ValueError, RecursionError) as exc:
                log.info("no upload times for %s in %s: %s", name, scope.key, exc)
        return _Found(facts, listed)

    async def _facts(
        self,
        scope: Scope,
        name: NormalizedName,
        versions: set[str],
        authorization: str | None,
        facts: dict[Key, Facts],
    ) -> frozenset[str]:
        """Fill `facts` from the packages of `name` at `versions` (every version when none
        is named); a kept listing that lacks one of them is asked for again. Returns the
        versions the listing showed."""
        packages = await self._api.packages(scope, name, authorization)
        if versions - {package.version for package in packages}:
            packages = await self._api.packages(scope, name, authorization, fresh=True)
        chosen = [p for p in packages if not versions or p.version in versions]
        limiter = anyio.CapacityLimiter(self._concurrency)

        async def files_of(package: Package) -> None:
            try:
                async with limiter:
                    found = await self._api.files(package, authorization)
            except (ProxyError, ValueError, RecursionError) as exc:
                # One package's files unknown: the others still get their times.
                log.info("no upload times for %s %s: %s", name, package.version, exc)
                return
            facts.update(_file_facts(found))

        async with anyio.create_task_group() as group:
            for package in chosen:
                group.start_soon(files_of, package)
        return frozenset(package.version for package in packages)


async def _walk(page: Page, walk: Callable[..., T], *args: object) -> T:
    """`walk(*args)` over `page`'s links: in a worker thread when the page is large."""
    if len(page.links) <= INLINE_LINKS:
        return walk(*args)
    return await to_thread.run_sync(walk, *args)


def _carried(
    before: Page | None, page: Page, facts: Mapping[Key, Facts]
) -> tuple[Page, set[str] | None]:
    """`page` with what `before` knew and `facts` say, and the versions of its files still
    without a time (None: none lacks one; empty: some do, but their names tell no version)."""
    kept = annotate(carry(before, page), facts)
    wanted = lacking(kept)
    if not wanted:
        return kept, None
    return kept, {v for v in map(version_of, wanted) if v is not None}


def _file_facts(files: Iterable[dict[str, Any]]) -> dict[Key, Facts]:
    """GitLab's package files (file_name, size, file_sha256, created_at) as facts."""
    facts: dict[Key, Facts] = {}
    for file in files:
        filename, created, size = file.get("file_name"), file.get("created_at"), file.get("size")
        sha256 = file.get("file_sha256")
        when = pep700_time(created) if isinstance(created, str) else None
        if not isinstance(filename, str) or when is None:
            continue
        exact = isinstance(size, int) and not isinstance(size, bool) and size >= 0
        key = ((sha256 if isinstance(sha256, str) else "").lower(), filename)
        facts[key] = Facts(when, size if exact else None)
    return facts
