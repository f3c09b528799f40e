"""The assembled app: errors mapped to statuses, health, X-Cache everywhere, settings wired in."""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from starlette.types import Message, Receive, Scope, Send

from proxy.app import Observed, create_app
from proxy.config import load
from proxy.metrics import Metrics
from proxy.tally import Tally
from proxy.zerocopy import EXTENSION
from tests.inproc import GITLAB, PROXY, Serve, call_raw, edge, gitlab_page

pytestmark = pytest.mark.anyio

API = "/api/v4/projects/42/packages/pypi"
HTML = {"content-type": "text/html; charset=utf-8"}
WHEEL_NAME = "my_pkg-1.0-py3-none-any.whl"
WHEEL = b"PK\x03\x04" + bytes(range(256)) * 16
SHA = hashlib.sha256(WHEEL).hexdigest()
SDIST_NAME = "my_pkg-1.0.tar.gz"
SDIST = b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8
SDIST_SHA = hashlib.sha256(SDIST).hexdigest()
FILE = f"{API}/files/{SHA}/{WHEEL_NAME}"
PAGE = f"{API}/simple/my-pkg/"
TOKEN = "glpat-service-0123456789"
CLIENT_AUTH = "Basic Y2xpZW50OmNsaWVudC10b2tlbg=="


def package_page(*files: tuple[str, str]) -> bytes:
    """GitLab's package page, byte for byte (gitlab-pypi-api.md 2.2), for (filename, sha256)."""
    anchors = "".join(
        f'<a href="{GITLAB}{API}/files/{sha}/{name}#sha256={sha}" '
        f'data-requires-python="&gt;=3.8">{name}</a>'
        for name, sha in files
    )
    return gitlab_page("my-pkg", anchors)


PACKAGE_PAGE = package_page((WHEEL_NAME, SHA), (SDIST_NAME, SDIST_SHA))


def gitlab_answer(request: httpx.Request) -> httpx.Response:
    """GitLab's 200 for any PyPI GET: the wheel under files/, else the package page."""
    if b"/files/" in request.url.raw_path:
        return httpx.Response(200, content=WHEEL)
    return httpx.Response(200, content=PACKAGE_PAGE, headers=HTML)


def basic_user_and_password(authorization: str) -> tuple[str, str]:
    """The (user, password) of an `Authorization: Basic` value."""
    scheme, _, encoded = authorization.partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    return user, password


# -- errors a client can read ------------------------------------------------------------

Failure = Callable[[httpx.Request], httpx.Response]


def refused(request: httpx.Request) -> httpx.Response:
    """GitLab's host refuses the connection."""
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def connect_timeout(request: httpx.Request) -> httpx.Response:
    """GitLab's host does not accept the connection in time."""
    raise httpx.ConnectTimeout("timed out", request=request)


def read_timeout(request: httpx.Request) -> httpx.Response:
    """GitLab accepts the connection and then says nothing."""
    raise httpx.ReadTimeout("timed out", request=request)


def status(code: int) -> Failure:
    """GitLab answers with `code` and a short body."""
    return lambda request: httpx.Response(code, text=f"{code} from GitLab")


FAILURES = [
    pytest.param(refused, 502, id="unreachable"),
    pytest.param(connect_timeout, 504, id="connect-timeout"),
    pytest.param(read_timeout, 504, id="read-timeout"),
    pytest.param(status(500), 502, id="500"),
    pytest.param(status(502), 502, id="502"),
    pytest.param(status(503), 502, id="503"),
]


@pytest.mark.parametrize("path", [PAGE, f"{API}/simple/", FILE], ids=["page", "index", "file"])
@pytest.mark.parametrize(("failure", "expected"), FAILURES)
async def test_gitlab_failure_with_nothing_cached_is_a_gateway_error_with_one_line(
    client: httpx.AsyncClient,
    gitlab_api: respx.MockRouter,
    path: str,
    failure: Failure,
    expected: int,
) -> None:
    """Unreachable or 5xx is 502 and a timeout 504, each with a one-line reason."""
    gitlab_api.get(host="git.example.com").mock(side_effect=failure)
    response = await client.get(path)
    assert response.status_code == expected
    assert response.text.startswith(f"{expected} ")
    assert response.text.count("\n") == 1
    assert response.text.endswith("\n")


