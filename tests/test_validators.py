"""Page validators and codings, If-Modified-Since on files: codings, mirror, routes, responses."""

from __future__ import annotations

import gzip
import hashlib
import time
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import brotli
import httpx
import pytest
import respx
from backports import zstd

from proxy.cache import Store, StoredPage
from proxy.codings import Coding, choose
from proxy.models import Link, Page
from tests.inproc import GITLAB, Serve, gitlab_page

pytestmark = pytest.mark.anyio

API = "/api/v4/projects/42/packages/pypi"
PAGE_URL = GITLAB + API + "/simple/my-pkg"
HTML = {"content-type": "text/html; charset=utf-8"}
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = f"{JSON_TYPE}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
ALL: tuple[Coding, ...] = ("zstd", "br", "gzip")


def wheel_name(n: int) -> str:
    """The n-th wheel of my-pkg."""
    return f"my_pkg-1.{n}-py3-none-any.whl"


def sha(n: int) -> str:
    """A sha256 standing for the n-th wheel."""
    return hashlib.sha256(str(n).encode()).hexdigest()


def package_page(versions: int = 20) -> bytes:
    """GitLab's page of my-pkg with `versions` wheels (big enough to be compressed)."""
    anchors = "".join(
        f'<a href="{GITLAB}{API}/files/{sha(n)}/{wheel_name(n)}#sha256={sha(n)}" '
        f'data-requires-python="&gt;=3.8">{wheel_name(n)}</a>'
        for n in range(versions)
    )
    return gitlab_page("My_Pkg", anchors)


def gitlab_json(versions: int = 20) -> dict[str, object]:
    """GitLab's PEP 691 answer for my-pkg."""
    files = [
        {
            "filename": wheel_name(n),
            "url": f"{GITLAB}{API}/files/{sha(n)}/{wheel_name(n)}",
            "hashes": {"sha256": sha(n)},
        }
        for n in range(versions)
    ]
    return {"meta": {"api-version": "1.0"}, "name": "my-pkg", "files": files}


async def raw_get(
    client: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> tuple[httpx.Response, bytes]:
    """A GET and its body as sent, not decoded."""
    async with client.stream("GET", path, headers=headers) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    return response, raw


# -- Accept-Encoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept_encoding", "offered", "chosen"),
    [
        ("gzip, deflate", ALL, "gzip"),  # pip (requests), poetry and pdm without extras
        ("gzip, deflate, zstd", ALL, "zstd"),  # uv 0.13
        ("deflate, gzip, br, zstd", ALL, "zstd"),  # curl --compressed
        ("gzip, deflate, br, zstd", ALL, "zstd"),  # Chrome, Firefox
        (None, ALL, "identity"),  # curl without --compressed
        ("", ALL, "identity"),
        ("gzip, deflate, zstd", ("gzip",), "gzip"),  # zstd not installed
        ("br;q=1.0, gzip;q=0.8, *;q=0.1", ALL, "br"),
        ("gzip;q=0.5, zstd;q=0.4", ALL, "gzip"),
        ("*", ALL, "zstd"),
        ("*;q=0.5, zstd;q=0", ALL, "br"),
        ("gzip;q=0, identity", ALL, "identity"),
        ("identity;q=1, gzip;q=0.5", ALL, "identity"),
        ("*;q=0", ALL, "identity"),  # nothing acceptable: a body all the same
        ("x-gzip", ALL, "gzip"),
        ("GZIP;Q=0.5", ALL, "gzip"),
        ("gzip;q=abc", ALL, "identity"),
        ("gzip;q=2", ALL, "identity"),
        ("compress, gzip;q=0.2", ALL, "gzip"),
    ],
)
def test_accept_encoding_picks_the_best_offered_coding(
    accept_encoding: str | None, offered: tuple[Coding, ...], chosen: Coding
) -> None:
    """The offered coding with the highest q wins (ties: the proxy's order), else identity."""
    assert choose(accept_encoding, offered) == chosen


# -- ETag and If-None-Match ---------------------------------------------------------------


