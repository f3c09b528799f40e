"""GitLab's simple pages parsed (the only lxml import), and the vocabulary other pages share."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import quote, urljoin, urlsplit

from lxml import etree

from proxy.errors import PageError
from proxy.models import (
    Link,
    Page,
    normalize,
    valid_project_name,
    valid_scope_id,
)

MAX_PAGE_BYTES = 20 * 1024 * 1024
"""Upstream pages above this size are refused with PageError."""
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
# What publicpages and pagerender share with GitLab's pages: HTML's whitespace around an
# href; the data-* attributes ever read or echoed (lower-case, XML-compatible names);
# requires-python's attribute; the title GitLab's template gives a project page.
HREF_SPACE = " \t\n\r\f"
DATA_ATTR = re.compile(r"data-[a-z0-9_][a-z0-9_.:-]*")
REQUIRES_PYTHON = "data-requires-python"
TITLE_PREFIX = "Links for "

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Below GitLab's relative root: the two PyPI APIs' simple pages and files (section 1), and
# GitLab EE's forward/ route (section 7), which forwarding.Forwarding.unforward rewrites.
_API_PATH = re.compile(
    r"/api/v4/(?:projects/([^/]+)|groups/([^/]+)/-)/packages/pypi/(?:simple|files|forward)(?:/.*)?",
    re.S,
)
# RFC 3986 pchar; a fragment may also hold "/" and "?".
_PCHARS = "-._~!$&'()*+,;=:@"
_PATH_SAFE = _PCHARS + "/"
_FRAGMENT_SAFE = _PCHARS + "/?"
# Dot segments are refused in the path and inside an encoded id ("a%2F..%2Fb").
_DOT_SEGMENT = re.compile(r"(?:^|/|%2[Ff])(?:\.|%2[Ee]){1,2}(?=/|%2[Ff]|$)")
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# A path and fragment that urljoin, urlsplit and _requote would leave as they are (no
# ";" params, "?" query, whitespace or lone "%"): GitLab's own links skip parsing.
_CLEAN_TAIL = r"(/[-A-Za-z0-9._~!$&'()*+,=:@/%]*)(?:#([-A-Za-z0-9._~!$&'()*+,;=:@/?%]*))?"
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class _Origin:
    """GitLab's external URL split into what a link must match."""

    scheme: str
    host: str | None
    port: int | None
    root: str
    """relative_url_root without a trailing slash, e.g. "/gitlab" or ""."""
    clean: re.Pattern[str]
    """An absolute link below the root whose (path, fragment) need no parsing."""
    scopes: dict[str, bool] = field(default_factory=dict)
    """valid_scope_id's answers so far: a page's links share one or a few ids."""

    @classmethod
    def of(cls, upstream_url: str) -> _Origin:
        parts = urlsplit(upstream_url)
        root = parts.path.rstrip("/")
        prefix = re.escape(f"{parts.scheme}://{parts.netloc}{root}")
        return cls(
            parts.scheme,
            parts.hostname,
            _port(parts.scheme, parts.port),
            root,
            re.compile(prefix + _CLEAN_TAIL),
        )


def _port(scheme: str, port: int | None) -> int | None:
    # expose_url omits the default port, so https://h:443 and https://h are one origin.
    return port if port is not None else _DEFAULT_PORTS.get(scheme)


def _requote(value: str, safe: str) -> str:
    """`value` with every character outside `safe` percent-encoded; valid %XX kept as-is."""
    return quote(_LONE_PERCENT.sub("%25", value), safe=safe + "%", errors="replace")


def _locate(href: str, base: str, gitlab: _Origin) -> tuple[str, str] | None:
    """(path below the root, fragment) of a link into GitLab's PyPI API, else None."""
    href = href.strip(HREF_SPACE)
    clean = gitlab.clean.fullmatch(href)
    if clean is not None and not ("%" in href and _LONE_PERCENT.search(href)):
        path, fragment = clean.group(1), clean.group(2) or ""
    else:
        located = _parse_link(href, base, gitlab)
        if located is None:
            return None
        path, fragment = located
    match = _API_PATH.fullmatch(path)
    if match is None:
        return None
    scope = match.group(1) or match.group(2)
    valid = gitlab.scopes.get(scope)
    if valid is None:
        valid = gitlab.scopes[scope] = valid_scope_id(scope)
    if not valid:
        return None
    # Only "/." or an encoded "/" or "." can start a dot segment: most paths skip the regex.
    if ("/." in path or "%2" in path) and _DOT_SEGMENT.search(path):
        return None
    return path, fragment


def _parse_link(href: str, base: str, gitlab: _Origin) -> tuple[str, str] | None:
    """(path below the root, fragment) of any link to GitLab, both re-quoted, else None."""
    if not href:
        return None
    try:
        parts = urlsplit(urljoin(base, href))
        port = _port(parts.scheme, parts.port)
    except ValueError:  # a malformed port or IPv6 literal
        return None
    if (parts.scheme, parts.hostname, port) != (gitlab.scheme, gitlab.host, gitlab.port):
        return None
    if not parts.path.startswith(gitlab.root + "/"):
        return None
    path = _requote(parts.path[len(gitlab.root) :], _PATH_SAFE)
    return path, _requote(parts.fragment, _FRAGMENT_SAFE)


