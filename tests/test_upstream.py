"""GitLab client: redirects without credentials, errors translated at the edge."""

from __future__ import annotations

import time
from email.utils import formatdate

import httpx
import pytest
import respx

from proxy.errors import UpstreamStatus, UpstreamUnavailable
from proxy.upstream import GitLab, basic_authorization

pytestmark = pytest.mark.anyio
BASE = "https://git.example.com/gitlab"
FILE = "/api/v4/projects/42/packages/pypi/files/abc/a-1.0.tar.gz"
AUTH = basic_authorization("deploy", "s3cret")


def _gitlab() -> GitLab:
    return GitLab(url=BASE, connect_timeout=1.0, read_timeout=1.0)


@respx.mock
async def test_page_request_keeps_the_relative_root_and_sends_credentials() -> None:
    """A page is asked for under GitLab's relative URL root with the given credentials."""
    route = respx.get(BASE + "/api/v4/projects/42/packages/pypi/simple/a").respond(
        200, html="<html></html>", headers={"ETag": 'W/"1"', "Set-Cookie": "x=y"}
    )
    answer = await _gitlab().get(
        "/api/v4/projects/42/packages/pypi/simple/a", accept="text/html", authorization=AUTH
    )
    assert route.calls.last.request.headers["authorization"] == AUTH
    assert answer.status == 200
    assert answer.headers == {"content-type": "text/html; charset=utf-8", "etag": 'W/"1"'}


@respx.mock
async def test_a_cookie_from_one_answer_never_goes_with_a_later_request() -> None:
    """GitLab (or anything before it) setting a cookie in an answer to one caller: no later
    request, whoever it is for, carries it; the proxy keeps no cookies."""
    page = "/api/v4/projects/42/packages/pypi/simple/a"
    route = respx.get(BASE + page).respond(
        200, html="<html></html>", headers={"Set-Cookie": "_gitlab_session=alice; Path=/"}
    )
    gitlab = _gitlab()
    await gitlab.get(page, accept="text/html", authorization=AUTH)
    await gitlab.get(page, accept="text/html", authorization=None)
    assert [call.request.headers.get("cookie") for call in route.calls] == [None, None]


@respx.mock
async def test_download_redirect_to_another_origin_carries_no_credentials() -> None:
    """Following GitLab's 302 to object storage drops Authorization (design 3.2)."""
    respx.get(BASE + FILE).respond(302, headers={"Location": "https://s3.example.net/b/x?sig=1"})
    storage = respx.get("https://s3.example.net/b/x?sig=1").respond(200, content=b"bytes")
    async with _gitlab().download(FILE, authorization=AUTH) as download:
        body = b"".join([chunk async for chunk in download.chunks])
    assert body == b"bytes"
    assert "authorization" not in storage.calls.last.request.headers


@respx.mock
async def test_download_redirect_within_gitlab_keeps_credentials() -> None:
    """A redirect that stays on GitLab's origin still carries the credentials."""
    respx.get(BASE + FILE).respond(302, headers={"Location": BASE + "/other"})
    same = respx.get(BASE + "/other").respond(200, content=b"x")
    async with _gitlab().download(FILE, authorization=AUTH) as download:
        assert download.status == 200
    assert same.calls.last.request.headers["authorization"] == AUTH


@pytest.mark.parametrize(("status", "retry"), [(500, None), (503, None), (429, 30.0)])
@respx.mock
async def test_download_server_errors_raise_upstream_status(
    status: int, retry: float | None
) -> None:
    """5xx and 429 become UpstreamStatus, with Retry-After carried along."""
    headers = {"Retry-After": "30"} if retry else {}
    respx.get(BASE + FILE).respond(status, headers=headers)
    with pytest.raises(UpstreamStatus) as caught:
        async with _gitlab().download(FILE, authorization=None):
            pass
    assert (caught.value.status, caught.value.retry_after) == (status, retry)


@respx.mock
async def test_a_rate_limit_with_an_http_date_keeps_gitlab_quiet_until_then() -> None:
    """A 429 whose Retry-After is a date is carried along, and GitLab is not asked meanwhile."""
    route = respx.get(BASE + FILE).respond(
        429, headers={"Retry-After": formatdate(time.time() + 120, usegmt=True)}
    )
    gitlab = _gitlab()
    for _ in range(2):
        with pytest.raises(UpstreamStatus) as caught:
            async with gitlab.download(FILE, authorization=None):
                pass
        assert caught.value.retry_after is not None
        assert 100 < caught.value.retry_after <= 120
    assert route.call_count == 1


@respx.mock
async def test_download_client_errors_come_back_with_their_body() -> None:
    """A 401 is an answer to pass on, with WWW-Authenticate, not an exception."""
    respx.get(BASE + FILE).respond(
        401, json={"message": "401 Unauthorized"}, headers={"WWW-Authenticate": 'Basic realm="x"'}
    )
    async with _gitlab().download(FILE, authorization=None) as download:
        assert download.status == 401
        assert download.headers["www-authenticate"] == 'Basic realm="x"'
        assert b"401 Unauthorized" in download.error_body


@pytest.mark.parametrize(
    ("error", "timeout"),
    [(httpx.ConnectError("refused"), False), (httpx.ConnectTimeout("slow"), True)],
)
@respx.mock
async def test_transport_failures_become_upstream_unavailable(
    error: Exception, timeout: bool
) -> None:
    """httpx's exceptions never leave the upstream module."""
    respx.get(BASE + "/api/v4/projects/1/packages/pypi/simple").mock(side_effect=error)
    with pytest.raises(UpstreamUnavailable) as caught:
        await _gitlab().get(
            "/api/v4/projects/1/packages/pypi/simple", accept="text/html", authorization=None
        )
    assert caught.value.timeout is timeout


def test_repr_names_the_url_only() -> None:
    """The client's repr shows where it points and nothing else."""
    assert repr(_gitlab()) == f"GitLab(url={BASE!r})"
