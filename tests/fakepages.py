"""GitLab's simple-index pages: the HTML template, PEP 691 JSON, and ETag revalidation."""

from __future__ import annotations

import hashlib
import json
from email.message import Message

from tests.fakehttp import Response

_PAGE_CACHE = "max-age=0, private, must-revalidate"  # Rack::ETag/ConditionalGet default
_JSON_TYPES = ("application/vnd.pypi.simple.v1+json", "application/vnd.pypi.simple.latest+json")


def _escape(text: str) -> str:
    # ERB::Util.html_escape: & < > " '  ->  &amp; &lt; &gt; &quot; &#39;
    for raw, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;")):
        text = text.replace(raw, entity)
    return text.replace("'", "&#39;")


def html(title: str, links: list[str]) -> bytes:
    """The HTML page titled "Links for <title>" listing the given anchors."""
    # simple_presenter_base.rb: a <<-HTML heredoc (indentation kept) with .lstrip.
    return (
        "<!DOCTYPE html>\n"
        "        <html>\n"
        "          <head>\n"
        f"            <title>Links for {_escape(title)}</title>\n"
        "          </head>\n"
        "          <body>\n"
        f"            <h1>Links for {_escape(title)}</h1>\n"
        f"            {''.join(links)}\n"
        "          </body>\n"
        "        </html>\n"
    ).encode()


def anchor(url: str, requires_python: str, text: str) -> str:
    """One <a> of an HTML page."""
    # data-requires-python "always present" and escaped; the anchor text is not escaped.
    return f'<a href="{url}" data-requires-python="{_escape(requires_python)}">{text}</a>'


def json_file(filename: str, url: str, sha256: str, requires_python: str) -> dict[str, object]:
    """One entry of a JSON page's "files"."""
    # PEP 691 file entry; "requires-python is included only when present".
    entry: dict[str, object] = {"filename": filename, "url": url, "hashes": {"sha256": sha256}}
    if requires_python:
        entry["requires-python"] = requires_python
    return entry


def wants_json(accept: str) -> bool:
    """Whether an Accept header names a PEP 691 JSON type (quality values are ignored)."""
    return any(item.strip().startswith(_JSON_TYPES) for item in accept.split(","))


def page(request: Message, content: bytes | dict[str, object], *, vary: bool) -> Response:
    """A 200 with an HTML body or a JSON one (`content` plus "meta"), or 304 on If-None-Match."""
    if isinstance(content, dict):
        body = json.dumps({"meta": {"api-version": "1.0"}, **content}, separators=(",", ":"))
        headers = {"Content-Type": "application/vnd.pypi.simple.v1+json; charset=utf-8"}
        content = body.encode()
    else:
        headers = {"Content-Type": "text/html; charset=utf-8"}
    if vary:
        headers["Vary"] = "Accept"  # present_pypi_html_with_vary / present_simple_json
    headers["ETag"] = etag = f'W/"{hashlib.md5(content).hexdigest()}"'
    headers["Cache-Control"] = _PAGE_CACHE
    candidates = [tag.strip() for tag in request.get("If-None-Match", "").split(",")]
    if etag in candidates or "*" in candidates:
        del headers["Content-Type"]
        return Response(304, b"", headers)
    return Response(200, content, headers)
