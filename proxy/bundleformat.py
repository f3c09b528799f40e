"""The bundle format: member names, the manifest and each record as checked JSON; no I/O."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy.cache import StoredPage
from proxy.models import (
    Link,
    Page,
    normalize,
    valid_filename,
    valid_project_name,
    valid_scope_id,
    valid_sha256,
)

VERSION = 2
READABLE = (1, 2)
"""Format 1 has no sources member (its bundles carry no forwarded files' records)."""
MANIFEST = "manifest.json"
PAGES = "pages.jsonl"
BINDINGS = "bindings.jsonl"
SOURCES = "sources.jsonl"
"""Where followed public files come from, and which bytes were verified as public."""
FILES = "files/"
"""Files are members named files/<sha256>, between the manifest and the pages."""
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024 * 1024
"""A page or binding record above this is refused (pages from GitLab stop at 20 MiB)."""
ANYONE = "@anyone"

# An owner a bundle may carry: a scope's key, or passthrough's owner for anonymous callers.
# Personal owners (scope@<hash>) hash credentials with the exporting cache's secret salt.
_OWNER = re.compile(r"^(projects|groups)/([^@|]+)(@anyone)?$")
# A link's path on the proxy: below a scope's PyPI API, RFC 3986 path characters only.
_LINK_PATH = re.compile(
    r"^/api/v4/(?:projects/([^/]+)|groups/([^/]+)/-)/packages/pypi/(?:simple|files)"
    r"(?:/[A-Za-z0-9\-._~!$&'()*+,;=:@%]*)*$"
)
_FRAGMENT = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*$")
_DATA_ATTR = re.compile(r"^data-[a-z0-9_][a-z0-9_.:-]*$")
_MAX_TEXT = 4096


class Invalid(ValueError):
    """A record of a bundle breaks the format; the message says which field."""


@dataclass(frozen=True, slots=True)
class BundledFile:
    """One file of a bundle, as the manifest lists it."""

    sha256: str
    size: int
    pinned: bool


@dataclass(frozen=True, slots=True)
class Manifest:
    """The first member: format version, when it was made, and every file."""

    created: float
    files: tuple[BundledFile, ...]
    version: int = VERSION

    @property
    def members(self) -> tuple[str, ...]:
        """The record members a bundle of this version holds besides its files."""
        return (PAGES, BINDINGS, SOURCES) if self.version >= 2 else (PAGES, BINDINGS)

    @property
    def size(self) -> int:
        """The bytes of all files."""
        return sum(file.size for file in self.files)


def is_public_owner(owner: str) -> bool:
    """True for an owner another cache can use: a scope's key, or scope@anyone."""
    found = _OWNER.fullmatch(owner)
    return (
        found is not None
        and valid_scope_id(found.group(2))
        and found.group(2) == (found.group(2).lower())
    )


def plain_owner(owner: str) -> str:
    """The scope's key of an owner (what open and tokens modes use)."""
    return owner.removesuffix(ANYONE)


def in_scopes(owner: str, scope_keys: Iterable[str]) -> bool:
    """True when `owner` belongs to one of these scope keys (itself, or key@...)."""
    return any(owner == key or owner.startswith(key + "@") for key in scope_keys)


def manifest_to_json(manifest: Manifest) -> bytes:
    """The manifest member's bytes."""
    files = [{"sha256": f.sha256, "size": f.size, "pinned": f.pinned} for f in manifest.files]
    document = {"format": manifest.version, "created": manifest.created, "files": files}
    return json.dumps(document, separators=(",", ":")).encode("ascii")


def manifest_from_json(data: bytes) -> Manifest:
    """The manifest of an untrusted bundle; Invalid unless every field checks out."""
    document = _object(_loads(data), "manifest")
    version = document.get("format")
    if isinstance(version, bool) or version not in READABLE:
        raise Invalid(f"manifest: format {version!r} (expected one of {READABLE})")
    created = _number(document.get("created"), "manifest: created")
    entries = document.get("files")
    if not isinstance(entries, list):
        raise Invalid("manifest: files is not a list")
    files, seen = [], set()
    for entry in entries:
        entry = _object(entry, "manifest: a file")
        sha256, size, pinned = entry.get("sha256"), entry.get("size"), entry.get("pinned")
        if not (isinstance(sha256, str) and valid_sha256(sha256) and sha256 == sha256.lower()):
            raise Invalid(f"manifest: {sha256!r} is not a lower-case sha256")
        if sha256 in seen:
            raise Invalid(f"manifest: {sha256} is listed twice")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise Invalid(f"manifest: {sha256}: size {size!r} is not a byte count")
        if not isinstance(pinned, bool):
            raise Invalid(f"manifest: {sha256}: pinned {pinned!r} is not true or false")
        seen.add(sha256)
        files.append(BundledFile(sha256, size, pinned))
    assert isinstance(version, int)
    return Manifest(created=created, files=tuple(files), version=version)


def page_to_json(key: str, stored: StoredPage) -> bytes:
    """One line of the pages member: the page's key, when GitLab gave it, and its links."""
    page = stored.page
    links = [
        {
            "path": x.path,
            "text": x.text,
            "fragment": x.fragment,
            "attrs": [list(a) for a in x.attrs],
        }
        for x in page.links
    ]
    document = {
        "key": key,
        "fetched_at": stored.fetched_at,
        "etag": stored.etag,
        "title": page.title,
        "kind": page.kind,
        "json": page.json,
        "links": links,
    }
    return json.dumps(document, separators=(",", ":")).encode("ascii") + b"\n"


def page_from_json(line: bytes) -> tuple[str, str, StoredPage]:
    """(key, normalized name, page) of one untrusted line; Invalid unless it checks out."""
    document = _object(_loads(line), "a page")
    key = _text(document.get("key"), "page: key")
    owner, _, rest = key.partition("|")
    name, _, representation = rest.partition("|")
    if not is_public_owner(owner):
        raise Invalid(f"page {key!r}: {owner!r} is not a scope another cache can serve")
    if representation not in ("html", "json"):
        raise Invalid(f"page {key!r}: representation {representation!r}")
    if name and not (valid_project_name(name) and normalize(name) == name):
        raise Invalid(f"page {key!r}: {name!r} is not a normalized project name")
    kind = document.get("kind")
    if kind != ("project" if name else "index"):
        raise Invalid(f"page {key!r}: kind {kind!r}")
    as_json = document.get("json")
    if not isinstance(as_json, bool):
        raise Invalid(f"page {key!r}: json {as_json!r}")
    entries = document.get("links")
    if not isinstance(entries, list):
        raise Invalid(f"page {key!r}: links is not a list")
    page = Page(
        title=_text(document.get("title"), f"page {key!r}: title"),
        links=tuple(_link(entry, key) for entry in entries),
        kind=kind,
        json=as_json,
    )
    fetched_at = _number(document.get("fetched_at"), f"page {key!r}: fetched_at")
    stored = StoredPage(page, fetched_at, _text(document.get("etag"), f"page {key!r}: etag"))
    return key, name, stored


def _link(entry: object, key: str) -> Link:
    entry = _object(entry, f"page {key!r}: a link")
    path = _text(entry.get("path"), f"page {key!r}: a link's path")
    found = _LINK_PATH.fullmatch(path)
    if found is None or not valid_scope_id(found.group(1) or found.group(2)):
        raise Invalid(f"page {key!r}: link {path!r} is not below a scope's PyPI API")
    if any(part.lower().replace("%2e", ".") in (".", "..") for part in path.split("/")):
        raise Invalid(f"page {key!r}: link {path!r} has a dot segment")
    fragment = _text(entry.get("fragment"), f"page {key!r}: a link's fragment")
    if not _FRAGMENT.fullmatch(fragment):
        raise Invalid(f"page {key!r}: fragment {fragment!r}")
    attrs = entry.get("attrs")
    if not isinstance(attrs, list):
        raise Invalid(f"page {key!r}: a link's attrs is not a list")
    pairs = []
    for pair in attrs:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise Invalid(f"page {key!r}: an attribute is not a [name, value] pair")
        name, value = (_text(item, f"page {key!r}: an attribute") for item in pair)
        if not _DATA_ATTR.fullmatch(name):
            raise Invalid(f"page {key!r}: attribute {name!r} is not data-*")
        pairs.append((name, value))
    text = _text(entry.get("text"), f"page {key!r}: a link's text")
    return Link(path, text, fragment, tuple(pairs))


def binding_to_json(owner: str, files: Iterable[tuple[str, str]], accepted: float | None) -> bytes:
    """One line of the bindings member: the files GitLab gave `owner`, and (passthrough's
    anonymous owner) when GitLab last answered it."""
    document = {"owner": owner, "files": sorted(files), "accepted": accepted}
    return json.dumps(document, separators=(",", ":")).encode("ascii") + b"\n"


def binding_from_json(
    line: bytes, held: frozenset[str]
) -> tuple[str, frozenset[tuple[str, str]], float | None]:
    """(owner, files, accepted) of one untrusted line; Invalid unless it checks out and
    binds only files in `held` (the bundle's own: a bundle never opens up other files)."""
    document = _object(_loads(line), "a binding")
    owner = _text(document.get("owner"), "binding: owner")
    if not is_public_owner(owner):
        raise Invalid(f"binding: {owner!r} is not a scope another cache can serve")
    entries = document.get("files")
    if not isinstance(entries, list):
        raise Invalid(f"binding of {owner}: files is not a list")
    files = set()
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 2):
            raise Invalid(f"binding of {owner}: an entry is not [sha256, filename]")
        sha256, filename = (_text(item, f"binding of {owner}") for item in entry)
        if sha256 not in held:
            raise Invalid(f"binding of {owner}: {sha256!r} is not a file of the bundle")
        if not valid_filename(filename):
            raise Invalid(f"binding of {owner}: {filename!r} is not a distribution file name")
        files.add((sha256, filename))
    accepted = document.get("accepted")
    when = None if accepted is None else _number(accepted, f"binding of {owner}: accepted")
    return owner, frozenset(files), when


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """Where a followed public page said a (sha256, filename) pair is fetched from."""

    sha256: str
    filename: str
    url: str
    """http(s); a core-metadata file's ("<wheel>.metadata") ends in #sha256=<its own hash>."""


