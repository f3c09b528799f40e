"""Public dependencies: GitLab's redirect of an unknown name followed, redirected or denied."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest
import respx

from tests.clients import installed_version, new_venv, pip_install, uv_install
from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab
from tests.fakeindex import FakeIndex
from tests.inproc import GITLAB, Serve, gitlab_page
from tests.scenario import SERVICE, Start, acme, serve

API = "/api/v4/projects/42/packages/pypi"
PYPI = "https://pypi.org/simple/requests/"
FILES = "https://files.pythonhosted.org/packages/ab/cd"
WHEEL_NAME = "requests-2.0-py3-none-any.whl"
WHEEL = b"PK\x03\x04 requests wheel"
SHA = hashlib.sha256(WHEEL).hexdigest()
METADATA = b"Metadata-Version: 2.1\nName: requests\nVersion: 2.0\n\n"
META_SHA = hashlib.sha256(METADATA).hexdigest()
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
JSON = {"content-type": JSON_TYPE}
TOKEN = "svc-token-0123456789"


def public_page(*extra: dict[str, object], upload_time: str = "2020-01-01T00:00:00Z") -> bytes:
    """pypi.org's PEP 691 page of requests: one wheel (yanked, with core metadata and
    PEP 700 keys), one sdist without a hash, and `extra` entries."""
    files = [
        {
            "filename": WHEEL_NAME,
            "url": f"{FILES}/{WHEEL_NAME}",
            "hashes": {"sha256": SHA},
            "requires-python": ">=3.8",
            "yanked": "broken",
            "core-metadata": {"sha256": META_SHA},
            "upload-time": upload_time,
            "size": len(WHEEL),
        },
        {"filename": "requests-2.0.tar.gz", "url": f"{FILES}/requests-2.0.tar.gz", "hashes": {}},
        *extra,
    ]
    return json.dumps({"meta": {"api-version": "1.1"}, "name": "requests", "files": files}).encode()


def forwarded(gitlab_api: respx.MockRouter, location: str = PYPI) -> respx.Route:
    """GitLab answers the page of requests with its forwarding 302."""
    return gitlab_api.get(GITLAB + API + "/simple/requests").respond(
        302, headers={"location": location, "content-type": "text/plain"}
    )


pytestmark = pytest.mark.anyio


# -- pages (in process) -------------------------------------------------------------------


async def test_follow_answers_200_with_links_on_the_proxy(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """The public page is served as 200 MISS, each hashed file on the scope's files route,
    with requires-python, yanked, core metadata and PEP 700 keys kept; unhashed files dropped."""
    forwarded(gitlab_api)
    gitlab_api.get(PYPI).respond(200, content=public_page(), headers=JSON)
    async with serve(token=TOKEN) as client:
        response = await client.get(f"{API}/simple/requests/", headers={"accept": JSON_TYPE})
    assert (response.status_code, response.headers["x-cache"]) == (200, "MISS")
    (entry,) = response.json()["files"]
    assert entry == {
        "filename": WHEEL_NAME,
        "url": f"http://proxy.test{API}/files/{SHA}/{WHEEL_NAME}#sha256={SHA}",
        "hashes": {"sha256": SHA},
        "requires-python": ">=3.8",
        "yanked": "broken",
        "core-metadata": {"sha256": META_SHA},
        "dist-info-metadata": {"sha256": META_SHA},
        "upload-time": "2020-01-01T00:00:00Z",
        "size": len(WHEEL),
    }


async def test_html_clients_get_the_followed_page_as_html(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A client asking for HTML gets PEP 503 anchors with data-yanked and data-core-metadata."""
    forwarded(gitlab_api)
    gitlab_api.get(PYPI).respond(200, content=public_page(), headers=JSON)
    async with serve() as client:
        response = await client.get(f"{API}/simple/requests/", headers={"accept": "text/html"})
    assert response.headers["content-type"].startswith("text/html")
    assert f'href="http://proxy.test{API}/files/{SHA}/{WHEEL_NAME}#sha256={SHA}"' in response.text
    assert 'data-yanked="broken"' in response.text
    assert f'data-core-metadata="sha256={META_SHA}"' in response.text
    assert "tar.gz" not in response.text