async def test_gitlab_429_with_a_date_is_passed_on_in_seconds(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """A Retry-After that is an HTTP-date reaches the client as the seconds left until then."""
    gitlab_api.get(GITLAB + API + "/simple/my-pkg").respond(
        429, headers={"retry-after": formatdate(time.time() + 120, usegmt=True)}
    )
    response = await client.get(PAGE)
    assert response.status_code == 429
    assert 100 < int(response.headers["retry-after"]) <= 120


async def test_gitlab_429_is_passed_on_with_retry_after_and_honoured(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """A rate limit reaches the client with Retry-After, and GitLab is left alone meanwhile."""
    route = gitlab_api.get(GITLAB + API + "/simple/my-pkg").respond(
        429, headers={"retry-after": "30"}
    )
    first = await client.get(PAGE)
    second = await client.get(PAGE)
    assert [(r.status_code, r.headers["retry-after"]) for r in (first, second)] == [
        (429, "30"),
        (429, "30"),
    ]
    assert route.call_count == 1


def unparsable(request: httpx.Request) -> httpx.Response:
    """GitLab answers 200 with a page that cannot be parsed."""
    return httpx.Response(
        200, content=b"<html", headers={"content-type": "application/vnd.pypi.simple.v1+json"}
    )


async def test_an_unreadable_page_with_nothing_cached_is_502(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """A page GitLab sends that cannot be parsed, and no page to fall back on, is a gateway
    error, not a 500."""
    gitlab_api.get(GITLAB + API + "/simple/my-pkg").mock(side_effect=unparsable)
    response = await client.get(PAGE)
    assert response.status_code == 502


@pytest.mark.parametrize(
    "failure", [refused, status(503), unparsable], ids=["unreachable", "503", "unparsable-200"]
)
async def test_an_expired_page_is_served_stale_when_gitlab_fails(
    serve: Serve, gitlab_api: respx.MockRouter, failure: Failure
) -> None:
    """Past page_ttl, a GitLab failure serves the cached page with X-Cache STALE, listing
    only the files the cache holds."""
    asked = itertools.count()
    gitlab_api.get(GITLAB + API + "/simple/my-pkg").mock(
        side_effect=lambda request: (
            failure(request)
            if next(asked)
            else httpx.Response(200, content=PACKAGE_PAGE, headers=HTML)
        )
    )
    gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    async with serve({"cache.page_ttl": 0}) as client:
        await client.get(FILE)
        await client.get(PAGE)
        response = await client.get(PAGE)
    assert (response.status_code, response.headers["x-cache"]) == (200, "STALE")
    assert f"{PROXY}{FILE}#sha256={SHA}" in response.text
    assert SDIST_NAME not in response.text


async def test_an_expired_page_is_revalidated_with_its_etag(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Past page_ttl, GitLab is asked with If-None-Match and its 304 is X-Cache REVALIDATED."""
    route = gitlab_api.get(GITLAB + API + "/simple/my-pkg").mock(
        side_effect=[
            httpx.Response(200, content=PACKAGE_PAGE, headers={**HTML, "etag": 'W/"v1"'}),
            httpx.Response(304),
        ]
    )
    async with serve({"cache.page_ttl": 0}) as client:
        first = await client.get(PAGE)
        second = await client.get(PAGE)
    assert (second.status_code, second.headers["x-cache"]) == (200, "REVALIDATED")
    assert second.text == first.text
    assert route.calls.last.request.headers["if-none-match"] == 'W/"v1"'


# -- health and X-Cache ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_health_answers_200(client: httpx.AsyncClient, method: str) -> None:
    """/-/health is the liveness probe and never needs GitLab."""
    response = await client.request(method, "/-/health")
    assert response.status_code == 200
    if method == "GET":
        assert response.json() == {"status": "ok"}


EVERY_KIND = [
    pytest.param("GET", "/-/health", "BYPASS", id="health"),
    pytest.param("GET", "/foo", "BYPASS", id="unknown-path"),
    pytest.param("GET", "/api/v4/user", "BYPASS", id="unknown-api"),
    pytest.param("GET", f"{API}/files/nothex/{WHEEL_NAME}", "BYPASS", id="bad-sha256"),
    pytest.param("DELETE", PAGE, "BYPASS", id="405"),
    pytest.param("GET", PAGE, "MISS", id="page"),
    pytest.param("GET", FILE, "MISS", id="file"),
    pytest.param("GET", f"{API}/simple/missing/", "BYPASS", id="gitlab-404"),
    pytest.param("GET", f"{API}/simple/broken/", "BYPASS", id="gitlab-500"),
]


@pytest.mark.parametrize(("method", "path", "cache"), EVERY_KIND)
async def test_every_response_carries_x_cache(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, method: str, path: str, cache: str
) -> None:
    """X-Cache is on every answer, BYPASS when nothing was served from or into the cache."""
    gitlab_api.get(GITLAB + API + "/simple/missing").respond(404, json={"message": "404"})
    gitlab_api.get(GITLAB + API + "/simple/broken").respond(500)
    gitlab_api.get(host="git.example.com").mock(side_effect=gitlab_answer)
    response = await client.request(method, path)
    assert response.headers.get("x-cache") == cache


TOOLS = "/api/v4/projects/acme%2Ftools/packages/pypi"


@pytest.mark.parametrize(
    ("path", "route"),
    [
        pytest.param(f"{TOOLS}/files/{SHA}/{WHEEL_NAME}", "file", id="file"),
        pytest.param(f"{TOOLS}/simple/my-pkg", "page", id="page"),
        pytest.param(f"{TOOLS}/simple", "index", id="index"),
    ],
)
async def test_a_request_through_a_full_project_path_is_counted_under_its_route(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, path: str, route: str
) -> None:
    """Metrics label a request by the route of its raw path, `%2F` in the project included."""
    gitlab_api.get(host="git.example.com").mock(side_effect=gitlab_answer)
    assert (await client.get(path)).status_code == 200
    metrics = (await client.get("/-/metrics")).text
    assert f'gitlab_pypi_proxy_requests_total{{cache="MISS",route="{route}"}} 1.0' in metrics


@pytest.mark.parametrize(
    ("raw_path", "status"),
    [
        # Starlette routes no path with a newline: a 404 that only the access log shows.
        pytest.param(f"{API}/simple/a\r\nFAKE 200".encode(), 404, id="newline"),
        pytest.param(f"{API}/simple/a\x1b[2J\x07\\x41\xff".encode("latin-1"), 401, id="raw"),
        pytest.param(f"{API}/simple/a%1b%5b2J%07%ff".encode(), 401, id="encoded"),
    ],
)
async def test_a_path_reaches_the_logs_with_its_control_characters_escaped(
    tmp_path: Path,
    gitlab_api: respx.MockRouter,
    caplog: pytest.LogCaptureFixture,
    raw_path: bytes,
    status: int,
) -> None:
    """Neither the access log nor an error's log line carries a control character of a path."""
    settings = load(
        env={},
        overrides={"upstream.url": GITLAB, "cache.dir": str(tmp_path), "access.mode": "tokens"},
    )
    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    caplog.set_level(logging.INFO, logger="proxy")
    async with LifespanManager(create_app(settings, transport=edge(gitlab_api))) as manager:
        await call_raw(manager.app, raw_path, send)
    assert statuses == [status]
    lines = [r.getMessage() for r in caplog.records if r.name in ("proxy.access", "proxy.app")]
    assert any(" -> 401: " in line for line in lines) is (status == 401)
    assert any(f'"GET {API}/simple/a' in line for line in lines)
    assert all(line.isascii() and line.isprintable() for line in lines)


# -- settings wired in -------------------------------------------------------------------


@pytest.mark.parametrize("path", [PAGE, FILE], ids=["page", "file"])
@pytest.mark.parametrize(
    ("overrides", "user"),
    [
        pytest.param({"upstream.username": "deploy-token-7"}, "deploy-token-7", id="username"),
        pytest.param({"upstream.username": "gitlab-ci-token"}, "gitlab-ci-token", id="job-token"),
    ],
)
async def test_service_token_is_sent_as_basic_auth_instead_of_the_clients(
    serve: Serve,
    gitlab_api: respx.MockRouter,
    path: str,
    overrides: Mapping[str, object],
    user: str,
) -> None:
    """With a token configured, reads carry upstream.username and it, never the client's own."""
    route = gitlab_api.get(host="git.example.com").mock(side_effect=gitlab_answer)
    async with serve(overrides, token=TOKEN) as client:
        response = await client.get(path, headers={"authorization": CLIENT_AUTH})
    assert response.status_code == 200
    sent = route.calls.last.request.headers["authorization"]
    assert basic_user_and_password(sent) == (user, TOKEN)


async def test_service_token_without_a_username_still_goes_as_the_basic_password(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """GitLab ignores the user for access tokens, so some user name is filled in."""
    route = gitlab_api.get(host="git.example.com").mock(side_effect=gitlab_answer)
    async with serve(token=TOKEN) as client:
        await client.get(PAGE)
    user, password = basic_user_and_password(route.calls.last.request.headers["authorization"])
    assert (bool(user), password) == (True, TOKEN)


async def test_service_token_can_come_from_a_file(
    serve: Serve, gitlab_api: respx.MockRouter, tmp_path: Path
) -> None:
    """upstream.token_file (a mounted secret) gives the service token."""
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    secret.chmod(0o600)
    route = gitlab_api.get(host="git.example.com").mock(side_effect=gitlab_answer)
    async with serve({"upstream.token_file": str(secret)}) as client:
        await client.get(PAGE)
    sent = route.calls.last.request.headers["authorization"]
    assert basic_user_and_password(sent)[1] == TOKEN


@pytest.mark.parametrize("path", [PAGE, FILE], ids=["page", "file"])
@pytest.mark.parametrize("authorization", [CLIENT_AUTH, "Bearer glpat-client", None])
async def test_without_a_token_the_clients_authorization_is_forwarded(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter, path: str, authorization: str | None
) -> None:
    """Passthrough: GitLab sees exactly the client's Authorization, or none."""
    route = gitlab_api.get(host="git.example.com").mock(side_effect=gitlab_answer)
    headers = {"authorization": authorization} if authorization else {}
    await client.get(path, headers=headers)
    assert route.calls.last.request.headers.get("authorization") == authorization


async def test_uploads_carry_the_clients_credentials_even_with_a_service_token(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """The service token is for reads: an upload goes with the client's own."""
    route = gitlab_api.post(GITLAB + API).respond(401, json={"message": "401 Unauthorized"})
    headers = {"content-type": "multipart/form-data; boundary=x", "authorization": CLIENT_AUTH}
    async with serve(token=TOKEN) as client:
        await client.post(API, content=b"--x--\r\n", headers=headers)
    assert route.calls.last.request.headers.get("authorization") == CLIENT_AUTH


async def test_upload_without_credentials_is_refused_when_a_service_token_is_set(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """With a service token and no client credentials an upload is a 401; GitLab is not asked."""
    route = gitlab_api.post(GITLAB + API).respond(201)
    async with serve(token=TOKEN) as client:
        response = await client.post(
            API, content=b"--x--\r\n", headers={"content-type": "multipart/form-data; boundary=x"}
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="gitlab-pypi-proxy"'
    assert route.call_count == 0


@pytest.mark.parametrize(
    ("overrides", "headers", "base"),
    [
        pytest.param({}, {}, PROXY, id="host"),
        pytest.param({}, {"host": "pypi.local:8080"}, "http://pypi.local:8080", id="host-port"),
        pytest.param(
            {},
            {"x-forwarded-proto": "https", "x-forwarded-host": "evil.example"},
            PROXY,
            id="untrusted-forwarded",
        ),
        pytest.param(
            {"server.trusted_proxies": ["127.0.0.1"]},
            {"x-forwarded-proto": "https", "x-forwarded-host": "pypi.example.org"},
            "https://pypi.example.org",
            id="trusted-forwarded",
        ),
        pytest.param(
            {"server.trusted_proxies": ["127.0.0.0/8"]},
            {"x-forwarded-proto": "https", "x-forwarded-host": "pypi.example.org"},
            "https://pypi.example.org",
            id="trusted-network",
        ),
        pytest.param(
            {"server.trusted_proxies": ["10.0.0.0/8"]},
            {"x-forwarded-proto": "https", "x-forwarded-host": "evil.example"},
            PROXY,
            id="other-network",
        ),
        pytest.param(
            {"server.public_url": "https://pypi.example.org"},
            {"host": "other.example"},
            "https://pypi.example.org",
            id="public-url",
        ),
    ],
)
async def test_links_use_the_base_url_the_settings_allow(
    serve: Serve,
    gitlab_api: respx.MockRouter,
    overrides: Mapping[str, object],
    headers: Mapping[str, str],
    base: str,
) -> None:
    """Host by default, X-Forwarded-* only from trusted_proxies, public_url above both."""
    gitlab_api.get(GITLAB + API + "/simple/my-pkg").respond(200, content=PACKAGE_PAGE, headers=HTML)
    async with serve(overrides) as client:
        response = await client.get(PAGE, headers=headers)
    assert f'href="{base}{FILE}#sha256={SHA}"' in response.text


async def test_a_host_header_that_is_not_a_host_name_is_400(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """A Host that cannot go into a link is refused rather than echoed into pages."""
    catch_all = gitlab_api.route()
    response = await client.get(PAGE, headers={"host": 'a"><script>'})
    assert (response.status_code, response.headers["x-cache"]) == (400, "BYPASS")
    assert catch_all.call_count == 0


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [("GET", PAGE, 404), ("GET", f"{API}/simple/", 404), ("GET", FILE, 404), ("POST", API, 503)],
)
async def test_offline_without_a_cached_answer_never_asks_gitlab(
    serve: Serve, gitlab_api: respx.MockRouter, method: str, path: str, expected: int
) -> None:
    """cache.offline: a miss is 404 naming offline mode, an upload 503; GitLab is not asked."""
    catch_all = gitlab_api.route()
    async with serve({"cache.offline": True}) as client:
        response = await client.request(method, path, content=b"" if method == "POST" else None)
    assert response.status_code == expected
    assert "offline" in response.text
    assert catch_all.call_count == 0


async def test_offline_page_lists_only_the_files_the_cache_holds(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A page warmed online, served offline, links the cached wheel and not the missing sdist."""
    gitlab_api.get(GITLAB + API + "/simple/my-pkg").respond(200, content=PACKAGE_PAGE, headers=HTML)
    gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    async with serve() as online:
        await online.get(PAGE)
        await online.get(FILE)
    gitlab_api.reset()
    async with serve({"cache.offline": True}) as offline:
        page = await offline.get(PAGE)
        file = await offline.get(FILE)
    assert page.headers["x-cache"] == "HIT"
    assert WHEEL_NAME in page.text
    assert SDIST_NAME not in page.text
    assert (file.headers["x-cache"], file.content) == ("HIT", WHEEL)
    assert gitlab_api.calls.call_count == 0


async def test_the_file_cache_survives_a_restart(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A second proxy on the same cache.dir serves a file fetched by the first without GitLab."""
    route = gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    async with serve() as first:
        await first.get(FILE)
    async with serve() as second:
        response = await second.get(FILE)
    assert (response.headers["x-cache"], response.content) == ("HIT", WHEEL)
    assert route.call_count == 1


async def test_page_ttl_zero_asks_gitlab_every_time(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """cache.page_ttl bounds how long a page is served without asking GitLab."""
    route = gitlab_api.get(GITLAB + API + "/simple/my-pkg").respond(
        200, content=PACKAGE_PAGE, headers=HTML
    )
    async with serve({"cache.page_ttl": 0}) as client:
        answers = [await client.get(PAGE) for _ in range(2)]
    assert [a.headers["x-cache"] for a in answers] == ["MISS", "MISS"]
    assert route.call_count == 2


async def test_oversized_request_headers_get_431_and_gitlab_is_not_asked(
    client: httpx.AsyncClient, gitlab_api: respx.MockRouter
) -> None:
    """A request head above 64 KiB is refused with 431 before anything is forwarded."""
    route = gitlab_api.route().respond(200, content=PACKAGE_PAGE, headers=HTML)
    response = await client.get(PAGE, headers={"x-padding": "a" * 70_000})
    assert response.status_code == 431
    assert response.headers["x-cache"] == "BYPASS"
    assert route.call_count == 0


@pytest.mark.anyio
async def test_a_file_the_server_sends_itself_counts_toward_the_bytes_served() -> None:
    """A zero-copy send message counts its `count` as file bytes served from the cache."""
    tally = Tally()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-cache", b"HIT")]}
        )
        await send(
            {"type": EXTENSION, "file": None, "offset": 0, "count": 1234, "more_body": False}
        )

    async def receive() -> Message:
        raise AssertionError("not read")

    async def send(message: Message) -> None:
        pass

    path = f"/api/v4/projects/42/packages/pypi/files/{'a' * 64}/a-1.0-py3-none-any.whl"
    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    await Observed(app, metrics=Metrics(), tally=tally)(scope, receive, send)
    assert tally.counts().bytes_from_cache == 1234
