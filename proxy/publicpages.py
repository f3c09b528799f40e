"""Public index pages (PEP 503 / 691) read for followed forwarding: the files they list."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from proxy.errors import PageError
from proxy.pages import (
    HREF_SPACE,
    JSON_TYPE,
    MAX_PAGE_BYTES,
    REQUIRES_PYTHON,
    encodable,
    html_anchors,
    sha256_of,
)


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


def _public_file(url: str, base: str, **fields: Any) -> PublicFile | None:
    try:
        parts = urlsplit(urljoin(base, url.strip(HREF_SPACE)))
    except ValueError:
        return None
    if parts.scheme not in ("http", "https"):
        return None
    filename = unquote(parts.path.rsplit("/", 1)[-1])
    sha256 = fields.pop("sha256", None) or sha256_of(parts.fragment)
    return PublicFile(parts._replace(fragment="").geturl(), filename, sha256, **fields)


def _public_html(body: bytes, page_url: str) -> tuple[PublicFile, ...]:
    href, anchors = html_anchors(body, "the public page")
    base = page_url
    with contextlib.suppress(ValueError):  # a malformed IPv6 literal
        base = urljoin(page_url, href)
    files = []
    for attrs in anchors:
        get = attrs.get
        metadata = get("data-core-metadata", get("data-dist-info-metadata"))
        found = _public_file(
            get("href") or "",
            base,
            requires_python=get(REQUIRES_PYTHON) or "",
            yanked=get("data-yanked"),
            metadata=None if metadata is None else (sha256_of(metadata) or ""),
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
            return encodable(value) if isinstance(value, str) else ""

        hashes, yanked = entry.get("hashes"), entry.get("yanked")
        metadata = entry.get("core-metadata", entry.get("dist-info-metadata"))
        digest = hashes.get("sha256") if isinstance(hashes, dict) else None
        size = entry.get("size")
        found = _public_file(
            entry["url"],
            page_url,
            sha256=sha256_of(f"sha256={digest}") if isinstance(digest, str) else None,
            requires_python=text("requires-python"),
            yanked=encodable(yanked)
            if isinstance(yanked, str)
            else ("" if yanked is True else None),
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
        return sha256_of(f"sha256={digest}") or "" if isinstance(digest, str) else ""
    return "" if value is True else None
