"""GitLab's pages parsed: its HTML and PEP 691 JSON in, and read back after rendering."""

from __future__ import annotations

import contextlib
import html
import json
from html.parser import HTMLParser
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import PageError
from proxy.models import Link, Page
from proxy.pagerender import render
from proxy.pages import MAX_PAGE_BYTES, parse
from tests.gitlabpages import (
    API,
    GITLAB,
    GITLAB_EMPTY_PAGE,
    GITLAB_INDEX_PAGE,
    GITLAB_JSON_PACKAGE,
    GITLAB_JSON_PACKAGE_PAGE,
    GITLAB_PACKAGE,
    GITLAB_PACKAGE_PAGE,
    HTML,
    INDEX_URL,
    JSON,
    PACKAGE_URL,
    PROXY,
    SHA_WHL,
)


def page_with(*anchors: str, page_url: str = PACKAGE_URL, upstream: str = GITLAB) -> Page:
    """Parse an HTML page holding `anchors` as GitLab would have sent it."""
    body = "<!DOCTYPE html><html><head><title>t</title></head><body>" + "".join(anchors)
    return parse(
        body.encode(), content_type=HTML, page_url=page_url, upstream_url=upstream, kind="project"
    )


def parse_json(document: object, *, kind: str = "project", page_url: str = PACKAGE_URL) -> Page:
    """Parse `document` as a PEP 691 page from GitLab."""
    return parse(
        json.dumps(document).encode(),
        content_type=JSON,
        page_url=page_url,
        upstream_url=GITLAB,
        kind="index" if kind == "index" else "project",
    )


def reparse(page: Page, base_url: str = PROXY, page_path: str = f"{API}/simple/my-pkg") -> Page:
    """Render `page` for clients and parse it back as if the proxy were GitLab."""
    body, content_type = render(page, base_url=base_url)
    return parse(
        body,
        content_type=content_type,
        page_url=base_url + page_path,
        upstream_url=base_url,
        kind=page.kind,
    )


class _Anchors(HTMLParser):
    """The stdlib's reading of a rendered page: every anchor's href."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href"))


def rendered_hrefs(body: bytes) -> list[str | None]:
    """Every href in a rendered HTML page, read by a parser other than lxml."""
    reader = _Anchors()
    reader.feed(body.decode())
    reader.close()
    return reader.hrefs


# -- parsing GitLab's HTML --------------------------------------------------------------


def test_gitlab_package_page_parses_to_its_links() -> None:
    """GitLab's exact package page gives proxy-relative paths, text, fragments and data-*."""
    page = parse(
        GITLAB_PACKAGE_PAGE,
        content_type=HTML,
        page_url=PACKAGE_URL,
        upstream_url=GITLAB,
        kind="project",
    )
    assert page == GITLAB_PACKAGE


def test_gitlab_index_page_keeps_every_anchor() -> None:
    """The index keeps its display-name title and both per-version anchors in order."""
    page = parse(
        GITLAB_INDEX_PAGE, content_type=HTML, page_url=INDEX_URL, upstream_url=GITLAB, kind="index"
    )
    assert page == Page(
        title="Links for My Project",
        links=(
            Link(
                f"{API}/simple/my-package",
                "My_Package",
                "",
                (("data-requires-python", ">=2.7, !=3.0"),),
            ),
            Link(f"{API}/simple/my-package", "My_Package", "", (("data-requires-python", ""),)),
        ),
        kind="index",
    )


def test_gitlab_empty_index_has_no_links() -> None:
    """An empty project's index (12 spaces where the links go) parses to no links."""
    page = parse(
        GITLAB_EMPTY_PAGE, content_type=HTML, page_url=INDEX_URL, upstream_url=GITLAB, kind="index"
    )
    assert page == Page(title="Links for My Project", kind="index")


