"""The HTTP surface in process: GitLab's PyPI routes, simple pages, files and uploads."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp, Message

from proxy.app import create_app
from proxy.config import load
from proxy.models import Scope
from proxy.routes import Target, target
from tests.inproc import GITLAB, PROXY, BrokenBody, Serve, call_raw, edge, gitlab_page

pytestmark = pytest.mark.anyio

API = "/api/v4/projects/42/packages/pypi"
GROUP_API = "/api/v4/groups/7/-/packages/pypi"
HTML = {"content-type": "text/html; charset=utf-8"}
WHEEL_NAME = "my_pkg-1.0-py3-none-any.whl"
WHEEL = b"PK\x03\x04" + bytes(range(256)) * 40
SHA = hashlib.sha256(WHEEL).hexdigest()
SIZE = len(WHEEL)
FILE = f"{API}/files/{SHA}/{WHEEL_NAME}"
IMMUTABLE = "public, max-age=31536000, immutable"
FILE_HEADERS = (
    "content-length",
    "etag",
    "cache-control",
    "content-type",
    "accept-ranges",
    "content-encoding",
)


def file_anchor(scope: str = "projects/42", filename: str = WHEEL_NAME, sha: str = SHA) -> str:
    """A file link as GitLab writes it: absolute, numeric id, #sha256=, escaped requires-python."""
    dash = "/-" if scope.startswith("groups/") else ""
    href = f"{GITLAB}/api/v4/{scope}{dash}/packages/pypi/files/{sha}/{filename}#sha256={sha}"
    return f'<a href="{href}" data-requires-python="&gt;=3.8">{filename}</a>'


PACKAGE_PAGE = gitlab_page("My_Pkg", file_anchor())
INDEX_PAGE = gitlab_page(
    "My Project",
    f'<a href="{GITLAB}{API}/simple/my-pkg" data-requires-python="&gt;=3.8">My_Pkg</a>'
    f'<a href="{GITLAB}{API}/simple/other" data-requires-python="">other</a>',
)


def proxied_anchor(base: str, path: str = FILE, filename: str = WHEEL_NAME) -> str:
    """The same file link as the proxy renders it, pointing at `base`."""
    return f'<a href="{base}{path}#sha256={SHA}" data-requires-python="&gt;=3.8">{filename}</a>'


def twine_form(name: str, content: bytes = WHEEL) -> tuple[bytes, str]:
    """A multipart body shaped like twine's (fields first, `content` last) and its type."""
    boundary = "a1b2c3d4e5f6"
    fields = {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": name,
        "version": "1.0",
        "filetype": "bdist_wheel",
        "sha256_digest": hashlib.sha256(content).hexdigest(),
    }
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
        f'filename="{WHEEL_NAME}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def gitlab_answer(request: httpx.Request) -> httpx.Response:
    """GitLab's 200 for any PyPI GET: the wheel under files/, else the package page."""
    if b"/files/" in request.url.raw_path:
        return httpx.Response(200, content=WHEEL)
    return httpx.Response(200, content=PACKAGE_PAGE, headers=HTML)


# -- URL surface -------------------------------------------------------------------------

