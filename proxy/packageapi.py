"""GitLab's package REST API: a name's packages (asked once, kept briefly) and their files."""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlencode

from packaging.version import InvalidVersion, Version

from proxy.flights import Flights
from proxy.models import NormalizedName, Scope, normalize
from proxy.upstream import GitLab

PER_PAGE = 100  # GitLab's largest page of a REST listing
MAX_PAGES = 10
"""Listing pages read at most (1,000 packages or files): a bound, not a completeness claim."""
LISTING_TTL = 60.0
"""Seconds a listing is reused for the same scope, search term and credentials: a package's
id and version never change, and a caller that misses a version asks again (`fresh`)."""
LISTINGS_KEPT = 64


@dataclass(frozen=True, slots=True)
class Package:
    """One package (one version of a name) as GitLab's package listing shows it."""

    id: int
    name: NormalizedName
    version: str
    """As `models.version_of` writes it (packaging's Version), else as GitLab gave it."""
    project: int | str
    """The project that holds it (a group's listing spans its projects)."""


@dataclass(frozen=True, slots=True)
class _Listing:
    packages: tuple[Package, ...]
    fetched_at: float
    complete: bool = True
    """False for a scope's whole listing that did not fit in one page."""


def search_term(name: NormalizedName) -> str:
    """What to give GitLab's package_name filter, a case-insensitive substring match
    (`search_by_name`): the longest run between separators, since GitLab keeps the name
    as uploaded ("My_Package" is found by "package", not by "my-package")."""
    return max(name.split("-"), key=len)


def _normalized_version(value: object) -> str:
    """A version as version_of writes it (str of packaging's Version), else as given."""
    try:
        return str(Version(str(value)))
    except InvalidVersion:
        return str(value)


def _items(body: bytes) -> list[dict[str, Any]]:
    data: Any = json.loads(body)
    if not isinstance(data, list):
        raise ValueError("not a JSON list")
    return [item for item in data if isinstance(item, dict)]


def _packages(scope: Scope, items: list[dict[str, Any]]) -> tuple[Package, ...]:
    found = []
    for item in items:
        name, ident = item.get("name"), item.get("id")
        project = scope.id if scope.kind == "projects" else item.get("project_id")
        if isinstance(name, str) and isinstance(ident, int) and isinstance(project, (int, str)):
            version = _normalized_version(item.get("version"))
            found.append(Package(ident, normalize(name), version, project))
    return tuple(found)


class PackageAPI:
    """Reads GitLab's package API with a caller's upstream credentials, each request within
    `budget` seconds. A listing by search term is asked once however many pages want it at
    the same time, and reused for `ttl` seconds by the same scope and credentials.
    Any answer but a 200 raises ValueError (ProxyError when GitLab cannot be reached)."""

    def __init__(
        self,
        *,
        upstream: GitLab,
        budget: float,
        ttl: float = LISTING_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._upstream = upstream
        self._budget = budget
        self._ttl = ttl
        self._clock = clock
        self._flights: Flights[_Listing] = Flights()
        self._kept: OrderedDict[tuple[str, ...], _Listing] = OrderedDict()

    def __repr__(self) -> str:
        return f"PackageAPI(ttl={self._ttl})"

    async def packages(
        self, scope: Scope, name: NormalizedName, authorization: str | None, *, fresh: bool = False
    ) -> list[Package]:
        """The packages of `name` in `scope` that these credentials may see; `fresh`: not
        from a kept listing (it lacked a version the caller knows of)."""
        # The credentials only as a digest: equal credentials, equal answers.
        who = hashlib.sha256((authorization or "").encode()).hexdigest()
        if not fresh:
            # A scope of at most PER_PAGE packages is listed whole, once for every name:
            # a resolver's next pages then need only their files (one round trip less).
            whole = await self._listing(scope, "", who, authorization, fresh=False)
            if found := [package for package in whole.packages if package.name == name]:
                return found
        return await self._named(scope, name, who, authorization, fresh=fresh)

    async def _named(
        self,
        scope: Scope,
        name: NormalizedName,
        who: str,
        authorization: str | None,
        *,
        fresh: bool = False,
    ) -> list[Package]:
        listing = await self._listing(scope, search_term(name), who, authorization, fresh=fresh)
        return [package for package in listing.packages if package.name == name]

    async def _listing(
        self, scope: Scope, term: str, who: str, authorization: str | None, *, fresh: bool
    ) -> _Listing:
        """The listing of `term` ("": the whole scope, one page) in `scope`, kept or asked."""
        key = (scope.key, term, who)
        kept = self._kept.get(key)
        if fresh or kept is None or self._clock() - kept.fetched_at >= self._ttl:
            return await self._flights.join(
                key, partial(self._list, key, scope, term, authorization)
            )
        return kept

    async def _list(
        self, key: tuple[str, ...], scope: Scope, term: str, authorization: str | None
    ) -> _Listing:
        # GET /projects/:id/packages and /groups/:id/packages (with each package's project_id).
        query = {"package_type": "pypi"} | ({"package_name": term} if term else {})
        path = f"/api/v4/{scope.kind}/{scope.id}/packages"
        items = await self._pages(path, query, authorization, pages=MAX_PAGES if term else 1)
        complete = bool(term) or len(items) < PER_PAGE
        listing = _Listing(_packages(scope, items) if complete else (), self._clock(), complete)
        self._kept[key] = listing
        self._kept.move_to_end(key)
        while len(self._kept) > LISTINGS_KEPT:
            self._kept.popitem(last=False)
        return listing

    async def files(self, package: Package, authorization: str | None) -> list[dict[str, Any]]:
        """GitLab's package files of `package` (file_name, size, file_sha256, created_at)."""
        path = f"/api/v4/projects/{package.project}/packages/{package.id}/package_files"
        return await self._pages(path, {}, authorization)

    async def _pages(
        self, path: str, query: dict[str, str], authorization: str | None, *, pages: int = MAX_PAGES
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for number in range(1, pages + 1):
            query = {**query, "per_page": str(PER_PAGE), "page": str(number)}
            answer = await self._upstream.api(
                f"{path}?{urlencode(query)}", authorization=authorization, budget=self._budget
            )
            if answer.status != 200:
                raise ValueError(f"GitLab's package API answered {answer.status}")
            found = _items(answer.body)
            items += found
            if len(found) < PER_PAGE:
                break
        return items