@pytest.mark.parametrize(
    ("href", "path"),
    [
        (
            f"{GITLAB}/api/v4/groups/7/-/packages/pypi/files/{SHA_WHL}/a-1.0-py3-none-any.whl",
            f"/api/v4/groups/7/-/packages/pypi/files/{SHA_WHL}/a-1.0-py3-none-any.whl",
        ),
        (
            f"{GITLAB}/api/v4/groups/7/-/packages/pypi/simple/my-package",
            "/api/v4/groups/7/-/packages/pypi/simple/my-package",
        ),
        (
            f"{GITLAB}/api/v4/projects/acme%2Ftools/packages/pypi/simple/x",
            "/api/v4/projects/acme%2Ftools/packages/pypi/simple/x",
        ),
        (
            f"{GITLAB}/api/v4/groups/acme%2fsub/-/packages/pypi/simple/x",
            "/api/v4/groups/acme%2fsub/-/packages/pypi/simple/x",
        ),
        (
            f"{GITLAB}{API}/files/{SHA_WHL}/a-1.0+cpu.1-py3-none-any.whl",
            f"{API}/files/{SHA_WHL}/a-1.0+cpu.1-py3-none-any.whl",
        ),
        (f"{GITLAB}{API}/simple/x?private_token=secret", f"{API}/simple/x"),
        (f"{GITLAB}{API}/simple", f"{API}/simple"),
        (f"{GITLAB}{API}/simple/", f"{API}/simple/"),
    ],
    ids=[
        "group-file",
        "group-simple",
        "encoded-id",
        "encoded-id-lower",
        "plus",
        "query",
        "index",
        "slash",
    ],
)
def test_kept_link_path_is_gitlab_path_below_root(href: str, path: str) -> None:
    """A link into a PyPI API keeps its path below the root, still encoded, without query."""
    (link,) = page_with(f'<a href="{href}">x</a>').links
    assert link.path == path


@pytest.mark.parametrize(
    "href",
    [
        f"https://gitlab.example.com:443/gitlab{API}/simple/x",
        f"HTTPS://GitLab.Example.COM/gitlab{API}/simple/x",
        f"/gitlab{API}/simple/x",
        "x",
        "../simple/x",
        "./x",
        f"//gitlab.example.com/gitlab{API}/simple/x",
        f"  {GITLAB}{API}/simple/x\n",
    ],
    ids=[
        "default-port",
        "case",
        "root-relative",
        "relative",
        "dotdot",
        "dot",
        "scheme-relative",
        "spaces",
    ],
)
def test_equivalent_hrefs_lead_to_the_same_path(href: str) -> None:
    """Default ports, host case, relative and scheme-relative hrefs resolve to one path."""
    (link,) = page_with(f'<a href="{href}">x</a>', page_url=f"{GITLAB}{API}/simple/my-pkg").links
    assert link.path == f"{API}/simple/x"


def test_upstream_with_default_port_matches_links_without() -> None:
    """An upstream URL spelled with :443 still matches GitLab's port-less links."""
    (link,) = page_with(
        f'<a href="{GITLAB}{API}/simple/x">x</a>', upstream="https://gitlab.example.com:443/gitlab/"
    ).links
    assert link.path == f"{API}/simple/x"


def test_upstream_without_relative_root() -> None:
    """With no relative root, GitLab's paths start right after the host."""
    (link,) = page_with(
        f'<a href="https://gitlab.example.com{API}/simple/x">x</a>',
        page_url=f"https://gitlab.example.com{API}/simple/y",
        upstream="https://gitlab.example.com",
    ).links
    assert link.path == f"{API}/simple/x"


def test_base_element_resolves_relative_hrefs() -> None:
    """A <base href> changes what relative hrefs resolve against, as in pip."""
    page = page_with(f'<base href="{GITLAB}{API}/files/{SHA_WHL}/">', '<a href="a.whl">a</a>')
    assert [link.path for link in page.links] == [f"{API}/files/{SHA_WHL}/a.whl"]