SURFACE = [
    # (path asked of the proxy, path asked of GitLab below its relative root)
    (f"{API}/simple", f"{API}/simple"),
    (f"{API}/simple/", f"{API}/simple"),
    (f"{API}/simple/my-pkg", f"{API}/simple/my-pkg"),
    (f"{API}/simple/my-pkg/", f"{API}/simple/my-pkg"),
    (FILE, FILE),
    (f"{GROUP_API}/simple", f"{GROUP_API}/simple"),
    (f"{GROUP_API}/simple/", f"{GROUP_API}/simple"),
    (f"{GROUP_API}/simple/my-pkg", f"{GROUP_API}/simple/my-pkg"),
    (f"{GROUP_API}/simple/my-pkg/", f"{GROUP_API}/simple/my-pkg"),
    (f"{GROUP_API}/files/{SHA}/{WHEEL_NAME}", f"{GROUP_API}/files/{SHA}/{WHEEL_NAME}"),
    *(
        (f"/api/v4/{scope}/packages/pypi/{rest}", f"/api/v4/{scope}/packages/pypi/{rest}")
        for scope in ("projects/acme%2Ftools", "projects/acme%2Fsub%2Ftools", "groups/acme%2Fsub/-")
        for rest in ("simple", "simple/my-pkg", f"files/{SHA}/{WHEEL_NAME}")
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (f"{API}/simple", Target("index", Scope("projects", "42"))),
        (f"{API}//simple/My_Pkg/", Target("page", Scope("projects", "42"), name="My_Pkg")),
        (
            f"/api/v4/projects/acme%2Ftools/packages/pypi/files/{SHA}/a%2B1.whl",
            Target("file", Scope("projects", "acme%2Ftools"), sha256=SHA, filename="a+1.whl"),
        ),
        (API, Target("upload", Scope("projects", "42"))),
        (GROUP_API, Target("other")),
        ("/api/v4/projects/../packages/pypi/simple", Target("other")),
        (f"{API}/simple/a/b", Target("other")),
        ("/-/health", Target("health")),
        ("/-/metrics", Target("metrics")),
        ("/-/other", Target("other")),
    ],
)
def test_a_raw_path_parses_to_what_it_names(raw: str, expected: Target) -> None:
    """The one path parser names the route kind, scope, name, sha256 and file name."""
    assert target(raw.encode()) == expected


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(("path", "upstream"), SURFACE)
async def test_each_route_is_forwarded_to_the_same_path_below_gitlabs_root(
    client: httpx.AsyncClient,
    gitlab_api: respx.MockRouter,
    method: str,
    path: str,
    upstream: str,
) -> None:
    """GET and HEAD of every PyPI route reach GitLab at the same path, ids still encoded."""
    route = gitlab_api.route(host="git.example.com").mock(side_effect=gitlab_answer)
    response = await client.request(method, path)
    assert response.status_code == 200
    assert route.calls.last.request.url.raw_path == ("/gitlab" + upstream).encode()


NOT_PYPI = [
    ("GET", "/-/status"),
    ("GET", "/foo"),
    ("GET", "/api/v4/user"),
    ("GET", "/api/v4/projects/1"),
    ("GET", "/api/v4/projects/1/packages/npm/x"),
    ("GET", "/api/v4/packages/pypi/simple"),
    ("GET", "/api/v4/projects/1/packages/pypi"),
    ("GET", "/api/v4/projects/1/packages/pypi/forward/x/y"),
    ("GET", "/api/v4/projects/1/packages/pypi/simple/a/b"),
    ("GET", f"/api/v4/projects/1/packages/pypi/files/{SHA}"),
    ("GET", f"/api/v4/projects/1/packages/pypi/files/{SHA}/a/b.whl"),
    ("GET", "/api/v4/groups/7/packages/pypi/simple"),
    ("POST", "/api/v4/groups/7/-/packages/pypi"),
    ("PUT", "/api/v4/groups/7/-/packages/pypi"),
    ("DELETE", "/api/v4/projects/1/packages/pypi"),
    ("POST", "/api/v4/projects/1/packages/pypi/authorize"),
]


@pytest.mark.parametrize(("method", "path"), NOT_PYPI)
async def test_every_other_path_is_404_and_never_forwarded(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, method: str, path: str
) -> None:
    """Paths outside the PyPI surface are not found, and GitLab is never asked."""
    catch_all = gitlab_api.route()
    response = await client.request(method, path)
    assert response.status_code == 404
    assert catch_all.call_count == 0


BAD_PARAMETERS = [
    f"{API}/files/{'0' * 63}/{WHEEL_NAME}",
    f"{API}/files/{SHA}0/{WHEEL_NAME}",
    f"{API}/files/{'g' * 64}/{WHEEL_NAME}",
    f"{API}/files/{SHA}/my_pkg..whl",
    f"{API}/files/{SHA}/..%2Fmy_pkg.whl",
    f"{API}/files/{SHA}/%2E%2E",
    f"{API}/files/{SHA}/a%2Fb.whl",
    f"{API}/files/{SHA}/my_pkg%00.whl",
    f"{API}/files/{SHA}/my_pkg%0A.whl",
    f"{API}/files/{SHA}/my_pkg%7F.whl",
    f"{API}/simple/a%2Fb",
    f"{API}/simple/%2E%2E",
    f"{API}/simple/my%00pkg",
    f"{API}/simple/-pkg",
    "/api/v4/projects/a%20b/packages/pypi/simple",
    "/api/v4/projects/%2E%2E/packages/pypi/simple",
]