async def test_the_public_index_never_gets_credentials(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Neither the service token nor the client's Authorization reaches the public index."""
    forwarded(gitlab_api)
    page = gitlab_api.get(PYPI).respond(200, content=public_page(), headers=JSON)
    wheel = gitlab_api.get(f"{FILES}/{WHEEL_NAME}").respond(200, content=WHEEL)
    async with serve(token=TOKEN) as client:
        await client.get(f"{API}/simple/requests/", headers={"authorization": "Bearer mine"})
        await client.get(f"{API}/files/{SHA}/{WHEEL_NAME}", headers={"authorization": "Bearer x"})
    assert gitlab_api.calls.last.request.url == f"{FILES}/{WHEEL_NAME}"
    for route in (page, wheel):
        assert route.called
        assert all("authorization" not in call.request.headers for call in route.calls)


async def test_followed_files_and_metadata_come_from_the_public_host_once(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A followed page's wheel and its .metadata are fetched from their public URLs,
    verified and then served from the cache; GitLab's files route is never asked."""
    forwarded(gitlab_api)
    gitlab_api.get(PYPI).respond(200, content=public_page(), headers=JSON)
    wheel = gitlab_api.get(f"{FILES}/{WHEEL_NAME}").respond(200, content=WHEEL)
    meta = gitlab_api.get(f"{FILES}/{WHEEL_NAME}.metadata").respond(200, content=METADATA)
    gitlab_files = gitlab_api.get(url__startswith=GITLAB + API + "/files/").respond(404)
    async with serve(token=TOKEN) as client:
        await client.get(f"{API}/simple/requests/")
        answers = [await client.get(f"{API}/files/{SHA}/{WHEEL_NAME}") for _ in range(2)]
        metadata = await client.get(f"{API}/files/{META_SHA}/{WHEEL_NAME}.metadata")
    assert [(a.content, a.headers["x-cache"]) for a in answers] == [
        (WHEEL, "MISS"),
        (WHEEL, "HIT"),
    ]
    assert (metadata.status_code, metadata.content) == (200, METADATA)
    assert (wheel.call_count, meta.call_count, gitlab_files.call_count) == (1, 1, 0)


async def test_a_public_file_listed_for_another_project_is_dropped(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A followed page gives only files of its own project."""
    other = {"filename": "acme_tools-1.0-py3-none-any.whl", "url": f"{FILES}/a.whl"}
    other["hashes"] = {"sha256": "b" * 64}
    forwarded(gitlab_api)
    gitlab_api.get(PYPI).respond(200, content=public_page(other), headers=JSON)
    async with serve() as client:
        response = await client.get(f"{API}/simple/requests/", headers={"accept": JSON_TYPE})
    assert [f["filename"] for f in response.json()["files"]] == [WHEEL_NAME]


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"forwarding.mode": "deny"}, "forwarding.mode is deny"),
        ({"forwarding.never": ["acme-*", "req*"]}, "matches forwarding.never"),
        ({"forwarding.allowed_hosts": ["files.pythonhosted.org"]}, "not in forwarding.allowed"),
    ],
)
async def test_refused_forwarding_is_a_404_with_a_reason(
    serve: Serve, gitlab_api: respx.MockRouter, settings: dict[str, object], reason: str
) -> None:
    """deny, a never pattern and a host not allowed answer 404 saying why; nothing public is asked."""
    forwarded(gitlab_api)
    public = gitlab_api.get(PYPI).respond(200, content=public_page(), headers=JSON)
    async with serve(settings) as client:
        response = await client.get(f"{API}/simple/requests/")
    assert response.status_code == 404
    assert reason in response.json()["message"]
    assert not public.called


async def test_a_public_redirect_leaving_the_allowed_hosts_is_refused(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A redirect chain from the public index to another host is not followed: 502."""
    forwarded(gitlab_api)
    gitlab_api.get(PYPI).respond(302, headers={"location": "https://evil.example/simple/x/"})
    evil = gitlab_api.get(host="evil.example").respond(200, content=public_page(), headers=JSON)
    async with serve() as client:
        response = await client.get(f"{API}/simple/requests/")
    assert response.status_code == 502
    assert "evil.example is not in forwarding.allowed_hosts" in response.text
    assert not evil.called


async def test_a_redirect_within_the_allowed_hosts_is_followed(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """The public index may redirect to another allowed host (and is followed there)."""
    moved = "https://files.pythonhosted.org/simple/requests/"
    forwarded(gitlab_api)
    gitlab_api.get(PYPI).respond(301, headers={"location": moved})
    gitlab_api.get(moved).respond(200, content=public_page(), headers=JSON)
    async with serve() as client:
        response = await client.get(f"{API}/simple/requests/", headers={"accept": JSON_TYPE})
    assert [f["filename"] for f in response.json()["files"]] == [WHEEL_NAME]


async def test_followed_pages_are_revalidated_with_the_public_etag(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Within page_ttl a followed page is a HIT; after it, GitLab is asked again (its own
    ETag is not sent) and the public index with its ETag: 304 gives REVALIDATED."""
    gitlab = forwarded(gitlab_api)
    public = gitlab_api.get(PYPI)
    public.side_effect = [
        httpx.Response(200, content=public_page(), headers={**JSON, "etag": '"v1"'}),
        httpx.Response(304, headers={"etag": '"v1"'}),
    ]
    async with serve({"cache.page_ttl": 0.2}) as client:
        statuses = [(await client.get(f"{API}/simple/requests/")).headers["x-cache"]]
        statuses.append((await client.get(f"{API}/simple/requests/")).headers["x-cache"])
        deadline = time.monotonic() + 5
        while statuses[-1] == "HIT" and time.monotonic() < deadline:
            statuses.append((await client.get(f"{API}/simple/requests/")).headers["x-cache"])
    assert statuses[:2] == ["MISS", "HIT"] and statuses[-1] == "REVALIDATED"
    assert public.calls.last.request.headers["if-none-match"] == '"v1"'
    assert "if-none-match" not in gitlab.calls.last.request.headers


async def test_a_name_gitlab_starts_holding_wins_at_revalidation(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Once GitLab answers the name's page itself, the followed page is gone at the next
    revalidation: GitLab's page is served, not the public one."""
    gitlab = gitlab_api.get(GITLAB + API + "/simple/requests")
    own = f'<a href="{GITLAB}{API}/files/{"c" * 64}/requests-9.0.tar.gz">requests-9.0.tar.gz</a>'
    gitlab.side_effect = [
        httpx.Response(302, headers={"location": PYPI}),
        httpx.Response(200, content=gitlab_page("requests", own), headers={"etag": '"g"'}),
    ]
    gitlab_api.get(PYPI).respond(200, content=public_page(), headers=JSON)
    async with serve({"cache.page_ttl": 0}) as client:
        first = await client.get(f"{API}/simple/requests/")
        second = await client.get(f"{API}/simple/requests/")
    assert WHEEL_NAME in first.text and WHEEL_NAME not in second.text
    assert "requests-9.0.tar.gz" in second.text


async def test_a_stale_followed_page_is_served_when_the_public_index_is_down(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """When the public index fails after page_ttl, the stored page is served STALE."""
    forwarded(gitlab_api)
    public = gitlab_api.get(PYPI)
    public.side_effect = [
        httpx.Response(200, content=public_page(), headers=JSON),
        httpx.ConnectError("down"),
    ]
    async with serve({"cache.page_ttl": 0}) as client:
        await client.get(f"{API}/simple/requests/")
        response = await client.get(f"{API}/simple/requests/")
    assert (response.status_code, response.headers["x-cache"]) == (200, "STALE")


@pytest.mark.parametrize(
    ("upload_time", "listed"),
    [("2020-01-01T00:00:00Z", True), ("", False), ("2999-01-01T00:00:00Z", False)],
)
async def test_min_age_leaves_out_new_and_undated_files(
    serve: Serve, gitlab_api: respx.MockRouter, upload_time: str, listed: bool
) -> None:
    """With min_age, a file uploaded too recently, or with no upload time, is left out."""
    forwarded(gitlab_api)
    gitlab_api.get(PYPI).respond(200, content=public_page(upload_time=upload_time), headers=JSON)
    async with serve({"forwarding.min_age": "7d"}) as client:
        response = await client.get(f"{API}/simple/requests/", headers={"accept": JSON_TYPE})
    assert bool(response.json()["files"]) is listed


async def test_min_age_does_not_touch_gitlabs_own_packages(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """GitLab's own pages are served whole whatever min_age says."""
    anchor = f'<a href="{GITLAB}{API}/files/{SHA}/{WHEEL_NAME}#sha256={SHA}">{WHEEL_NAME}</a>'
    gitlab_api.get(GITLAB + API + "/simple/requests").respond(
        200, content=gitlab_page("requests", anchor)
    )
    async with serve({"forwarding.min_age": "7d"}) as client:
        response = await client.get(f"{API}/simple/requests/")
    assert WHEEL_NAME in response.text


async def test_gitlab_ee_forward_links_are_served_through_the_proxy(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A firewall page's forward/ link becomes the files route; the file is asked of
    GitLab's forward/ URL with the service token, and its redirect followed without it."""
    forward = f"{API}/forward/requests/files.pythonhosted.org/packages/ab/cd/{WHEEL_NAME}"
    anchor = f'<a href="{GITLAB}{forward}#sha256={SHA}">{WHEEL_NAME}</a>'
    gitlab_api.get(GITLAB + API + "/simple/requests").respond(
        200, content=gitlab_page("requests", anchor)
    )
    hop = gitlab_api.get(GITLAB + forward).respond(
        302, headers={"location": f"{FILES}/{WHEEL_NAME}"}
    )
    wheel = gitlab_api.get(f"{FILES}/{WHEEL_NAME}").respond(200, content=WHEEL)
    async with serve(token=TOKEN) as client:
        page = await client.get(f"{API}/simple/requests/")
        response = await client.get(f"{API}/files/{SHA}/{WHEEL_NAME}")
    assert f"{API}/files/{SHA}/{WHEEL_NAME}#sha256={SHA}" in page.text
    assert "forward" not in page.text
    assert response.content == WHEEL
    assert "authorization" in hop.calls.last.request.headers
    assert "authorization" not in wheel.calls.last.request.headers


async def test_gitlab_ee_forward_redirect_to_a_host_not_allowed_is_refused(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """GitLab's forward/ route redirecting outside the allowed hosts gives no file."""
    forward = f"{API}/forward/requests/evil.example/{WHEEL_NAME}"
    anchor = f'<a href="{GITLAB}{forward}#sha256={SHA}">{WHEEL_NAME}</a>'
    gitlab_api.get(GITLAB + API + "/simple/requests").respond(
        200, content=gitlab_page("requests", anchor)
    )
    gitlab_api.get(GITLAB + forward).respond(
        302, headers={"location": f"https://evil.example/{WHEEL_NAME}"}
    )
    evil = gitlab_api.get(host="evil.example").respond(200, content=WHEEL)
    async with serve(token=TOKEN) as client:
        await client.get(f"{API}/simple/requests/")
        response = await client.get(f"{API}/files/{SHA}/{WHEEL_NAME}")
    assert response.status_code == 502
    assert not evil.called