@pytest.mark.parametrize(
    "anchor",
    [
        '<a href="https://evil.example.com/gitlab/api/v4/projects/42/packages/pypi/simple/x">x</a>',
        '<a href="https://gitlab.example.com.evil.com/gitlab/api/v4/projects/42/packages/pypi/simple/x">x</a>',
        '<a href="//evil.example.com/gitlab/api/v4/projects/42/packages/pypi/simple/x">x</a>',
        '<a href="https://gitlab.example.com:8443/gitlab/api/v4/projects/42/packages/pypi/simple/x">x</a>',
        '<a href="http://gitlab.example.com/gitlab/api/v4/projects/42/packages/pypi/simple/x">x</a>',
        '<a href="https://gitlab.example.com/api/v4/projects/42/packages/pypi/simple/x">x</a>',
        '<a href="https://gitlab.example.com/gitlabx/api/v4/projects/42/packages/pypi/simple/x">x</a>',
        '<a href="https://gitlab.example.com:99999/gitlab/api/v4/projects/42/packages/pypi/simple/x">x</a>',
        '<a href="https://[::1/gitlab/api/v4/projects/42/packages/pypi/simple/x">x</a>',
        '<a href="javascript:alert(1)">x</a>',
        '<a href="data:text/html,<script>alert(1)</script>">x</a>',
        '<a href="mailto:a@example.com">x</a>',
        '<a href="/gitlab/api/v4/projects/42/issues">x</a>',
        '<a href="/gitlab/api/v4/projects/42/packages/pypi">x</a>',
        '<a href="/gitlab/api/v4/projects/42/packages/pypi/simplex">x</a>',
        '<a href="/gitlab/api/v4/groups/7/packages/pypi/simple/x">x</a>',
        '<a href="/gitlab/api/v4/projects/a%2F..%2Fb/packages/pypi/simple/x">x</a>',
        '<a href="/gitlab/api/v4/projects/42/packages/pypi/files/%2e%2e/x">x</a>',
        '<a href="/gitlab/api/v4/projects/42/packages/pypi/files/%2E/x">x</a>',
        '<a href="/gitlab/api/v4/projects/42/packages/npm/simple/x">x</a>',
        '<a href="/gitlab/api/v4/projects/42/packages/pypi/simple/../../../../users">x</a>',
        '<a href="">x</a>',
        '<a href="   ">x</a>',
        "<a>x</a>",
        '<a name="top">x</a>',
    ],
)
def test_links_outside_gitlabs_pypi_api_are_dropped(anchor: str) -> None:
    """Other hosts, ports, schemes, paths and missing hrefs never survive parsing."""
    assert page_with(anchor).links == ()


def test_links_to_gitlab_ee_forward_route_are_kept() -> None:
    """A link through GitLab EE's forward/ route survives parsing (forwarding rewrites it)."""
    path = "/api/v4/projects/42/packages/pypi/forward/x/files.example/p/x-1.whl"
    (link,) = page_with(f'<a href="/gitlab{path}#sha256={"a" * 64}">x-1.whl</a>').links
    assert (link.path, link.sha256) == (path, "a" * 64)


def test_fragment_is_kept_without_the_hash() -> None:
    """The href's fragment becomes Link.fragment, e.g. the sha256 pip checks."""
    (link,) = page_with(
        f'<a href="{GITLAB}{API}/files/{SHA_WHL}/a.whl#sha256={SHA_WHL}">a</a>'
    ).links
    assert (link.fragment, link.sha256) == (f"sha256={SHA_WHL}", SHA_WHL)


def test_unsafe_characters_in_href_are_percent_encoded() -> None:
    """Spaces, quotes and non-ASCII in an href are percent-encoded; valid escapes stay."""
    (link,) = page_with(f'<a href="{GITLAB}{API}/simple/a b&quot;é%2F%zz#x y">x</a>').links
    assert (link.path, link.fragment) == (f"{API}/simple/a%20b%22%C3%A9%2F%25zz", "x%20y")


def test_data_attributes_are_kept_in_source_order_lower_cased() -> None:
    """Every data-* attribute survives in order with a lower-cased name; others are dropped."""
    (link,) = page_with(
        f'<a class="c" data-yanked="" href="{GITLAB}{API}/simple/x" DATA-Requires-Python=">=3"'
        ' rel="internal" data-dist-info-metadata="sha256=ab">x</a>'
    ).links
    assert link.attrs == (
        ("data-yanked", ""),
        ("data-requires-python", ">=3"),
        ("data-dist-info-metadata", "sha256=ab"),
    )


