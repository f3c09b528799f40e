"""Core metadata advertised on pages (PEP 658/714), read ahead, and the names it requires."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from email.parser import BytesParser
from urllib.parse import unquote

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import Version

from proxy.coremeta import CoreMetadata
from proxy.models import METADATA_ATTRS, Link, NormalizedName, Page, normalize

EXTRACT_PER_PAGE = 32
"""Held wheels whose metadata one page rendering extracts at most (the rest: next time)."""
READ_AHEAD = 4
"""Wheels of a page's newest release whose metadata a page from GitLab reads ahead."""
WARM_PER_METADATA = 16
"""Dependencies of metadata just read from GitLab whose pages are fetched ahead."""


class MetadataInjector:
    """Adds PEP 658/714 attributes to a page's wheel links, for the metadata that can be
    served: a hash once known, "true" where only mode "always" promises it; links that
    already advertise metadata (a followed public page's) are left as they are."""

    def __init__(self, core: CoreMetadata) -> None:
        self._core = core

    def __repr__(self) -> str:
        return f"MetadataInjector({self._core!r})"

    def read_ahead(
        self,
        page: Page,
        *,
        authorization: str | None,
        then: Callable[[bytes], None] | None = None,
    ) -> None:
        """Mode "always", for a page GitLab just gave: start reading the metadata of the
        newest release's wheels (at most READ_AHEAD, pure-Python first) with the same
        credentials (CoreMetadata.read_ahead); `then` is given the first metadata read."""
        if not self._core.remote or page.kind != "project":
            return
        wheels = _newest_wheels(page)[:READ_AHEAD]
        self._core.read_ahead(wheels, authorization=authorization, then=_Once(then))

    def injected(self, page: Page, *, remote: bool) -> Page:
        """(Blocking) `page` with its wheels' metadata advertised; `remote` False when GitLab
        cannot be asked now (only what the cache can serve)."""
        if self._core.mode == "off" or page.kind != "project":
            return page
        if not any(_wheel(link) for link in page.links):
            return page
        return self._injected(page, remote and self._core.remote)

    def _injected(self, page: Page, remote: bool) -> Page:
        budget = EXTRACT_PER_PAGE
        links = []
        for link in page.links:
            sha256 = link.sha256
            if sha256 is not None and _wheel(link):
                value, extracted = self._core.advertised(
                    sha256, unquote(link.filename), remote=remote, extract=budget > 0
                )
                budget -= extracted
                if value:
                    attrs = link.attrs + tuple((name, value) for name in METADATA_ATTRS)
                    link = replace(link, attrs=attrs)
            links.append(link)
        return replace(page, links=tuple(links))


class _Once:
    """A callback given its first value only (the wheels of one release share their
    requirements, as a rule)."""

    def __init__(self, callback: Callable[[bytes], None] | None) -> None:
        self._callback = callback

    def __call__(self, value: bytes) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback(value)


def dependencies(metadata: bytes) -> list[NormalizedName]:
    """The names a resolver asks for next: Requires-Dist without an environment marker
    (markers are the client's to evaluate), at most WARM_PER_METADATA, in order."""
    names: dict[NormalizedName, None] = {}
    message = BytesParser().parsebytes(metadata, headersonly=True)
    for line in message.get_all("Requires-Dist") or []:
        try:
            requirement = Requirement(str(line))
        except InvalidRequirement:
            continue
        if requirement.marker is None:
            names[normalize(requirement.name)] = None
    return list(names)[:WARM_PER_METADATA]


def _newest_wheels(page: Page) -> list[tuple[str, str, str]]:
    """(sha256, filename, GitLab path) of the wheels of the page's newest release that is
    not yanked, pure-Python ones first."""
    wheels: list[tuple[Version, bool, str, str, str]] = []
    for link in page.links:
        sha256, filename = link.sha256, unquote(link.filename)
        if sha256 is None or not _wheel(link) or "/packages/pypi/files/" not in link.path:
            continue
        if any(name == "data-yanked" for name, _ in link.attrs):
            continue
        try:
            version = parse_wheel_filename(filename)[1]
        except InvalidWheelFilename:
            continue
        wheels.append((version, filename.endswith("-none-any.whl"), sha256, filename, link.path))
    if not wheels:
        return []
    newest = max(wheel[0] for wheel in wheels)
    chosen = sorted((w for w in wheels if w[0] == newest), key=lambda w: not w[1])
    return [(sha256, filename, path) for _, _, sha256, filename, path in chosen]


def _wheel(link: Link) -> bool:
    """A wheel link that does not advertise core metadata yet."""
    return link.filename.endswith(".whl") and not any(n in METADATA_ATTRS for n, _ in link.attrs)
