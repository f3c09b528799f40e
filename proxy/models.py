"""Values that flow through the proxy: names, scopes, page models; no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal, NewType

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)

NormalizedName = NewType("NormalizedName", str)
CacheStatus = Literal["HIT", "MISS", "STALE", "REVALIDATED", "BYPASS"]

METADATA_ATTRS = ("data-core-metadata", "data-dist-info-metadata")
"""PEP 714 and PEP 658 names of the attribute advertising a file's core metadata."""
UPLOAD_TIME_ATTR = "data-upload-time"
SIZE_ATTR = "data-size"
"""PEP 700's upload-time and size of a file, kept as data-* attributes (uv reads both in
HTML too; JSON pages render them as PEP 700 keys)."""
_SEPARATORS = re.compile(r"[-_.]+")
# PEP 508 names: letters, digits, and . _ - inside; bounded so a key stays small.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_PEP700_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z"
)
# A distribution file name as GitLab stores it (CarrierWave keeps [\w.+-]).
_FILENAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+\-!]{0,254}$")
# {id}: a number or a URL-encoded full path such as acme%2Fsub%2Ftools.
_SCOPE_ID = re.compile(r"^(?:[0-9]{1,19}|[A-Za-z0-9_.\-]+(?:%2[Ff][A-Za-z0-9_.\-]+)*)$")


def normalize(name: str) -> NormalizedName:
    """PEP 503: "runs of -, _ and . become one -, and the name is lower-cased"."""
    return NormalizedName(_SEPARATORS.sub("-", name).lower())


def project_of(filename: str) -> NormalizedName:
    """The normalized project name a distribution file name carries (wheel and sdist
    rules of the packaging specs; for other kinds, the part before the first "-")."""
    try:
        if filename.endswith(".whl"):
            return NormalizedName(parse_wheel_filename(filename)[0])
        return NormalizedName(parse_sdist_filename(filename)[0])
    except (InvalidWheelFilename, InvalidSdistFilename):
        return normalize(filename.split("-", 1)[0])


def version_of(filename: str) -> str | None:
    """The normalized version a wheel or sdist file name carries (packaging's rules), else
    None (an egg, an unknown kind, a legacy version)."""
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None


def pep700_time(value: str) -> str | None:
    """An ISO 8601 time as PEP 700 writes it, else None: "yyyy-mm-ddThh:mm:ss.ffffffZ",
    "the upload time MUST use the UTC timezone"; a time without a zone is taken as UTC."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if _PEP700_TIME.fullmatch(value):
        return value  # already so: kept as the index or GitLab wrote it
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def valid_project_name(name: str) -> bool:
    """True for a name that could be a Python project's name (bounded length)."""
    return bool(_NAME.fullmatch(name))


def valid_sha256(value: str) -> bool:
    """True for 64 hexadecimal digits."""
    return bool(_SHA256.fullmatch(value))


def valid_filename(name: str) -> bool:
    """True for a plausible distribution file name: no separators, '..' or controls."""
    return bool(_FILENAME.fullmatch(name)) and ".." not in name


def valid_scope_id(value: str) -> bool:
    """True for a numeric id or a URL-encoded full path, still encoded."""
    if len(value) > 512 or not _SCOPE_ID.fullmatch(value):
        return False
    # "." and ".." would be dot segments: httpx resolves them and the request would
    # leave the PyPI surface (/api/v4/projects/../x is /api/v4/x).
    return all(part.strip(".") for part in re.split("%2[Ff]", value))


@dataclass(frozen=True, slots=True)
class Scope:
    """A project or group whose PyPI registry is addressed; `id` stays URL-encoded."""

    kind: Literal["projects", "groups"]
    id: str

    @property
    def api_path(self) -> str:
        """The path of this scope's PyPI API below the host, without a trailing slash."""
        dash = "/-" if self.kind == "groups" else ""
        return f"/api/v4/{self.kind}/{self.id}{dash}/packages/pypi"

    @property
    def key(self) -> str:
        """A short, stable key for cache entries of this scope."""
        return f"{self.kind}/{self.id.lower()}"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, worked out once per request and passed down (never the raw header).

    Every access decision reads these fields; none of them is a credential.
    """

    scope: Scope
    upstream: str | None = field(repr=False)
    """The Authorization GitLab sees for this caller's reads (service or the client's own)."""
    owner: str
    """Whose pages and file bindings these are: the scope's key, or in passthrough the
    scope's key and a salted hash of the caller's credential (GitLab filters per caller)."""
    origin: str
    """A salted hash of the scope and `upstream`: callers with equal origins get the same
    answers from GitLab, so they may share a download."""
    public_owner: str
    """The owner an anonymous caller of this scope has (the same as `owner` outside
    passthrough): what GitLab gives anyone is recorded there, not per credential."""

    @property
    def anonymous(self) -> bool:
        """True when GitLab sees no credentials."""
        return self.upstream is None

    @property
    def personal(self) -> bool:
        """True when this caller's records are its own (passthrough with a credential)."""
        return self.owner != self.public_owner


@dataclass(frozen=True, slots=True)
class Link:
    """One anchor of a simple page, with its href already made proxy-relative."""

    path: str
    """Absolute path on the proxy, starting with /api/v4/ (GitLab's own path)."""
    text: str
    fragment: str = ""
    """Without the '#': GitLab gives "sha256=<hex>" on file links."""
    attrs: tuple[tuple[str, str], ...] = ()
    """Every data-* attribute in source order, values unescaped."""

    @property
    def sha256(self) -> str | None:
        """The file's sha256, from the fragment or the files/<sha256>/ path."""
        if self.fragment.startswith("sha256="):
            value = self.fragment[len("sha256=") :]
            if valid_sha256(value):
                return value.lower()
        parts = self.path.split("/")
        if "files" in parts:
            i = parts.index("files")
            if i + 1 < len(parts) and valid_sha256(parts[i + 1]):
                return parts[i + 1].lower()
        return None

    @property
    def metadata_sha256(self) -> str | None:
        """The sha256 of the file's core metadata (PEP 658/714), when the page gives one."""
        for name, value in self.attrs:
            if name in METADATA_ATTRS and value.startswith("sha256="):
                digest = value[len("sha256=") :]
                if valid_sha256(digest):
                    return digest.lower()
        return None

    @property
    def filename(self) -> str:
        """The last path segment: the file name on a package page."""
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Page:
    """A simple page (index or one project's files) as the proxy keeps it."""

    title: str
    links: tuple[Link, ...] = field(default=())
    kind: Literal["index", "project"] = "project"
    json: bool = False
    """True when GitLab answered with PEP 691 JSON; rendered back the same way."""

    def only(self, keep: frozenset[str]) -> Page:
        """This page with only the file links whose sha256 is in `keep`, each advertising
        its core metadata only when that file is in `keep` too (pip fails hard on a
        `.metadata` it was promised and cannot get)."""
        links = []
        for link in self.links:
            if link.sha256 not in keep:
                continue
            advertised = any(name in METADATA_ATTRS for name, _ in link.attrs)
            if advertised and link.metadata_sha256 not in keep:
                link = replace(
                    link, attrs=tuple(a for a in link.attrs if a[0] not in METADATA_ATTRS)
                )
            links.append(link)
        return replace(self, links=tuple(links))

    def shas(self) -> frozenset[str]:
        """Every sha256 the page names: its files and their core metadata files."""
        found: set[str] = set()
        for link in self.links:
            found.update(sha for sha in (link.sha256, link.metadata_sha256) if sha)
        return frozenset(found)


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete answer for the client (a page, or GitLab's own error passed on)."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    cache: CacheStatus