@dataclass(frozen=True, slots=True)
class PublicRecord:
    """Bytes fetched from a public URL and verified: anyone may have them."""

    sha256: str


def source_to_json(record: SourceRecord | PublicRecord) -> bytes:
    """One line of the sources member."""
    document: dict[str, str]
    if isinstance(record, PublicRecord):
        document = {"public": record.sha256}
    else:
        document = {"sha256": record.sha256, "filename": record.filename, "url": record.url}
    return json.dumps(document, separators=(",", ":")).encode("ascii") + b"\n"


def source_from_json(
    line: bytes, held: Container[str], bound: Container[tuple[str, str]]
) -> SourceRecord | PublicRecord:
    """One untrusted line of the sources member; Invalid unless it checks out: a public
    record names a file of the bundle (`held`), a source record a (sha256, filename) pair
    the bundle binds (`bound`), at an http(s) URL."""
    document = _object(_loads(line), "a source")
    if "public" in document:
        sha256 = _text(document["public"], "public record")
        if sha256 not in held:
            raise Invalid(f"public record: {sha256!r} is not a file of the bundle")
        return PublicRecord(sha256)
    sha256 = _text(document.get("sha256"), "source: sha256")
    filename = _text(document.get("filename"), "source: filename")
    url = _text(document.get("url"), f"source of {filename!r}: url")
    if not (valid_sha256(sha256) and sha256 == sha256.lower()):
        raise Invalid(f"source: {sha256!r} is not a lower-case sha256")
    if not valid_filename(filename):
        raise Invalid(f"source: {filename!r} is not a distribution file name")
    if (sha256, filename) not in bound:
        raise Invalid(f"source of {filename}: {sha256} is not bound to it in the bundle")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise Invalid(f"source of {filename}: {url!r} is not a URL") from exc
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Invalid(f"source of {filename}: {url!r} is not an http(s) URL")
    # Only a core-metadata file has a fragment: the hash of its own bytes (PEP 658).
    if filename.endswith(".metadata"):
        digest = metadata_sha256(url)
        fitting = digest is not None and parts.fragment == f"sha256={digest}"
    else:
        fitting = "#" not in url
    if not fitting:
        raise Invalid(f"source of {filename}: fragment {parts.fragment!r}")
    return SourceRecord(sha256, filename, url)


def metadata_sha256(url: str) -> str | None:
    """The sha256 a core-metadata source's URL names (its #sha256= fragment), or None."""
    digest = url.partition("#sha256=")[2]
    return digest if valid_sha256(digest) and digest == digest.lower() else None


def _loads(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise Invalid(f"not JSON: {exc}") from exc


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"{what} is not an object")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise Invalid(f"{what} is not a string of at most {_MAX_TEXT} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Invalid(f"{what} is not valid Unicode") from exc
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(f"{what} is not a finite number")
    return float(value)
