"""Pages rendered for clients: GitLab's template and PEP 691 JSON, and which one a client gets."""

from __future__ import annotations

import json

import pytest

from proxy.models import Link, Page
from proxy.pagerender import HTML_TYPE, render, wants_json
from proxy.pages import JSON_TYPE
from tests.gitlabpages import (
    API,
    GITLAB,
    GITLAB_EMPTY_PAGE,
    GITLAB_JSON_PACKAGE,
    GITLAB_JSON_PACKAGE_PAGE,
    GITLAB_PACKAGE,
    PROXY,
    SHA_SDIST,
    SHA_WHL,
)


def test_entities_are_escaped_again_on_render() -> None:
    """Rendering escapes & < > " ' in attributes, so the page reads back the same."""
    link = Link(f"{API}/simple/x", "a<b>&c", "", (("data-requires-python", "&gt;=3.8 \"'<"),))
    body, _ = render(Page("T&<>", (link,)), base_url=PROXY)
    assert b'data-requires-python="&amp;gt;=3.8 &quot;&#x27;&lt;"' in body
    assert b">a&lt;b&gt;&amp;c</a>" in body
    assert b"<title>T&amp;&lt;&gt;</title>" in body


def test_render_html_has_gitlabs_shape() -> None:
    """HTML renders as GitLab's template, one anchor a line, hrefs at the proxy."""
    body, content_type = render(GITLAB_PACKAGE, base_url="https://proxy.example.com/pypi")
    assert content_type == HTML_TYPE == "text/html; charset=utf-8"
    assert body == (
        b"<!DOCTYPE html>\n"
        b"        <html>\n"
        b"          <head>\n"
        b"            <title>Links for my-pkg</title>\n"
        b"          </head>\n"
        b"          <body>\n"
        b"            <h1>Links for my-pkg</h1>\n"
        b'            <a href="https://proxy.example.com/pypi/api/v4/projects/42/packages/pypi/'
        b"files/a48cb22fe1d88b36a218da85a7e70278fe8a8e99e66d0569af1c9b442016612d/"
        b"my_pkg-1.0-py3-none-any.whl#sha256="
        b'a48cb22fe1d88b36a218da85a7e70278fe8a8e99e66d0569af1c9b442016612d" '
        b'data-requires-python="&gt;=3.8">my_pkg-1.0-py3-none-any.whl</a>\n'
        b'            <a href="https://proxy.example.com/pypi/api/v4/projects/42/packages/pypi/'
        b"files/65f274f555082dce683fa341e3b75521cfbaae4cffd988ecafa536ed48f7747a/"
        b"my_pkg-1.0+local.tar.gz#sha256="
        b'65f274f555082dce683fa341e3b75521cfbaae4cffd988ecafa536ed48f7747a" '
        b'data-requires-python="">my_pkg-1.0+local.tar.gz</a>\n'
        b"          </body>\n"
        b"        </html>\n"
    )


def test_render_empty_html_page_matches_gitlab() -> None:
    """A page without links renders exactly as GitLab's empty index."""
    body, _ = render(Page("Links for My Project", kind="index"), base_url=PROXY)
    assert body == GITLAB_EMPTY_PAGE


def test_render_json_package_page() -> None:
    """JSON renders PEP 691 with hashes from the fragment and non-empty requires-python."""
    body, content_type = render(
        Page(
            "Links for my-pkg",
            (*GITLAB_PACKAGE.links, Link(f"{API}/files/x.whl", "x.whl", "sha256=")),
            json=True,
        ),
        base_url=PROXY,
    )
    assert content_type == JSON_TYPE
    whl_url = f"{PROXY}{API}/files/{SHA_WHL}/my_pkg-1.0-py3-none-any.whl#sha256={SHA_WHL}"
    sdist_url = f"{PROXY}{API}/files/{SHA_SDIST}/my_pkg-1.0+local.tar.gz#sha256={SHA_SDIST}"
    assert json.loads(body) == {
        "meta": {"api-version": "1.0"},
        "name": "my-pkg",
        "files": [
            {
                "filename": "my_pkg-1.0-py3-none-any.whl",
                "url": whl_url,
                "hashes": {"sha256": SHA_WHL},
                "requires-python": ">=3.8",
            },
            {
                "filename": "my_pkg-1.0+local.tar.gz",
                "url": sdist_url,
                "hashes": {"sha256": SHA_SDIST},
            },
            {"filename": "x.whl", "url": f"{PROXY}{API}/files/x.whl#sha256=", "hashes": {}},
        ],
    }


