"""Public dependencies (design 3.6): GitLab's redirect of a name it does not hold, followed."""

from __future__ import annotations

import fnmatch
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote, urljoin, urlsplit

from anyio import to_thread

from proxy import publicpages
from proxy.answers import Answer
from proxy.errors import CacheError, UpstreamStatus
from proxy.grants import Grants
from proxy.models import (
    Link,
    NormalizedName,
    Page,
    Reply,
    Scope,
    normalize,
    project_of,
    valid_filename,
    valid_sha256,
)
from proxy.publicindex import PublicIndex
from proxy.values import ForwardingMode

log = logging.getLogger("proxy.forwarding")
# PEP 691 JSON preferred: it alone carries PEP 700 upload times and sizes.
ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.1"
)
PUBLIC_ETAG = "public:"
"""Prefix of a stored page's ETag when the page came from the public index."""
_FORWARD = "/packages/pypi/forward/"
_METADATA = ("data-dist-info-metadata", "data-core-metadata")


@dataclass(frozen=True, slots=True)
class Followed:
    """The public page of a name GitLab forwarded, ready to be stored like GitLab's."""

    page: Page | None
    """None: the public index says the stored page has not changed."""
    etag: str = ""
    """To store with the page: PUBLIC_ETAG + the index's ETag, or "" to ask afresh."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where a file of a followed page (or of a GitLab EE firewall page) is fetched from."""

    url: str
    """An absolute public URL, or a path of GitLab EE's forward/ route."""
    sha256: str
    """What its bytes hash to: the route's sha256, except for a core-metadata file,
    which is addressed by its wheel's sha256 (PEP 658: the wheel's URL + ".metadata")."""
    seen: bool = False
    """Bytes of this sha256 have been fetched from a public URL and verified."""

    @property
    def public(self) -> bool:
        """True for a URL on the public index (asked without credentials)."""
        return self.url.startswith(("https://", "http://"))


def is_public(etag: str) -> bool:
    """Whether a stored page's ETag is the public index's (the page was followed)."""
    return etag.startswith(PUBLIC_ETAG)


def _not_found(reason: str) -> Reply:
    body = json.dumps({"message": f"404 {reason}"}).encode()
    return Reply(404, body, {"content-type": "application/json"}, "BYPASS")


def _uploaded(value: str) -> float | None:
    """Seconds since the epoch of a PEP 700 upload-time (ISO 8601), or None."""
    try:
        return datetime.fromisoformat(value).timestamp() if value else None
    except ValueError:
        return None


