"""Simple-page codec (the only lxml import): parse GitLab's pages, render them for clients."""

from __future__ import annotations

import contextlib
import html
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, unquote, urljoin, urlsplit

from lxml import etree

from proxy.errors import PageError
from proxy.models import (
    Link,
    Page,
    normalize,
    pep700_time,
    valid_project_name,
    valid_scope_id,
    version_of,
)

MAX_PAGE_BYTES = 20 * 1024 * 1024
"""Upstream pages above this size are refused with PageError."""
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "text/html; charset=utf-8"

# GitLab's json_format_requested?: any Accept item starting with one of these (section 2.1).
_JSON_ACCEPTS = (JSON_TYPE, "application/vnd.pypi.simple.latest+json")
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
# HTML: a data-* name is lower-case and XML-compatible; anything else is never echoed.
_DATA_ATTR = re.compile(r"data-[a-z0-9_][a-z0-9_.:-]*")
_HREF_SPACE = " \t\n\r\f"
_TITLE_PREFIX = "Links for "
_REQUIRES_PYTHON = "data-requires-python"
_HEX = re.compile(r"[0-9a-f]{64}")
# data-* attributes rendered as PEP 691 / 700 / 714 keys of a JSON file entry.
_JSON_KEYS = {
    "data-yanked": "yanked",
    "data-core-metadata": "core-metadata",
    "data-dist-info-metadata": "dist-info-metadata",
    "data-upload-time": "upload-time",
    "data-size": "size",
}


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
    href = href.strip(_HREF_SPACE)
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


def _parse_html(
    body: bytes, page_url: str, gitlab: _Origin, kind: Literal["index", "project"]
) -> Page:
    root = _root(body, "GitLab's page")
    base = page_url
    element = next(root.iter("base"), None)  # pip, like browsers, honours <base href>
    href = (element.get("href") or "").strip(_HREF_SPACE) if element is not None else ""
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
            (n, str(v)) for n, v in anchor.items() if isinstance(n, str) and _DATA_ATTR.fullmatch(n)
        )
        links.append(Link(located[0], _text(anchor), located[1], attrs))
    return Page(title=title, links=tuple(links), kind=kind, json=False)


def _clean(value: str) -> str:
    # json.loads turns "\ud800" into a lone surrogate, which cannot be encoded again.
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
    title = _TITLE_PREFIX + normalize(_clean(name)) if isinstance(name, str) and name else ""
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
            ((_REQUIRES_PYTHON, _clean(requires)),)
            if isinstance(requires, str) and requires
            else ()
        )
        links.append(Link(path, _clean(filename), fragment, attrs))
    return Page(title=title, links=tuple(links), kind="project", json=True)


@dataclass(frozen=True, slots=True)
class PublicFile:
    """One file of a public index's project page (PEP 503 / 691), as that index gave it."""

    url: str
    """Absolute, without its fragment."""
    filename: str
    sha256: str | None
    requires_python: str = ""
    yanked: str | None = None
    """PEP 592: None when not yanked, else the reason ("" when none was given)."""
    metadata: str | None = None
    """PEP 658/714: None when not offered, else the file's sha256 ("" when not given)."""
    upload_time: str = ""
    """PEP 700: ISO 8601 as the index wrote it."""
    size: int | None = None


def parse_public(body: bytes, *, content_type: str, page_url: str) -> tuple[PublicFile, ...]:
    """The files a public index's project page lists, links resolved against page_url."""
    if len(body) > MAX_PAGE_BYTES:
        raise PageError(f"the public page is larger than {MAX_PAGE_BYTES} bytes")
    if content_type.strip().lower().startswith(JSON_TYPE):
        return _public_json(body, page_url)
    return _public_html(body, page_url)


def _sha256_of(fragment: str) -> str | None:
    name, _, value = fragment.partition("=")
    value = value.lower()
    return value if name == "sha256" and len(value) == 64 and _HEX.fullmatch(value) else None


def _public_file(url: str, base: str, **fields: Any) -> PublicFile | None:
    try:
        parts = urlsplit(urljoin(base, url.strip(_HREF_SPACE)))
    except ValueError:
        return None
    if parts.scheme not in ("http", "https"):
        return None
    filename = unquote(parts.path.rsplit("/", 1)[-1])
    sha256 = fields.pop("sha256", None) or _sha256_of(parts.fragment)
    return PublicFile(parts._replace(fragment="").geturl(), filename, sha256, **fields)


def _public_html(body: bytes, page_url: str) -> tuple[PublicFile, ...]:
    root = _root(body, "the public page")
    element = next(root.iter("base"), None)
    base = page_url
    with contextlib.suppress(ValueError):  # a malformed IPv6 literal
        base = urljoin(page_url, element.get("href") or "") if element is not None else base
    files = []
    for anchor in root.iter("a"):
        get = anchor.get
        metadata = get("data-core-metadata", get("data-dist-info-metadata"))
        found = _public_file(
            get("href") or "",
            base,
            requires_python=get(_REQUIRES_PYTHON) or "",
            yanked=get("data-yanked"),
            metadata=None if metadata is None else (_sha256_of(metadata) or ""),
            upload_time=get("data-upload-time") or "",
        )
        if found is not None:
            files.append(found)
    return tuple(files)