@pytest.mark.parametrize("path", BAD_PARAMETERS)
async def test_bad_path_parameters_are_404_without_asking_gitlab(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, path: str
) -> None:
    """A bad sha256, file name, project name or id is refused before anything is forwarded."""
    catch_all = gitlab_api.route()
    response = await client.get(path)
    assert response.status_code == 404
    assert catch_all.call_count == 0


async def _raw_get(app: ASGIApp, raw_path: bytes) -> int:
    """The status for a GET whose path is sent as is."""
    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await call_raw(app, raw_path, send)
    return statuses[0]


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/api/v4/projects/../packages/pypi/simple",
        b"/api/v4/projects/./packages/pypi/simple/my-pkg",
        b"/api/v4/groups/../-/packages/pypi/simple",
    ],
)
async def test_a_dot_segment_id_is_404_and_never_forwarded(
    tmp_path: Path, gitlab_api: respx.MockRouter, raw_path: bytes
) -> None:
    """An id of '.' or '..' would move the forwarded path elsewhere on GitLab, so it is refused."""
    catch_all = gitlab_api.route().respond(200, content=PACKAGE_PAGE, headers=HTML)
    settings = load(env={}, overrides={"upstream.url": GITLAB, "cache.dir": str(tmp_path)})
    app = create_app(settings, transport=edge(gitlab_api))
    async with LifespanManager(app) as manager:
        status = await _raw_get(manager.app, raw_path)
    assert (status, catch_all.call_count) == (404, 0)