def test_render_json_with_gitlabs_base_is_gitlabs_bytes() -> None:
    """Rendered against GitLab's own URL, a JSON page is byte for byte what GitLab sent."""
    assert render(GITLAB_JSON_PACKAGE, base_url=GITLAB) == (GITLAB_JSON_PACKAGE_PAGE, JSON_TYPE)


def test_render_json_index_page() -> None:
    """A JSON index renders one {"name"} per link."""
    page = Page(
        "", (Link(f"{API}/simple/a", "a"), Link(f"{API}/simple/b", "b")), kind="index", json=True
    )
    body, content_type = render(page, base_url=PROXY)
    assert (content_type, body) == (
        JSON_TYPE,
        b'{"meta":{"api-version":"1.0"},"projects":[{"name":"a"},{"name":"b"}]}',
    )


@pytest.mark.parametrize(
    ("title", "first", "name"),
    [
        ("Links for My_Pkg", "x-1.0.tar.gz", "my-pkg"),
        ("", "My_Pkg-1.0-py3-none-any.whl", "my-pkg"),
        ("", "my.pkg-name-1.0.tar.gz", "my-pkg-name"),
        ("", None, ""),
    ],
)
def test_render_json_name_comes_from_title_or_first_file(
    title: str, first: str | None, name: str
) -> None:
    """The JSON "name" is the normalized "Links for X", else the first file's project part."""
    links = (Link(f"{API}/files/{first}", first),) if first else ()
    body, _ = render(Page(title, links, json=True), base_url=PROXY)
    assert json.loads(body)["name"] == name


# -- content negotiation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (
            "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1,"
            " text/html; q=0.01",
            True,
        ),
        ("application/vnd.pypi.simple.v1+json, */*;q=0.1", True),
        ("text/html, application/vnd.pypi.simple.latest+json", True),
        ("application/vnd.pypi.simple.v1+json;q=0", True),
        ("application/vnd.pypi.simple.latest+json", True),
        ("text/html", False),
        ("application/json", False),
        ("application/vnd.pypi.simple.v1+html", False),
        ("Application/vnd.pypi.simple.v1+json", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_wants_json_follows_gitlab(accept: str, expected: bool) -> None:
    """JSON when any item starts with the v1/latest JSON type, ignoring q, case-sensitive."""
    assert wants_json(accept) is expected


# The Accept headers real clients send (design.md section 4; pip 26, pdm via unearth, uv,
# poetry's HTTP repositories), curl's default and a browser's.
CLIENT_ACCEPTS = {
    "pip": "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1,"
    " text/html; q=0.01",
    "uv": "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2,"
    " text/html;q=0.01",
    "poetry": "application/vnd.pypi.simple.v1+json, */*;q=0.1",
    "pdm": "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1,"
    " text/html; q=0.01",
    "curl": "*/*",
    "browser": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
}


@pytest.mark.parametrize(
    ("client", "representation"),
    [
        ("pip", "json"),
        ("uv", "json"),
        ("poetry", "json"),
        ("pdm", "json"),
        ("curl", "html"),
        ("browser", "html"),
    ],
)
def test_each_client_gets_its_representation(client: str, representation: str) -> None:
    """Resolvers that list the JSON type get JSON; curl and browsers get HTML."""
    assert ("json" if wants_json(CLIENT_ACCEPTS[client]) else "html") == representation