def test_entities_in_attributes_are_unescaped_once() -> None:
    """An attribute's entities are decoded exactly once: &amp;gt; stays the text &gt;."""
    (link,) = page_with(
        f'<a href="{GITLAB}{API}/simple/x" data-requires-python="&amp;gt;=3.8 &quot;&#39;">x</a>'
    ).links
    assert link.attrs == (("data-requires-python", "&gt;=3.8 \"'"),)


def test_anchor_text_of_nested_markup_is_its_text() -> None:
    """Anchor text is the text of everything inside the anchor, stripped."""
    (link,) = page_with(f'<a href="{GITLAB}{API}/simple/x">\n  <b>my</b>-<i>pkg</i> </a>').links
    assert link.text == "my-pkg"


def test_title_falls_back_to_the_h1() -> None:
    """Without a <title>, the page title is the first <h1>'s text."""
    body = b"<html><body><h1>Links for x</h1></body></html>"
    page = parse(body, content_type=HTML, page_url=PACKAGE_URL, upstream_url=GITLAB, kind="project")
    assert page.title == "Links for x"


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00<a href='x'>\x00</a>",
        b"\xff\xfe<title>\xc3</title><a href='\xe9'>\xe9</a>",
        b"<a href='x' data-a='" + b"v" * 11_000_000 + b"'>x</a>",
        b"<a>" + b"<div><a href='x'>" * 5_000,
        b"<?xml version='1.0' encoding='latin-1'?>"
        b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><a href='x'>&e;</a>",
        b"<a href='x'>&bogus; &#0; &#x110000; &#xD800;</a>",
        b"</a></a><a href=<a href='x'>",
        b"garbage",
    ],
    ids=[
        "nul",
        "not-utf8",
        "huge-attribute",
        "nested",
        "external-entity",
        "bad-entities",
        "tags",
        "text",
    ],
)
def test_malformed_html_parses_without_raising(body: bytes) -> None:
    """Malformed, hostile or non-UTF-8 HTML still parses to a page, never reading files."""
    page = parse(body, content_type=HTML, page_url=PACKAGE_URL, upstream_url=GITLAB, kind="project")
    assert all(link.path.startswith(API) for link in page.links)
    assert all("root:" not in link.text for link in page.links)


@pytest.mark.parametrize("body", [b"", b"  \n\t "], ids=["empty", "blank"])
def test_empty_page_is_a_page_error(body: bytes) -> None:
    """An empty body is not a page GitLab would send, so it is refused."""
    with pytest.raises(PageError):
        parse(body, content_type=HTML, page_url=PACKAGE_URL, upstream_url=GITLAB, kind="project")


@pytest.mark.parametrize("content_type", [HTML, JSON])
def test_oversized_page_is_a_page_error(content_type: str) -> None:
    """A page above MAX_PAGE_BYTES is refused before it is parsed."""
    with pytest.raises(PageError, match="larger"):
        parse(
            b" " * (MAX_PAGE_BYTES + 1),
            content_type=content_type,
            page_url=PACKAGE_URL,
            upstream_url=GITLAB,
            kind="project",
        )


# -- parsing PEP 691 JSON ---------------------------------------------------------------


def test_json_package_page_parses_to_links() -> None:
    """GitLab's JSON files become links with fragment, filename text and requires-python."""
    page = parse(
        GITLAB_JSON_PACKAGE_PAGE,
        content_type=JSON,
        page_url=PACKAGE_URL,
        upstream_url=GITLAB,
        kind="project",
    )
    assert page == GITLAB_JSON_PACKAGE


def test_json_fragment_comes_from_hashes_when_the_url_has_none() -> None:
    """A JSON url without "#sha256=" gets its fragment from hashes.sha256."""
    (link,) = parse_json(
        {
            "name": "a",
            "files": [
                {
                    "filename": "a.whl",
                    "url": f"{GITLAB}{API}/files/a.whl",
                    "hashes": {"sha256": "ab"},
                }
            ],
        }
    ).links
    assert link.fragment == "sha256=ab"