async def test_a_path_with_a_query_string_is_routed_on_its_path(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """A query string does not change the route, and it is not forwarded."""
    route = gitlab_api.get(GITLAB + API + "/simple/my-pkg").respond(
        200, content=PACKAGE_PAGE, headers=HTML
    )
    response = await client.get(f"{API}/simple/my-pkg/?private_token=x")
    assert response.status_code == 200
    assert route.calls.last.request.url.query == b""


# -- pages -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["My_Pkg", "my.pkg", "MY--pkg", "my-pkg"])
async def test_page_name_is_normalized_before_forwarding(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, name: str
) -> None:
    """PEP 503 normalization happens on the proxy, since GitLab only lower-cases names."""
    route = gitlab_api.get(GITLAB + API + "/simple/my-pkg").respond(
        200, content=PACKAGE_PAGE, headers=HTML
    )
    response = await client.get(f"{API}/simple/{name}/")
    assert response.status_code == 200
    assert route.called


@pytest.mark.parametrize(
    "path", [f"{API}/simple/my-pkg/", "/api/v4/projects/acme%2Ftools/packages/pypi/simple/my-pkg/"]
)
async def test_page_links_point_at_the_host_the_client_used(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, path: str
) -> None:
    """File links go to the proxy's Host with GitLab's path; #sha256= and requires-python stay."""
    gitlab_api.get(host="git.example.com").respond(200, content=PACKAGE_PAGE, headers=HTML)
    response = await client.get(path)
    assert proxied_anchor(PROXY) in response.text
    assert GITLAB not in response.text


async def test_page_links_point_at_public_url_when_set(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """With server.public_url set, links use it whatever Host the client sent."""
    gitlab_api.get(GITLAB + API + "/simple/my-pkg").respond(200, content=PACKAGE_PAGE, headers=HTML)
    async with serve({"server.public_url": "https://pypi.example.org/mirror"}) as client:
        response = await client.get(f"{API}/simple/my-pkg/")
    assert proxied_anchor("https://pypi.example.org/mirror") in response.text


async def test_group_page_links_keep_the_group_path(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """A group page's file links stay under groups/<id>/-/ on the proxy."""
    page = gitlab_page("My_Pkg", file_anchor("groups/7"))
    gitlab_api.get(GITLAB + GROUP_API + "/simple/my-pkg").respond(200, content=page, headers=HTML)
    response = await client.get(f"{GROUP_API}/simple/my-pkg/")
    assert proxied_anchor(PROXY, f"{GROUP_API}/files/{SHA}/{WHEEL_NAME}") in response.text


async def test_index_links_point_at_the_proxy(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """The index page's project links are rewritten to the proxy too."""
    gitlab_api.get(GITLAB + API + "/simple").respond(200, content=INDEX_PAGE, headers=HTML)
    response = await client.get(f"{API}/simple/")
    assert response.status_code == 200
    assert (
        f'<a href="{PROXY}{API}/simple/my-pkg" data-requires-python="&gt;=3.8">My_Pkg</a>'
        in response.text
    )
    assert f'<a href="{PROXY}{API}/simple/other" data-requires-python="">other</a>' in response.text


async def test_page_is_html_with_vary_accept(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """An HTML page is served as UTF-8 HTML and varies on Accept."""
    gitlab_api.get(GITLAB + API + "/simple/my-pkg").respond(200, content=PACKAGE_PAGE, headers=HTML)
    response = await client.get(f"{API}/simple/my-pkg/")
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["vary"] == "Accept, Accept-Encoding"


async def test_json_page_urls_point_at_the_proxy(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """A PEP 691 answer (pip's Accept) is served as JSON with each url on the proxy."""
    gitlab_json = {
        "meta": {"api-version": "1.0"},
        "name": "my-pkg",
        "files": [
            {
                "filename": WHEEL_NAME,
                "url": f"{GITLAB}{FILE}#sha256={SHA}",
                "hashes": {"sha256": SHA},
                "requires-python": ">=3.8",
            }
        ],
    }
    route = gitlab_api.get(GITLAB + API + "/simple/my-pkg").respond(
        200,
        json=gitlab_json,
        headers={"content-type": "application/vnd.pypi.simple.v1+json; charset=utf-8"},
    )
    pip_accept = (
        "application/vnd.pypi.simple.v1+json, "
        "application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
    )
    response = await client.get(f"{API}/simple/my-pkg/", headers={"accept": pip_accept})
    assert response.headers["content-type"] == "application/vnd.pypi.simple.v1+json"
    assert response.json()["files"] == [
        {
            "filename": WHEEL_NAME,
            "url": f"{PROXY}{FILE}#sha256={SHA}",
            "hashes": {"sha256": SHA},
            "requires-python": ">=3.8",
        }
    ]
    assert "application/vnd.pypi.simple.v1+json" in route.calls.last.request.headers["accept"]


async def test_second_page_request_within_ttl_does_not_ask_gitlab(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """A page is fetched once, then served from the cache (X-Cache MISS, then HIT)."""
    route = gitlab_api.get(GITLAB + API + "/simple/my-pkg").respond(
        200, content=PACKAGE_PAGE, headers=HTML
    )
    first = await client.get(f"{API}/simple/my-pkg/")
    second = await client.get(f"{API}/simple/my-pkg/")
    assert [first.headers["x-cache"], second.headers["x-cache"]] == ["MISS", "HIT"]
    assert second.text == first.text
    assert route.call_count == 1


async def test_forwarding_redirect_is_passed_on_and_never_cached(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """With forwarding.mode redirect, GitLab's 302 to pypi.org for an unknown name reaches
    the client each time, uncached."""
    pypi = "https://pypi.org/simple/requests/"
    route = gitlab_api.get(GITLAB + API + "/simple/requests").respond(
        302, headers={"location": pypi, "content-type": "text/plain"}
    )
    async with serve({"forwarding.mode": "redirect"}) as client:
        answers = [await client.get(f"{API}/simple/requests/") for _ in range(2)]
    assert [(a.status_code, a.headers["location"], a.headers["x-cache"]) for a in answers] == [
        (302, pypi, "BYPASS"),
        (302, pypi, "BYPASS"),
    ]
    assert route.call_count == 2


@pytest.mark.parametrize("path", [f"{API}/simple/my-pkg/", FILE])
async def test_gitlab_401_reaches_the_client_with_www_authenticate(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, path: str
) -> None:
    """A 401 and its WWW-Authenticate pass unchanged, so pip can ask for credentials."""
    challenge = 'Basic realm="GitLab Packages Registry"'
    gitlab_api.get(host="git.example.com").respond(
        401, json={"message": "401 Unauthorized"}, headers={"www-authenticate": challenge}
    )
    response = await client.get(path)
    assert (response.status_code, response.headers["www-authenticate"]) == (401, challenge)


@pytest.mark.parametrize("path", [f"{API}/simple/my-pkg/", FILE])
async def test_gitlab_404_passes_through(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, path: str
) -> None:
    """GitLab's 404 and its body reach the client as they are."""
    gitlab_api.get(host="git.example.com").respond(404, json={"message": "404 Package Not Found"})
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json() == {"message": "404 Package Not Found"}


# -- files -------------------------------------------------------------------------------


async def test_file_miss_streams_the_bytes_and_stores_them(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """The first download comes from GitLab (MISS); the next from the cache (HIT)."""
    route = gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    first = await client.get(FILE)
    second = await client.get(FILE)
    assert (first.status_code, first.headers["x-cache"], first.content) == (200, "MISS", WHEEL)
    assert (second.status_code, second.headers["x-cache"], second.content) == (200, "HIT", WHEEL)
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [
        (WHEEL_NAME, "application/zip"),
        ("my_pkg-1.0.tar.gz", "application/gzip"),
        ("my_pkg-1.0.zip", "application/zip"),
        ("my_pkg-1.0.tar.bz2", "application/x-bzip2"),
    ],
)
async def test_cached_file_has_immutable_headers_and_a_type_from_its_extension(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, filename: str, content_type: str
) -> None:
    """A hit carries length, sha256 ETag, immutable caching, ranges, its type, no encoding."""
    path = f"{API}/files/{SHA}/{filename}"
    gitlab_api.get(GITLAB + path).respond(200, content=WHEEL)
    await client.get(path)
    response = await client.get(path)
    assert response.headers["x-cache"] == "HIT"
    assert {name: response.headers.get(name) for name in FILE_HEADERS} == {
        "content-length": str(SIZE),
        "etag": f'"{SHA}"',
        "cache-control": IMMUTABLE,
        "content-type": content_type,
        "accept-ranges": "bytes",
        "content-encoding": None,
    }


@pytest.mark.parametrize(("warm", "cache"), [(True, "HIT"), (False, "BYPASS")])
async def test_head_gives_the_headers_and_no_body(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, warm: bool, cache: str
) -> None:
    """HEAD of a file answers with its real length and Accept-Ranges, and sends no body."""
    gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    head = {"content-length": str(SIZE), "accept-ranges": "bytes"}
    gitlab_api.head(GITLAB + FILE).respond(200, headers=head)
    if warm:
        await client.get(FILE)
    response = await client.head(FILE)
    assert response.status_code == 200
    assert response.headers["x-cache"] == cache
    assert response.headers["content-length"] == str(SIZE)
    assert response.headers["accept-ranges"] == "bytes"
    assert response.content == b""


@pytest.mark.parametrize("warm", [True, False], ids=["hit", "miss"])
@pytest.mark.parametrize(
    ("wanted", "start", "end"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=10-", 10, SIZE),
        ("bytes=-10", SIZE - 10, SIZE),
        ("bytes=-10000000", 0, SIZE),
        ("bytes=100-9999999", 100, SIZE),
    ],
)
async def test_a_byte_range_gives_206_with_its_content_range(
    client: httpx.AsyncClient,
    gitlab_api: respx.MockRouter,
    warm: bool,
    wanted: str,
    start: int,
    end: int,
) -> None:
    """Single ranges (first-last, open-ended, suffix) are honoured as uv and poetry use them."""
    gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    if warm:
        await client.get(FILE)
    response = await client.get(FILE, headers={"range": wanted})
    if (start, end) == (0, SIZE):
        assert (response.status_code, response.content) == (200, WHEEL)
        return
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert response.headers["content-length"] == str(end - start)
    assert response.content == WHEEL[start:end]


@pytest.mark.parametrize("wanted", [f"bytes={SIZE}-", "bytes=99999999-", "bytes=-0"])
async def test_an_unsatisfiable_range_gives_416(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, wanted: str
) -> None:
    """A range past the end is 416 with the real size in Content-Range."""
    gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    await client.get(FILE)
    response = await client.get(FILE, headers={"range": wanted})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize("tag", [f'"{SHA}"', f'W/"{SHA}"', f'"other", "{SHA}"'])
async def test_if_none_match_with_the_sha256_gives_304(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, tag: str
) -> None:
    """A client that holds the file gets 304 and no body."""
    gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    await client.get(FILE)
    response = await client.get(FILE, headers={"if-none-match": tag})
    assert (response.status_code, response.content) == (304, b"")
    assert response.headers["etag"] == f'"{SHA}"'


async def test_if_range_with_another_etag_gives_the_whole_file(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """pip's resume with a stale If-Range gets 200 and every byte, not a range."""
    gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    await client.get(FILE)
    response = await client.get(FILE, headers={"range": "bytes=10-", "if-range": '"other"'})
    assert (response.status_code, response.content) == (200, WHEEL)


async def test_wrong_bytes_are_not_cached_and_the_body_breaks_off(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """Bytes that do not hash to the URL's sha256 never end cleanly and are never stored."""
    wrong = bytes(reversed(WHEEL))
    route = gitlab_api.get(GITLAB + FILE).respond(200, content=wrong)
    for _ in range(2):
        # Either the body breaks off mid-way, or (when the fill failed before the
        # response started) the answer is an error: never a clean 200.
        try:
            response = await client.get(FILE)
        except BrokenBody as broken:
            assert len(broken.received) < int(broken.headers["content-length"])  # noqa: PT017
        else:
            assert response.status_code == 502
    assert route.call_count == 2


class HeldBack(httpx.AsyncByteStream):
    """GitLab's body: its first half, then the rest once `let_go` is set."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.let_go = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.content[: len(self.content) // 2]
        await self.let_go.wait()
        yield self.content[len(self.content) // 2 :]


async def test_a_range_of_wrong_bytes_on_a_miss_breaks_off(tmp_path: Path) -> None:
    """A Range on a MISS whose bytes fail their hash is never a clean 206, even when the
    range arrived before the rest of the file."""
    right = bytes(range(256)) * 4096  # above the upstream's chunk size, to arrive in parts
    path = FILE.replace(SHA, hashlib.sha256(right).hexdigest())
    body = HeldBack(bytes(reversed(right)))
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200, headers={"content-length": str(len(right))}, stream=body
        )
    )
    settings = load(env={}, overrides={"upstream.url": GITLAB, "cache.dir": str(tmp_path)})
    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)
        if message.get("body"):
            body.let_go.set()  # the client has bytes of the range: now GitLab sends the rest

    async with LifespanManager(create_app(settings, transport=transport)) as manager:
        await call_raw(manager.app, path.encode(), send, headers=[(b"range", b"bytes=0-9")])
    assert messages[0]["status"] == 206
    assert len(b"".join(m.get("body", b"") for m in messages[1:])) < 10
    assert messages[-1].get("more_body", False)  # no final message: the line breaks


async def test_the_same_file_under_two_projects_is_stored_once(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """Files are keyed by sha256: another project's link to the same bytes is a hit."""
    route = gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    other = f"/api/v4/projects/43/packages/pypi/files/{SHA}/{WHEEL_NAME}"
    check = gitlab_api.head(GITLAB + other).respond(200)
    await client.get(FILE)
    response = await client.get(other)
    assert (response.headers["x-cache"], response.content) == ("HIT", WHEEL)
    assert (route.call_count, check.call_count) == (1, 1)


async def test_knowing_a_sha256_is_not_access(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """A file cached through one project is not served through another that GitLab says lacks it."""
    gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    other = f"/api/v4/projects/43/packages/pypi/files/{SHA}/{WHEEL_NAME}"
    gitlab_api.head(GITLAB + other).respond(404, json={"message": "404 Package Not Found"})
    await client.get(FILE)
    response = await client.get(other)
    assert response.status_code == 404
    assert response.content != WHEEL


async def test_redirect_to_object_storage_is_followed_without_authorization(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """GitLab's 302 to another host is followed, and the credentials stay with GitLab."""
    signed = "https://storage.example.net/packages/ab/cd?X-Amz-Signature=f00"
    gitlab = gitlab_api.get(GITLAB + FILE).respond(
        302, headers={"location": signed, "content-type": "text/plain"}
    )
    storage = gitlab_api.get(signed).respond(200, content=WHEEL)
    response = await client.get(FILE, headers={"authorization": "Basic dXNlcjp0b2tlbg=="})
    assert response.content == WHEEL
    assert gitlab.calls.last.request.headers["authorization"] == "Basic dXNlcjp0b2tlbg=="
    assert "authorization" not in storage.calls.last.request.headers


# -- uploads -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_upload_is_posted_to_gitlab_with_the_clients_type_and_credentials(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, method: str
) -> None:
    """POST and PUT both reach GitLab as a POST of the same body, type and Authorization."""
    route = gitlab_api.post(GITLAB + API).respond(201, json={"message": "201 Created"})
    body, content_type = twine_form("my-pkg")
    response = await client.request(
        method,
        API,
        content=body,
        headers={"content-type": content_type, "authorization": "Basic X19fdG9rZW5fXzpzM2NyZXQ="},
    )
    assert (response.status_code, response.json()) == (201, {"message": "201 Created"})
    sent = route.calls.last.request
    assert sent.url.raw_path == f"/gitlab{API}".encode()
    assert sent.headers["content-type"] == content_type
    assert sent.headers["authorization"] == "Basic X19fdG9rZW5fXzpzM2NyZXQ="
    assert sent.content == body


async def test_upload_refusal_is_returned_as_it_is(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """GitLab's 400 for a duplicate reaches twine with its exact body."""
    message = b'{"message":"400 Bad request - Validation failed: File name has already been taken"}'
    gitlab_api.post(GITLAB + API).respond(
        400, content=message, headers={"content-type": "application/json"}
    )
    body, content_type = twine_form("my-pkg")
    response = await client.post(API, content=body, headers={"content-type": content_type})
    assert (response.status_code, response.content) == (400, message)
    assert response.headers["content-type"] == "application/json"


async def test_upload_above_max_upload_size_is_413_without_asking_gitlab(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A Content-Length above server.max_upload_size is refused before forwarding."""
    catch_all = gitlab_api.route()
    body, content_type = twine_form("my-pkg")
    async with serve({"server.max_upload_size": "1KiB"}) as client:
        response = await client.post(API, content=body, headers={"content-type": content_type})
    assert response.status_code == 413
    assert catch_all.call_count == 0


async def test_a_chunked_upload_that_grows_past_the_limit_is_413(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Without a Content-Length the limit is counted while streaming."""
    gitlab_api.post(GITLAB + API).respond(201, json={"message": "201 Created"})

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 512

    async with serve({"server.max_upload_size": "1KiB"}) as client:
        response = await client.post(API, content=chunks())
    assert response.status_code == 413


async def test_upload_body_is_streamed_through_unchanged(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """A chunked client body reaches GitLab byte for byte, without a Content-Length."""
    route = gitlab_api.post(GITLAB + API).respond(201, json={"message": "201 Created"})
    body, content_type = twine_form("my-pkg", WHEEL * 8)
    pieces = [body[i : i + 7000] for i in range(0, len(body), 7000)]

    async def chunks() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    response = await client.post(API, content=chunks(), headers={"content-type": content_type})
    assert response.status_code == 201
    assert len(pieces) > 3
    assert route.calls.last.request.content == body


@pytest.mark.parametrize(
    ("status", "name", "cache", "asked"),
    [
        pytest.param(201, "My_Pkg", "MISS", 2, id="created-drops-the-page"),
        pytest.param(400, "my-pkg", "HIT", 1, id="refused-keeps-the-page"),
    ],
)
async def test_an_upload_drops_the_cached_page_of_its_name_only_on_success(
    client: httpx.AsyncClient,
    gitlab_api: respx.MockRouter,
    status: int,
    name: str,
    cache: str,
    asked: int,
) -> None:
    """After a 201 for My_Pkg the next GET of my-pkg asks GitLab again; a 400 changes nothing."""
    page = gitlab_api.get(GITLAB + API + "/simple/my-pkg").respond(
        200, content=PACKAGE_PAGE, headers=HTML
    )
    gitlab_api.post(GITLAB + API).respond(status, json={"message": f"{status}"})
    await client.get(f"{API}/simple/my-pkg/")
    body, content_type = twine_form(name)
    await client.post(API, content=body, headers={"content-type": content_type})
    response = await client.get(f"{API}/simple/my-pkg/")
    assert response.headers["x-cache"] == cache
    assert page.call_count == asked


@pytest.mark.parametrize(
    ("overrides", "token", "headers", "cache_control"),
    [
        ({}, "", {}, "public, max-age=31536000, immutable"),
        ({}, "glpat-service", {}, "private, max-age=31536000, immutable"),
        ({"access.mode": "passthrough"}, "", {"Authorization": "Bearer glpat-own"}, "private"),
    ],
)
async def test_a_file_is_public_only_when_gitlab_served_it_anonymously(
    serve: Serve,
    gitlab_api: respx.MockRouter,
    overrides: dict[str, str],
    token: str,
    headers: dict[str, str],
    cache_control: str,
) -> None:
    """Shared caches may keep a file GitLab gives anyone; a file fetched with the service
    token or a client's own credentials is `private` (design 3.2)."""
    gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    gitlab_api.head(GITLAB + FILE).respond(404)
    async with serve(overrides, token=token) as client:
        for _ in range(2):  # the miss and the hit
            response = await client.get(FILE, headers=headers)
            assert response.content == WHEEL
            assert response.headers["cache-control"].startswith(cache_control)