def _public_json(body: bytes, page_url: str) -> tuple[PublicFile, ...]:
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PageError(f"the public page is not JSON: {exc}") from exc
    entries = data.get("files") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise PageError("the public JSON page has no list of files")
    files = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            continue

        def text(key: str, entry: dict[str, Any] = entry) -> str:
            value = entry.get(key)
            return _clean(value) if isinstance(value, str) else ""

        hashes, yanked = entry.get("hashes"), entry.get("yanked")
        metadata = entry.get("core-metadata", entry.get("dist-info-metadata"))
        digest = hashes.get("sha256") if isinstance(hashes, dict) else None
        size = entry.get("size")
        found = _public_file(
            entry["url"],
            page_url,
            sha256=_sha256_of(f"sha256={digest}") if isinstance(digest, str) else None,
            requires_python=text("requires-python"),
            yanked=_clean(yanked) if isinstance(yanked, str) else ("" if yanked is True else None),
            metadata=_metadata_hash(metadata),
            upload_time=text("upload-time"),
            size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        )
        if found is not None:
            files.append(found)
    return tuple(files)


def _metadata_hash(value: object) -> str | None:
    """PEP 714 "core-metadata": false/absent None, true "", {"sha256": hex} the hex."""
    if isinstance(value, dict):
        digest = value.get("sha256")
        return _sha256_of(f"sha256={digest}") or "" if isinstance(digest, str) else ""
    return "" if value is True else None


def render(page: Page, *, base_url: str) -> tuple[bytes, str]:
    """(body, content type) of `page` with each href at base_url + its path (+ fragment).

    HTML for pages GitLab sent as HTML, in the shape of GitLab's template; PEP 691 JSON
    for pages it sent as JSON.
    """
    base = base_url.rstrip("/")
    if page.json:
        return _render_json(page, base), JSON_TYPE
    return _render_html(page, base), HTML_TYPE


def _href(base: str, link: Link) -> str:
    return base + link.path + ("#" + link.fragment if link.fragment else "")


def _render_html(page: Page, base: str) -> bytes:
    escape = html.escape
    anchors = []
    for link in page.links:
        attrs = "".join(
            f' {name}="{escape(value)}"' for name, value in link.attrs if _DATA_ATTR.fullmatch(name)
        )
        anchors.append(f'<a href="{escape(_href(base, link))}"{attrs}>{escape(link.text)}</a>')
    title = escape(page.title)
    links = "".join(f"            {anchor}\n" for anchor in anchors) or "            \n"
    return (
        "<!DOCTYPE html>\n"
        "        <html>\n"
        "          <head>\n"
        f"            <title>{title}</title>\n"
        "          </head>\n"
        "          <body>\n"
        f"            <h1>{title}</h1>\n"
        f"{links}"
        "          </body>\n"
        "        </html>\n"
    ).encode("utf-8", "replace")


def _project_name(page: Page) -> str:
    """PEP 691 "name": from the title "Links for X", else the first file's name part."""
    if page.title:
        return normalize(page.title.removeprefix(_TITLE_PREFIX))
    if not page.links:
        return ""
    first = page.links[0].text
    # A wheel's name ends at its first "-"; an sdist's at its last ("name-1.0.tar.gz").
    return normalize(first.split("-", 1)[0] if first.endswith(".whl") else first.rsplit("-", 1)[0])


def _render_json(page: Page, base: str) -> bytes:
    meta = {"api-version": "1.0"}
    document: dict[str, Any]
    if page.kind == "index":
        document = {"meta": meta, "projects": [{"name": link.text} for link in page.links]}
    else:
        files = []
        for link in page.links:
            algorithm, _, digest = link.fragment.partition("=")
            entry: dict[str, Any] = {
                "filename": link.text,
                "url": _href(base, link),
                "hashes": {"sha256": digest} if algorithm == "sha256" and digest else {},
            }
            requires = next((v for k, v in link.attrs if k == _REQUIRES_PYTHON), "")
            if requires:
                entry["requires-python"] = requires
            entry.update(_json_extras(link.attrs))
            files.append(entry)
        document = {"meta": meta, "name": _project_name(page), "files": files}
        # -- PEP 700 (api-version 1.1) --
        versions = _versions(page)
        if versions is not None and all("size" in entry for entry in files):
            document["meta"] = {"api-version": "1.1"}
            document["versions"] = versions
        # -- end PEP 700 --
    return json.dumps(document, separators=(",", ":")).encode("ascii")


def _versions(page: Page) -> list[str] | None:
    """PEP 700 "versions": every file's version (normalized, each once, in page order), or
    None when a file's version cannot be told from its name ("All of the files listed in
    the files key MUST be associated with one of the versions")."""
    versions: dict[str, None] = {}
    for link in page.links:
        version = version_of(link.text)
        if version is None:
            return None
        versions[version] = None
    return list(versions)


def _json_extras(attrs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """PEP 592 yanked, PEP 714 core metadata and PEP 700 keys from a link's data-* attributes."""
    extras: dict[str, Any] = {}
    for name, value in attrs:
        key = _JSON_KEYS.get(name)
        if key == "yanked":
            extras[key] = value or True
        elif key in ("core-metadata", "dist-info-metadata"):
            digest = _sha256_of(value)
            extras[key] = {"sha256": digest} if digest else value == "true"
        elif key == "size" and value.isdigit():
            extras[key] = int(value)
        elif key == "upload-time" and (when := pep700_time(value)) is not None:
            extras[key] = when  # "in the format yyyy-mm-ddThh:mm:ss.ffffffZ"
    return extras


def wants_json(accept: str) -> bool:
    """GitLab's rule: any Accept item starts with the v1+json or latest+json type.

    q-values are ignored (even q=0) and matching is case-sensitive, as in GitLab;
    whitespace around items is skipped.
    """
    return any(item.strip(" \t").startswith(_JSON_ACCEPTS) for item in accept.split(","))
