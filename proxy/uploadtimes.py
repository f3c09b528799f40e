"""PEP 700 upload times and sizes of GitLab's own files, from GitLab's package API."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import anyio
from anyio import to_thread
from packaging.version import InvalidVersion, Version

from proxy.errors import ProxyError
from proxy.models import (
    SIZE_ATTR,
    UPLOAD_TIME_ATTR,
    NormalizedName,
    Page,
    Scope,
    normalize,
    pep700_time,
    version_of,
)
from proxy.upstream import GitLab

log = logging.getLogger("proxy.uploadtimes")
TIMEOUT = 2.0
"""Seconds a page miss waits at most for the package API; after that it has no times."""
CONCURRENCY = 4
"""Package-file listings asked of GitLab at once for one page."""
PER_PAGE = 100  # GitLab's largest page of a REST listing
MAX_PAGES = 10
"""Listing pages read at most (1,000 packages or files): a bound, not a completeness claim."""
_FACTS = (UPLOAD_TIME_ATTR, SIZE_ATTR)

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


def _normalized_version(value: object) -> str:
    """A version as version_of writes it (str of packaging's Version), else as given."""
    try:
        return str(Version(str(value)))
    except InvalidVersion:
        return str(value)


def _search_term(name: NormalizedName) -> str:
    """What to give GitLab's package_name filter, a case-insensitive substring match
    (`search_by_name`): the longest run between separators, since GitLab keeps the name
    as uploaded ("My_Package" is found by "package", not by "my-package")."""
    return max(name.split("-"), key=len)


def _listing(answer_body: bytes) -> list[dict[str, Any]]:
    data: Any = json.loads(answer_body)
    if not isinstance(data, list):
        raise ValueError("not a JSON list")
    return [item for item in data if isinstance(item, dict)]


class UploadTimes:
    """Completes pages of GitLab's files with their upload times and sizes, asked of
    GitLab's package API with the caller's upstream credentials, within `timeout`
    seconds; any failure just leaves the files without times."""

    def __init__(
        self, *, upstream: GitLab, timeout: float = TIMEOUT, concurrency: int = CONCURRENCY
    ) -> None:
        self._upstream = upstream
        self._timeout = timeout
        self._concurrency = concurrency

    def __repr__(self) -> str:
        return f"UploadTimes(timeout={self._timeout})"

    async def complete(
        self,
        scope: Scope,
        name: NormalizedName,
        page: Page,
        *,
        before: Page | None = None,
        authorization: str | None,
    ) -> Page:
        """`page` with the times `before` knew of its files (carry), and the upload time
        and size of each file still without one that GitLab's package API shows this
        caller. The walks over the links run in a worker thread (pages can be huge)."""

        def carried() -> tuple[Page, set[str] | None]:
            kept = carry(before, page)
            wanted = lacking(kept)
            if not wanted:
                return kept, None
            return kept, {v for v in map(version_of, wanted) if v is not None}

        page, versions = await to_thread.run_sync(carried)
        if versions is None:
            return page
        facts: dict[Key, Facts] = {}
        with anyio.move_on_after(self._timeout):
            try:
                await self._facts(scope, name, versions, authorization, facts)
            except (ProxyError, ValueError, RecursionError) as exc:
                log.info("no upload times for %s in %s: %s", name, scope.key, exc)
        if not facts:
            return page
        return await to_thread.run_sync(annotate, page, facts)

    async def _get(self, path: str, query: dict[str, str], authorization: str | None) -> bytes:
        """One listing page's body; ValueError for any answer but a 200."""
        answer = await self._upstream.api(
            f"{path}?{urlencode(query)}", authorization=authorization, budget=self._timeout
        )
        if answer.status != 200:
            raise ValueError(f"GitLab's package API answered {answer.status}")
        return answer.body

    async def _pages(
        self, path: str, query: dict[str, str], authorization: str | None
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for number in range(1, MAX_PAGES + 1):
            query = {**query, "per_page": str(PER_PAGE), "page": str(number)}
            found = _listing(await self._get(path, query, authorization))
            items += found
            if len(found) < PER_PAGE:
                break
        return items

    async def _facts(
        self,
        scope: Scope,
        name: NormalizedName,
        versions: set[str],
        authorization: str | None,
        facts: dict[Key, Facts],
    ) -> None:
        """Fill `facts` from the packages of `name` at `versions` (every version when no
        file name told one)."""
        # GET /projects/:id/packages and /groups/:id/packages (with each package's project_id).
        query = {"package_type": "pypi", "package_name": _search_term(name)}
        packages = await self._pages(
            f"/api/v4/{scope.kind}/{scope.id}/packages", query, authorization
        )
        chosen = [
            package
            for package in packages
            if isinstance(package.get("name"), str)
            and normalize(package["name"]) == name
            and isinstance(package.get("id"), int)
            and (not versions or _normalized_version(package.get("version")) in versions)
        ]
        limiter = anyio.CapacityLimiter(self._concurrency)

        async def files_of(package: dict[str, Any]) -> None:
            project = scope.id if scope.kind == "projects" else package.get("project_id")
            if not isinstance(project, (int, str)):
                return
            path = f"/api/v4/projects/{project}/packages/{package['id']}/package_files"
            try:
                async with limiter:
                    found = await self._pages(path, {}, authorization)
            except (ProxyError, ValueError, RecursionError) as exc:
                # One package's files unknown: the others still get their times.
                log.info("no upload times for %s %s: %s", name, package.get("version"), exc)
                return
            facts.update(_file_facts(found))

        async with anyio.create_task_group() as group:
            for package in chosen:
                group.start_soon(files_of, package)


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