def parse(
    body: bytes,
    *,
    content_type: str,
    page_url: str,
    upstream_url: str,
    kind: Literal["index", "project"],
) -> Page:
    """The page GitLab sent, keeping only links into its PyPI API; PageError if unusable.

    `page_url` is the absolute URL the page came from (relative links resolve against
    it); `upstream_url` is GitLab's external URL including its relative root.
    """
    if len(body) > MAX_PAGE_BYTES:
        raise PageError(f"GitLab's page is larger than {MAX_PAGE_BYTES} bytes")
    gitlab = _Origin.of(upstream_url)
    if content_type.strip().lower().startswith(JSON_TYPE):
        return _parse_json(body, page_url, gitlab, kind)
    return _parse_html(body, page_url, gitlab, kind)


def _text(element: etree._Element) -> str:
    if len(element) == 0:  # no child elements: the text is all there is
        return (element.text or "").strip()
    return "".join(t for t in element.itertext() if isinstance(t, str)).strip()


def _root(body: bytes, what: str) -> etree._Element:
    """The HTML tree of a page; PageError naming `what` when there is none."""
    # UTF-8 (GitLab always sends it; PEP 503 pages are too); bad bytes and NULs become
    # U+FFFD rather than errors. etree's parser, not lxml.html's: no Python class
    # lookup for each element.
    parser = etree.HTMLParser(
        encoding="utf-8",
        no_network=True,
        remove_comments=True,
        remove_pis=True,
        recover=True,
        collect_ids=False,
    )
    try:
        root: etree._Element | None = etree.fromstring(body, parser)
    except (etree.LxmlError, ValueError) as exc:
        raise PageError(f"{what} is not HTML: {exc}") from exc
    if root is None:
        raise PageError(f"{what} is empty")
    return root


def html_anchors(body: bytes, what: str) -> tuple[str, Iterator[Mapping[str, str]]]:
    """The <base href> of an HTML page ("" without one) and each of its anchors'
    attributes (names in lower case), in page order; PageError naming `what` when there
    is no page. For pages other than GitLab's, without an lxml type leaving this module."""
    root = _root(body, what)
    element = next(root.iter("base"), None)
    base = (element.get("href") or "") if element is not None else ""
    # attrib: a view of the element's attributes with Mapping's methods, no copy per anchor.
    attributes = (cast("Mapping[str, str]", anchor.attrib) for anchor in root.iter("a"))
    return base, attributes


def _parse_html(
    body: bytes, page_url: str, gitlab: _Origin, kind: Literal["index", "project"]
) -> Page:
    root = _root(body, "GitLab's page")
    base = page_url
    element = next(root.iter("base"), None)  # pip, like browsers, honours <base href>
    href = (element.get("href") or "").strip(HREF_SPACE) if element is not None else ""
    if href:
        with contextlib.suppress(ValueError):  # a malformed IPv6 literal
            base = urljoin(page_url, href)
    title = ""
    for tag in ("title", "h1"):
        heading = next(root.iter(tag), None)
        title = _text(heading) if heading is not None else ""
        if title:
            break
    links = []
    for anchor in root.iter("a"):
        target = anchor.get("href")
        located = _locate(target, base, gitlab) if target is not None else None
        if located is None:
            continue
        # libxml2's HTML parser gives attribute names in lower case.
        attrs = tuple(
            (n, str(v)) for n, v in anchor.items() if isinstance(n, str) and DATA_ATTR.fullmatch(n)
        )
        links.append(Link(located[0], _text(anchor), located[1], attrs))
    return Page(title=title, links=tuple(links), kind=kind, json=False)


def encodable(value: str) -> str:
    """`value` with lone surrogates replaced: json.loads turns "\\ud800" into one, which
    cannot be encoded again."""
    return value.encode("utf-8", "replace").decode("utf-8")


def _parse_json(
    body: bytes, page_url: str, gitlab: _Origin, kind: Literal["index", "project"]
) -> Page:
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PageError(f"GitLab's page is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PageError("GitLab's JSON page is not an object")
    entries = data.get("projects" if kind == "index" else "files")
    if not isinstance(entries, list):
        raise PageError(f"GitLab's JSON {kind} page has no list of {kind}s")
    entries = [entry for entry in entries if isinstance(entry, dict)]
    if kind == "index":
        located = _locate(page_url, page_url, gitlab)
        if located is None:
            raise PageError(f"{page_url} is not a page of GitLab's PyPI API")
        index = located[0].rstrip("/")
        names = [entry.get("name") for entry in entries]
        links = [
            Link(f"{index}/{name}", name)
            for name in names
            if isinstance(name, str) and valid_project_name(name)
        ]
        return Page(title="", links=tuple(links), kind="index", json=True)
    name = data.get("name")
    title = TITLE_PREFIX + normalize(encodable(name)) if isinstance(name, str) and name else ""
    links = []
    for entry in entries:
        url, filename = entry.get("url"), entry.get("filename")
        located = _locate(url, page_url, gitlab) if isinstance(url, str) else None
        if located is None or not isinstance(filename, str):
            continue
        path, fragment = located
        hashes, requires = entry.get("hashes"), entry.get("requires-python")
        if not fragment and isinstance(hashes, dict) and isinstance(hashes.get("sha256"), str):
            fragment = _requote("sha256=" + hashes["sha256"], _FRAGMENT_SAFE)
        attrs = (
            ((REQUIRES_PYTHON, encodable(requires)),)
            if isinstance(requires, str) and requires
            else ()
        )
        links.append(Link(path, encodable(filename), fragment, attrs))
    return Page(title=title, links=tuple(links), kind="project", json=True)


def sha256_of(fragment: str) -> str | None:
    """The lower-case hex of a "sha256=<64 hex>" fragment or attribute value, else None."""
    name, _, value = fragment.partition("=")
    value = value.lower()
    return value if name == "sha256" and len(value) == 64 and _HEX.fullmatch(value) else None