def test_json_index_page_parses_to_project_links() -> None:
    """JSON index names become links below the index path the page came from."""
    document = {"meta": {"api-version": "1.0"}, "projects": [{"name": "a"}, {"name": "b-c"}]}
    page = parse_json(
        document, kind="index", page_url=f"{GITLAB}/api/v4/groups/7/-/packages/pypi/simple/"
    )
    group = "/api/v4/groups/7/-/packages/pypi/simple"
    assert page == Page(
        "", (Link(f"{group}/a", "a"), Link(f"{group}/b-c", "b-c")), kind="index", json=True
    )


def test_json_entries_that_cannot_be_links_are_dropped() -> None:
    """Files with foreign URLs, no filename or the wrong types are skipped, not fatal."""
    good = {"filename": "a.whl", "url": f"{GITLAB}{API}/files/{SHA_WHL}/a.whl", "hashes": {}}
    page = parse_json(
        {
            "name": "a",
            "files": [
                {"filename": "b.whl", "url": "https://evil.example.com/b.whl"},
                {"url": f"{GITLAB}{API}/files/{SHA_WHL}/c.whl"},
                {"filename": "d.whl", "url": 5},
                "e.whl",
                good,
            ],
        }
    )
    assert page.links == (Link(f"{API}/files/{SHA_WHL}/a.whl", "a.whl"),)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"not json", "project"),
        (b"[]", "project"),
        (b'{"name": "x"}', "project"),
        (b'{"files": {}}', "project"),
        (b'{"files": []}', "index"),
        (b"[" * 100_000 + b"]" * 100_000, "project"),
        (b'{"files": [], "name": "\xff"}', "project"),
        (b"", "project"),
    ],
    ids=["text", "list", "no-files", "files-object", "no-projects", "deep", "not-utf8", "empty"],
)
def test_malformed_json_is_a_page_error(body: bytes, kind: str) -> None:
    """JSON that is not a PEP 691 page of the expected kind raises PageError."""
    with pytest.raises(PageError):
        parse(
            body,
            content_type=JSON,
            page_url=INDEX_URL,
            upstream_url=GITLAB,
            kind="index" if kind == "index" else "project",
        )


def test_json_lone_surrogates_are_replaced() -> None:
    """A JSON escape of a lone surrogate cannot break rendering later."""
    page = parse(
        b'{"name": "a", "files": [{"filename": "\\ud800.whl", "url": "x.whl"}]}',
        content_type=JSON,
        page_url=f"{GITLAB}{API}/files/{SHA_WHL}/",
        upstream_url=GITLAB,
        kind="project",
    )
    assert page.links[0].text == "?.whl"
    assert render(page, base_url=PROXY)[0].startswith(b"{")


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("base_url", [PROXY, "https://proxy.example.com/pypi"])
def test_gitlab_html_page_round_trips(base_url: str) -> None:
    """GitLab's page, rendered by the proxy and read back, is the same page."""
    assert reparse(GITLAB_PACKAGE, base_url) == GITLAB_PACKAGE


def test_gitlab_json_page_round_trips() -> None:
    """GitLab's JSON page, rendered by the proxy and read back, is the same page."""
    assert reparse(GITLAB_JSON_PACKAGE) == GITLAB_JSON_PACKAGE


# -- properties -------------------------------------------------------------------------

PROPERTY = settings(max_examples=200, deadline=None)
SHA = st.text("0123456789abcdef", min_size=64, max_size=64)
SCOPE = st.one_of(
    st.integers(1, 10**9).map(lambda n: f"projects/{n}"),
    st.integers(1, 10**9).map(lambda n: f"groups/{n}/-"),
    st.sampled_from(["projects/acme%2Ftools", "groups/acme%2Fsub%2Fteam/-"]),
)
NAME = st.from_regex(r"[a-z0-9]{1,8}(-[a-z0-9]{1,8}){0,2}", fullmatch=True)  # normalized
FILENAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+!-]{0,40}", fullmatch=True)
# Visible characters: the HTML parser keeps them verbatim once escaped.
VISIBLE = st.characters(categories=("L", "N", "P", "S"))
TEXT = st.text(st.one_of(VISIBLE, st.just(" ")), max_size=30).map(str.strip)
VALUE = st.text(st.one_of(VISIBLE, st.just(" ")), max_size=30)
ATTRS = st.dictionaries(
    st.from_regex(r"data-[a-z][a-z0-9-]{0,15}", fullmatch=True), VALUE, max_size=3
).map(lambda d: tuple(d.items()))


