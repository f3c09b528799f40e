"""Simple pages rendered for clients (GitLab's HTML template or PEP 691 JSON); which one to send."""

from __future__ import annotations

import html
import json
from typing import Any

from proxy.models import Link, Page, normalize, pep700_time, version_of
from proxy.pages import DATA_ATTR, JSON_TYPE, REQUIRES_PYTHON, TITLE_PREFIX, sha256_of

HTML_TYPE = "text/html; charset=utf-8"

# GitLab's json_format_requested?: any Accept item starting with one of these (section 2.1).
_JSON_ACCEPTS = (JSON_TYPE, "application/vnd.pypi.simple.latest+json")
# data-* attributes rendered as PEP 691 / 700 / 714 keys of a JSON file entry.
_JSON_KEYS = {
    "data-yanked": "yanked",
    "data-core-metadata": "core-metadata",
    "data-dist-info-metadata": "dist-info-metadata",
    "data-upload-time": "upload-time",
    "data-size": "size",
}


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
            f' {name}="{escape(value)}"' for name, value in link.attrs if DATA_ATTR.fullmatch(name)
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
        return normalize(page.title.removeprefix(TITLE_PREFIX))
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
            requires = next((v for k, v in link.attrs if k == REQUIRES_PYTHON), "")
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
            digest = sha256_of(value)
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