async def test_a_page_etag_is_strong_and_stable_across_hits(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A page's MISS and its HITs carry one strong ETag."""
    gitlab_api.get(PAGE_URL).respond(200, content=package_page(), headers=HTML)
    async with serve() as client:
        first = await client.get(f"{API}/simple/my-pkg/")
        second = await client.get(f"{API}/simple/my-pkg/")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.headers["etag"] == second.headers["etag"]
    assert first.headers["etag"].startswith('"')


async def test_a_page_etag_changes_with_the_page(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Once GitLab's page changes, so does the ETag."""
    gitlab_api.get(PAGE_URL).mock(
        side_effect=[
            httpx.Response(200, content=package_page(3), headers=HTML),
            httpx.Response(200, content=package_page(4), headers=HTML),
        ]
    )
    async with serve({"cache.page_ttl": 0}) as client:
        before = await client.get(f"{API}/simple/my-pkg/")
        after = await client.get(f"{API}/simple/my-pkg/")
    assert before.headers["etag"] != after.headers["etag"]


@pytest.mark.parametrize("if_none_match", ["{etag}", 'W/"x", W/{etag}', "*", '"x", {etag}'])
async def test_a_matching_if_none_match_gets_a_304_without_body(
    serve: Serve, gitlab_api: respx.MockRouter, if_none_match: str
) -> None:
    """If-None-Match naming the page's ETag (in a list, weak, or `*`) gets a bodiless 304
    with the ETag, Cache-Control and Vary of the 200."""
    gitlab_api.get(PAGE_URL).respond(200, content=package_page(), headers=HTML)
    async with serve() as client:
        full = await client.get(f"{API}/simple/my-pkg/", headers={"accept-encoding": "gzip"})
        condition = if_none_match.format(etag=full.headers["etag"])
        again = await client.get(
            f"{API}/simple/my-pkg/",
            headers={"accept-encoding": "gzip", "if-none-match": condition},
        )
    assert (again.status_code, again.content) == (304, b"")
    for name in ("etag", "vary"):
        assert again.headers[name] == full.headers[name]
    assert again.headers["cache-control"].startswith("public, max-age=")
    assert "content-encoding" not in again.headers
    assert "content-type" not in again.headers


async def test_another_etag_gets_the_page(serve: Serve, gitlab_api: respx.MockRouter) -> None:
    """If-None-Match naming other ETags gets the whole page."""
    gitlab_api.get(PAGE_URL).respond(200, content=package_page(), headers=HTML)
    async with serve() as client:
        response = await client.get(
            f"{API}/simple/my-pkg/", headers={"if-none-match": '"other", W/"older"'}
        )
    assert response.status_code == 200
    assert response.content


async def test_each_coding_has_its_own_etag(serve: Serve, gitlab_api: respx.MockRouter) -> None:
    """A gzip body and an identity body of one page are two representations, two ETags."""
    gitlab_api.get(PAGE_URL).respond(200, content=package_page(), headers=HTML)
    async with serve() as client:
        plain = await client.get(f"{API}/simple/my-pkg/", headers={"accept-encoding": "identity"})
        coded = await client.get(f"{API}/simple/my-pkg/", headers={"accept-encoding": "gzip"})
    assert coded.headers["etag"] != plain.headers["etag"]


# -- Cache-Control and Vary ---------------------------------------------------------------


async def test_a_fresh_page_has_max_age_page_ttl_and_varies(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A page just fetched is fresh for page_ttl; anonymous to GitLab, it is public, and it
    varies on Accept and Accept-Encoding."""
    gitlab_api.get(PAGE_URL).respond(200, content=package_page(), headers=HTML)
    async with serve({"cache.page_ttl": 300}) as client:
        response = await client.get(f"{API}/simple/my-pkg/")
    assert response.headers["cache-control"] == "public, max-age=300"
    assert response.headers["vary"] == "Accept, Accept-Encoding"


async def test_max_age_is_what_is_left_of_the_freshness(
    serve: Serve, gitlab_api: respx.MockRouter, tmp_path: Path
) -> None:
    """A page GitLab confirmed 100 s ago, with page_ttl 300, has max-age 200 at most."""
    link = Link(f"{API}/files/{sha(1)}/{wheel_name(1)}", wheel_name(1), f"sha256={sha(1)}")
    store = Store(tmp_path / "cache", max_size=1 << 30)
    stored = StoredPage(Page("Links for My_Pkg", (link,)), time.time() - 100, "")
    store.put_page(Store.page_key("projects/42", "my-pkg", "html"), stored, name="my-pkg")
    store.close()
    async with serve({"cache.page_ttl": 300}) as client:
        response = await client.get(f"{API}/simple/my-pkg/")
    assert response.headers["x-cache"] == "HIT"
    max_age = int(response.headers["cache-control"].rpartition("max-age=")[2])
    assert 190 <= max_age <= 200


async def test_a_stale_page_has_max_age_zero(serve: Serve, gitlab_api: respx.MockRouter) -> None:
    """A page served stale (GitLab down) is not fresh for anyone."""
    gitlab_api.get(PAGE_URL).mock(
        side_effect=[
            httpx.Response(200, content=package_page(), headers=HTML),
            httpx.Response(503),
        ]
    )
    async with serve({"cache.page_ttl": 0}) as client:
        await client.get(f"{API}/simple/my-pkg/")
        stale = await client.get(f"{API}/simple/my-pkg/")
    assert stale.headers["x-cache"] == "STALE"
    assert stale.headers["cache-control"].endswith("max-age=0")


async def test_a_page_fetched_with_the_service_token_is_private(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """What GitLab gave the proxy's credentials is no shared cache's to keep."""
    gitlab_api.get(PAGE_URL).respond(200, content=package_page(), headers=HTML)
    async with serve({"cache.page_ttl": 300}, token="glpat-secret") as client:
        response = await client.get(f"{API}/simple/my-pkg/")
    assert response.headers["cache-control"] == "private, max-age=300"


# -- codings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "decode"),
    [("gzip", gzip.decompress), ("br", brotli.decompress), ("zstd", zstd.decompress)],
)
async def test_a_coded_page_decodes_to_the_identity_bytes(
    serve: Serve, gitlab_api: respx.MockRouter, coding: str, decode: object
) -> None:
    """A page sent in gzip, br or zstd decodes to the bytes sent without a coding."""
    gitlab_api.get(PAGE_URL).respond(200, content=package_page(), headers=HTML)
    async with serve() as client:
        plain, plain_raw = await raw_get(
            client, f"{API}/simple/my-pkg/", {"accept-encoding": "identity"}
        )
        coded, coded_raw = await raw_get(
            client, f"{API}/simple/my-pkg/", {"accept-encoding": coding}
        )
    assert "content-encoding" not in plain.headers
    assert coded.headers["content-encoding"] == coding
    assert int(coded.headers["content-length"]) == len(coded_raw) < len(plain_raw)
    assert callable(decode)
    assert decode(coded_raw) == plain_raw


async def test_a_small_page_is_sent_as_it_is(serve: Serve, gitlab_api: respx.MockRouter) -> None:
    """A page too small to gain from a coding has none, whatever the client accepts."""
    gitlab_api.get(PAGE_URL).respond(200, content=gitlab_page("My_Pkg", ""), headers=HTML)
    async with serve() as client:
        response, _ = await raw_get(client, f"{API}/simple/my-pkg/", {"accept-encoding": "gzip"})
    assert "content-encoding" not in response.headers


async def test_head_of_a_page_has_the_get_headers_and_no_body(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """HEAD of a page gives GET's status, ETag, coding and length, without the body."""
    gitlab_api.get(PAGE_URL).respond(200, content=package_page(), headers=HTML)
    async with serve() as client:
        got, raw = await raw_get(client, f"{API}/simple/my-pkg/", {"accept-encoding": "gzip"})
        head = await client.head(f"{API}/simple/my-pkg/", headers={"accept-encoding": "gzip"})
    assert (head.status_code, head.content) == (200, b"")
    for name in ("etag", "content-encoding", "vary", "content-type"):
        assert head.headers[name] == got.headers[name]
    assert head.headers["content-length"] == str(len(raw))


@pytest.mark.parametrize("filename", ["my_pkg-1.0.tar.gz", "my_pkg-1.0-py3-none-any.whl"])
async def test_files_never_get_a_content_encoding(
    serve: Serve, gitlab_api: respx.MockRouter, filename: str
) -> None:
    """A .tar.gz or a wheel is sent as its bytes, to a client that accepts every coding."""
    content = gzip.compress(b"x" * 10_000)
    digest = hashlib.sha256(content).hexdigest()
    path = f"{API}/files/{digest}/{filename}"
    gitlab_api.get(GITLAB + path).respond(200, content=content)
    async with serve() as client:
        for cache in ("MISS", "HIT"):
            response, raw = await raw_get(
                client, path, {"accept-encoding": "gzip, deflate, br, zstd"}
            )
            assert response.headers["x-cache"] == cache
            assert "content-encoding" not in response.headers
            assert raw == content


# -- the representation GitLab answered with ----------------------------------------------


class GitLabTurningJsonOn:
    """GitLab's page of my-pkg: HTML until `json` is set, with one ETag whatever the
    representation (a 304 for it would keep the HTML)."""

    def __init__(self) -> None:
        self.json = False
        self.asked = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked += 1
        if request.headers.get("if-none-match") == '"v1"':
            return httpx.Response(304, headers={"etag": '"v1"'})
        if self.json and JSON_TYPE in request.headers.get("accept", ""):
            return httpx.Response(200, json=gitlab_json(), headers={"content-type": JSON_TYPE})
        return httpx.Response(200, content=package_page(), headers={**HTML, "etag": '"v1"'})


async def test_json_turned_on_in_gitlab_reaches_a_json_client_after_page_ttl(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """HTML that GitLab gave a JSON request is kept as HTML, so once GitLab answers JSON,
    a JSON client gets JSON when the page is next asked for."""
    gitlab = GitLabTurningJsonOn()
    gitlab_api.get(PAGE_URL).mock(side_effect=gitlab)
    async with serve({"cache.page_ttl": 0}) as client:
        before = await client.get(f"{API}/simple/my-pkg/", headers={"accept": PIP_ACCEPT})
        gitlab.json = True
        after = await client.get(f"{API}/simple/my-pkg/", headers={"accept": PIP_ACCEPT})
    assert before.headers["content-type"].startswith("text/html")
    assert after.headers["content-type"] == JSON_TYPE


async def test_html_given_to_a_json_request_serves_html_requests(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """The HTML page GitLab gave a JSON request is a HIT for a browser's HTML request."""
    gitlab = GitLabTurningJsonOn()
    gitlab_api.get(PAGE_URL).mock(side_effect=gitlab)
    async with serve({"cache.page_ttl": 300}) as client:
        await client.get(f"{API}/simple/my-pkg/", headers={"accept": PIP_ACCEPT})
        html = await client.get(f"{API}/simple/my-pkg/", headers={"accept": "text/html"})
        json = await client.get(f"{API}/simple/my-pkg/", headers={"accept": PIP_ACCEPT})
    assert (html.headers["x-cache"], json.headers["x-cache"], gitlab.asked) == ("HIT", "HIT", 1)


# -- If-Modified-Since on files -----------------------------------------------------------

WHEEL = b"PK\x03\x04" + bytes(range(256)) * 8
WHEEL_PATH = f"{API}/files/{hashlib.sha256(WHEEL).hexdigest()}/{wheel_name(0)}"


async def cached_file(client: httpx.AsyncClient, gitlab_api: respx.MockRouter) -> httpx.Response:
    """The wheel fetched into the cache, then served from it."""
    gitlab_api.get(GITLAB + WHEEL_PATH).respond(200, content=WHEEL)
    await client.get(WHEEL_PATH)
    hit = await client.get(WHEEL_PATH)
    assert hit.headers["x-cache"] == "HIT"
    return hit


async def test_a_cached_file_has_last_modified_when_it_was_committed(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """A cached file's Last-Modified is the time the proxy committed it."""
    started = int(time.time())
    hit = await cached_file(client, gitlab_api)
    committed = parsedate_to_datetime(hit.headers["last-modified"]).timestamp()
    assert started <= committed <= time.time()


@pytest.mark.parametrize(
    ("shift", "status"),
    [(0, 304), (3600, 304), (-3600, 200)],
)
async def test_if_modified_since_gets_a_304_when_not_modified(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, shift: int, status: int
) -> None:
    """If-Modified-Since at or after Last-Modified gets a bodiless 304; before it, the file."""
    hit = await cached_file(client, gitlab_api)
    since = parsedate_to_datetime(hit.headers["last-modified"]).timestamp() + shift
    again = await client.get(
        WHEEL_PATH, headers={"if-modified-since": formatdate(since, usegmt=True)}
    )
    assert again.status_code == status
    assert again.content == (b"" if status == 304 else WHEEL)


@pytest.mark.parametrize("since", ["yesterday", "", "Mon, 32 Foo 2020 99:99:99 GMT"])
async def test_an_invalid_if_modified_since_is_ignored(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, since: str
) -> None:
    """A value that is not an HTTP-date is ignored: the file is sent."""
    await cached_file(client, gitlab_api)
    again = await client.get(WHEEL_PATH, headers={"if-modified-since": since})
    assert (again.status_code, again.content) == (200, WHEEL)


async def test_if_none_match_takes_precedence_over_if_modified_since(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """With both, If-None-Match decides (RFC 9110 13.2.2): another ETag gets the file."""
    hit = await cached_file(client, gitlab_api)
    again = await client.get(
        WHEEL_PATH,
        headers={"if-none-match": '"other"', "if-modified-since": hit.headers["last-modified"]},
    )
    assert (again.status_code, again.content) == (200, WHEEL)