@st.composite
def file_links(draw: st.DrawFn) -> Link:
    """A link to a file or a simple page in some project or group."""
    api = f"/api/v4/{draw(SCOPE)}/packages/pypi"
    if draw(st.booleans()):
        sha = draw(SHA)
        fragment = draw(st.sampled_from(["", f"sha256={sha}"]))
        return Link(f"{api}/files/{sha}/{draw(FILENAME)}", draw(TEXT), fragment, draw(ATTRS))
    return Link(f"{api}/simple/{draw(NAME)}", draw(TEXT), "", draw(ATTRS))


HTML_PAGES = st.builds(
    Page,
    title=TEXT,
    links=st.lists(file_links(), max_size=5).map(tuple),
    kind=st.sampled_from(["index", "project"]),
    json=st.just(False),
)


@st.composite
def json_package_pages(draw: st.DrawFn) -> Page:
    """A PEP 691 package page as GitLab's JSON parses: filename text, requires-python only."""
    links = []
    for _ in range(draw(st.integers(0, 4))):
        sha, filename = draw(SHA), draw(FILENAME)
        requires = draw(TEXT)
        attrs = (("data-requires-python", requires),) if requires else ()
        links.append(Link(f"{API}/files/{sha}/{filename}", filename, f"sha256={sha}", attrs))
    return Page(f"Links for {draw(NAME)}", tuple(links), json=True)


JSON_INDEXES = st.lists(NAME, max_size=5).map(
    lambda names: Page(
        "", tuple(Link(f"{API}/simple/{n}", n) for n in names), kind="index", json=True
    )
)

# Pieces of (mostly broken) HTML around anchors, hostile hrefs among them.
HREFS = st.sampled_from(
    [
        f"{GITLAB}{API}/simple/x",
        f"{GITLAB}{API}/files/{SHA_WHL}/a.whl#sha256={SHA_WHL}",
        f"/gitlab{API}/files/{SHA_WHL}/a b\"<>'.whl",
        "../files/x/y.whl",
        f"{GITLAB}{API}/simple/x/../../../../../../etc",
        f"{GITLAB}{API}/simple/%2e%2e/%2e%2e",
        "https://evil.example.com/x",
        "javascript:alert(1)",
        "data:text/html,x",
        "https://[::1",
        "https://gitlab.example.com:x/",
        "\\\\evil.example.com\\x",
    ]
)
PIECES = st.one_of(
    HREFS.map(lambda h: f'<a href="{h}"'),
    HREFS.map(lambda h: f"<a href={h} data-x='{h}'>"),
    st.sampled_from(
        [
            "<a",
            ">",
            "</a>",
            "'",
            '"',
            "=",
            "data-requires-python=",
            "&gt;",
            "&amp;",
            "&#0;",
            "&#x110000;",
            "&nosuch;",
            "<!--",
            "-->",
            "<![CDATA[",
            "<script>",
            "</script>",
            "<base href='https://evil.example.com/'>",
            "<title>",
            "<h1>",
            "<?php ?>",
            "\x00",
            "\ud7ff",
            "<b><i>",
        ]
    ),
    st.text(max_size=10),
)
MALFORMED = st.lists(PIECES, max_size=30).map("".join)


@PROPERTY
@given(body=st.binary(max_size=2000), content_type=st.sampled_from([HTML, JSON]))
def test_parse_of_arbitrary_bytes_raises_only_page_error(body: bytes, content_type: str) -> None:
    """Any bytes parse to a page or raise PageError, never anything else."""
    kinds: tuple[Literal["index", "project"], ...] = ("index", "project")
    for kind in kinds:
        with contextlib.suppress(PageError):
            parse(
                body, content_type=content_type, page_url=INDEX_URL, upstream_url=GITLAB, kind=kind
            )