class Forwarding:
    """Decides what GitLab's forwarding redirect becomes, and fetches public pages.

    Only GitLab's own redirect leads here, so a name GitLab holds never comes from the
    public index; the index is asked without any credential, only on allowed hosts.
    """

    def __init__(
        self,
        *,
        mode: ForwardingMode,
        index: PublicIndex,
        grants: Grants,
        never: Iterable[str] = (),
        min_age: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.mode = mode
        self._index = index
        self._grants = grants
        self._never = tuple(normalize(pattern) for pattern in never)
        self._min_age = min_age
        self._clock = clock

    def __repr__(self) -> str:
        return f"Forwarding(mode={self.mode!r}, index={self._index!r})"

    def never(self, name: NormalizedName) -> bool:
        """Whether `name` matches a forwarding.never pattern."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self._never)

    async def follow(
        self,
        scope: Scope,
        name: NormalizedName,
        redirect: Answer,
        *,
        json: bool,
        etag: str | None,
    ) -> Reply | Followed:
        """What GitLab's redirect of `name` becomes: a Reply for the client (the redirect
        itself, or a 404 saying why), or the public page with its links on the proxy."""
        location = urljoin(redirect.url, redirect.headers.get("location", ""))
        host = urlsplit(location).netloc.rpartition("@")[2]
        if not self._index.allows(location):
            return _not_found(f"GitLab forwards {name} to {host}, not in forwarding.allowed_hosts")
        if self.never(name):
            return _not_found(f"{name} matches forwarding.never: not taken from the public index")
        if self.mode == "deny":
            return _not_found(f"{name} is not in GitLab (forwarding.mode is deny)")
        if self.mode == "redirect":
            return Reply(redirect.status, redirect.body, dict(redirect.headers), "BYPASS")
        known = etag[len(PUBLIC_ETAG) :] if etag and is_public(etag) else None
        answer = await self._index.get(location, accept=ACCEPT, etag=known or None)
        if answer.status >= 500 or answer.status == 429:
            raise UpstreamStatus(answer.status)
        if answer.status == 304 and known:
            return Followed(None, PUBLIC_ETAG + known)
        if answer.status != 200:
            return _not_found(f"the public index answered {answer.status} for {name}")
        files = publicpages.parse_public(
            answer.body, content_type=answer.headers.get("content-type", ""), page_url=answer.url
        )
        page, sources, held_back = self._page(scope, name, files, json=json)
        await self._record(sources)
        # A page that held files back is fetched whole next time: one may have come of age.
        tag = answer.headers.get("etag", "")
        return Followed(page, PUBLIC_ETAG + tag if tag and not held_back else "")

    def _page(
        self,
        scope: Scope,
        name: NormalizedName,
        files: Iterable[publicpages.PublicFile],
        *,
        json: bool,
    ) -> tuple[Page, dict[tuple[str, str], str], bool]:
        """The page with each verifiable file on the proxy's files route, the public
        source of each, and whether min_age held any file back."""
        cutoff = self._clock() - self._min_age if self._min_age else None
        links: list[Link] = []
        sources: dict[tuple[str, str], str] = {}
        held_back = False
        for file in files:
            # No sha256: the bytes could not be verified. Another project's file: not
            # this page's to give.
            if file.sha256 is None or not valid_filename(file.filename):
                continue
            if project_of(file.filename) != name:
                continue
            if cutoff is not None:
                # No upload time: its age is unknown, and min_age is there to hold back
                # what may be a fresh (hijacked) release, so it is left out too.
                uploaded = _uploaded(file.upload_time)
                if uploaded is None or uploaded > cutoff:
                    held_back = True
                    continue
            attrs: list[tuple[str, str]] = []
            if file.requires_python:
                attrs.append(("data-requires-python", file.requires_python))
            if file.metadata and "?" not in file.url:
                # PEP 658: "the metadata file ... at the URL of the distribution with
                # .metadata appended"; offered only with a hash it can be verified against.
                hashed = f"sha256={file.metadata}"
                attrs += [("data-dist-info-metadata", hashed), ("data-core-metadata", hashed)]
                metadata = (file.sha256, file.filename + ".metadata")
                sources[metadata] = f"{file.url}.metadata#{hashed}"
            if file.yanked is not None:
                attrs.append(("data-yanked", file.yanked))
            if file.upload_time:
                attrs.append(("data-upload-time", file.upload_time))
            if file.size is not None:
                attrs.append(("data-size", str(file.size)))
            path = f"{scope.api_path}/files/{file.sha256}/{file.filename}"
            links.append(Link(path, file.filename, f"sha256={file.sha256}", tuple(attrs)))
            sources[(file.sha256, file.filename)] = file.url
        page = Page(title=f"Links for {name}", links=tuple(links), kind="project", json=json)
        return page, sources, held_back

    async def unforward(self, page: Page) -> Page:
        """GitLab EE's firewall pages link files through its forward/ route: each such
        link with a sha256 becomes the scope's files route, its source that forward/ path
        (asked with the caller's credentials, so the firewall still decides)."""
        links: list[Link] = []
        sources: dict[tuple[str, str], str] = {}
        for link in page.links:
            prefix, found, _ = link.path.partition(_FORWARD)
            if not found:
                links.append(link)
                continue
            sha256, filename = link.sha256, unquote(link.filename)
            if sha256 is None or not valid_filename(filename):
                continue
            attrs = tuple(a for a in link.attrs if a[0] not in _METADATA)
            for value in (v for k, v in link.attrs if k in _METADATA):
                digest = value.partition("=")[2].lower()
                if value.startswith("sha256=") and valid_sha256(digest):
                    # Served only with the hash it is verified against (pip fails on a 404).
                    attrs += tuple((k, value) for k in _METADATA)
                    sources[(sha256, filename + ".metadata")] = f"{link.path}.metadata#{value}"
                    break
            path = f"{prefix}/packages/pypi/files/{sha256}/{filename}"
            links.append(Link(path, link.text, f"sha256={sha256}", attrs))
            sources[(sha256, filename)] = link.path
        if not sources:
            return page
        await self._record(sources)
        return Page(page.title, tuple(links), page.kind, page.json)

    async def _record(self, sources: dict[tuple[str, str], str]) -> None:
        try:
            await to_thread.run_sync(self._grants.add_sources, sources)
        except CacheError as exc:
            log.warning("cannot record where public files are: %s", exc)

    def source_now(self, sha256: str, filename: str) -> Source | None:
        """(Blocking) where a followed page said this file is; None for a file of GitLab's
        own (read in the thread hop that reads the rest of a file request's facts)."""
        try:
            url = self._grants.source(sha256, filename)
            if url is None:
                return None
            seen = self._grants.seen_public(url.partition("#sha256=")[2] or sha256)
        except CacheError:
            return None
        address, _, fragment = url.partition("#")
        return Source(address, fragment.removeprefix("sha256=") or sha256, seen=seen)

    async def seen(self, sha256: str) -> None:
        """These bytes were fetched from a public URL and verified: they are public."""
        try:
            await to_thread.run_sync(self._grants.see_public, sha256)
        except CacheError as exc:
            log.warning("cannot record a public file: %s", exc)