@PROPERTY
@given(body=MALFORMED)
def test_parse_of_malformed_html_raises_only_page_error(body: str) -> None:
    """Broken markup around anchors parses to a page or raises PageError."""
    with contextlib.suppress(PageError):
        parse(
            body.encode("utf-8", "surrogatepass"),
            content_type=HTML,
            page_url=PACKAGE_URL,
            upstream_url=GITLAB,
            kind="project",
        )


@PROPERTY
@given(body=MALFORMED, base_url=st.sampled_from([PROXY, "https://proxy.example.com/pypi"]))
def test_every_rendered_href_points_into_the_proxys_api(body: str, base_url: str) -> None:
    """Whatever GitLab sent, each rendered href or url starts with base_url + "/api/v4/"."""
    try:
        page = parse(
            body.encode(),
            content_type=HTML,
            page_url=PACKAGE_URL,
            upstream_url=GITLAB,
            kind="project",
        )
    except PageError:
        return
    html_body, _ = render(page, base_url=base_url)
    hrefs = rendered_hrefs(html_body)
    assert len(hrefs) == len(page.links)
    assert all(
        h is not None and h.startswith(base_url + "/api/v4/") and "/../" not in h for h in hrefs
    )
    json_body, _ = render(Page(page.title, page.links, json=True), base_url=base_url)
    urls = [f["url"] for f in json.loads(json_body)["files"]]
    assert all(url.startswith(base_url + "/api/v4/") for url in urls)


@PROPERTY
@given(
    page=st.one_of(HTML_PAGES, json_package_pages(), JSON_INDEXES),
    base_url=st.sampled_from([PROXY, "https://proxy.example.com/pypi"]),
)
def test_render_then_parse_is_identity(page: Page, base_url: str) -> None:
    """A page with valid paths reads back equal after rendering."""
    assert reparse(page, base_url, page_path=f"{API}/simple/") == page


LINK_STARTS = st.sampled_from(
    [
        f"{API}/files/",
        f"{API}/simple/",
        "/api/v4/projects/acme%2Ftools/packages/pypi/simple/",
        "/api/v4/groups/7/-/packages/pypi/files/",
        "/api/v4/projects/",
    ]
)
LINK_TAILS = st.lists(
    st.sampled_from(
        [*"/a4.%;?#=~&' \t:@+-\u00e9", "..", "%2e", "%2E", "%2F", "%2f", "%zz", "%4", "sha256="]
    ),
    max_size=14,
).map("".join)


@PROPERTY
@given(start=LINK_STARTS, tail=LINK_TAILS)
def test_gitlabs_own_links_read_as_any_other_spelling_of_them(start: str, tail: str) -> None:
    """A link spelled as GitLab writes it (read the quick way) parses as the same link
    spelled with an upper-case scheme and the default port (read the general way)."""
    quick, general = (
        page_with(f'<a href="{html.escape(origin + start + tail)}">x</a>')
        for origin in ("https://gitlab.example.com/gitlab", "HTTPS://gitlab.example.com:443/gitlab")
    )
    assert quick == general


def test_a_big_page_keeps_every_link() -> None:
    """A 50,000-link page from GitLab parses to its 50,000 links, in order."""
    anchors = [
        f'<a href="{GITLAB}{API}/files/{i:064x}/big-{i}.tar.gz#sha256={i:064x}">big-{i}.tar.gz</a>'
        for i in range(50_000)
    ]
    page = page_with(*anchors)
    assert [link.text for link in page.links] == [f"big-{i}.tar.gz" for i in range(50_000)]


def test_only_held_files_advertise_only_held_core_metadata() -> None:
    """Filtered to what is held, a link keeps its core-metadata attributes only when the
    metadata file is held too (pip fails hard on a promised `.metadata` it cannot get)."""
    wheel, metadata = "a" * 64, "b" * 64
    attrs = (("data-core-metadata", f"sha256={metadata}"), ("data-requires-python", ">=3.8"))
    page = Page("t", (Link(f"{API}/files/{wheel}/x-1-py3-none-any.whl", "x", "", attrs),))
    assert page.only(frozenset({wheel, metadata})) == page
    (link,) = page.only(frozenset({wheel})).links
    assert link.attrs == (("data-requires-python", ">=3.8"),)
    assert page.shas() == {wheel, metadata}
