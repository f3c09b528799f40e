"""Public dependencies: GitLab's redirect of an unknown name followed, redirected or denied."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx

from tests.clients import installed_version, new_venv, pip_install, uv_install
from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab
from tests.fakeindex import FakeIndex
from tests.inproc import GITLAB, Serve, gitlab_page
from tests.scenario import SERVICE, Start, acme, publish
from tests.scenario import serve as serve_proxy

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


# -- in process: GitLab and the public index mocked at the HTTP edge ----------------------


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_followed_files_and_metadata_come_from_the_public_host_once(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A followed page's wheel and its .metadata (at the wheel's URL + ".metadata", verified
    against the core-metadata hash) come from their public URLs, then from the cache;
    GitLab's files route is never asked."""
    forwarded(gitlab_api)
    gitlab_api.get(PYPI).respond(200, content=public_page(), headers=JSON)
    wheel = gitlab_api.get(f"{FILES}/{WHEEL_NAME}").respond(200, content=WHEEL)
    meta = gitlab_api.get(f"{FILES}/{WHEEL_NAME}.metadata").respond(200, content=METADATA)
    gitlab_files = gitlab_api.get(url__startswith=GITLAB + API + "/files/").respond(404)
    async with serve(token=TOKEN) as client:
        await client.get(f"{API}/simple/requests/")
        answers = [await client.get(f"{API}/files/{SHA}/{WHEEL_NAME}") for _ in range(2)]
        metadata = await client.get(f"{API}/files/{SHA}/{WHEEL_NAME}.metadata")
    assert [(a.content, a.headers["x-cache"]) for a in answers] == [
        (WHEEL, "MISS"),
        (WHEEL, "HIT"),
    ]
    assert (metadata.status_code, metadata.content) == (200, METADATA)
    assert (wheel.call_count, meta.call_count, gitlab_files.call_count) == (1, 1, 0)


@pytest.mark.anyio
async def test_a_public_page_naming_a_private_sha256_gets_no_bytes_from_the_cache(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A public page listing the sha256 of a file the cache got from another project's
    GitLab is no access to it: GitLab decides (404), and the public URL is not asked."""
    secret = "secret-1.0-py3-none-any.whl"
    other = "/api/v4/projects/43/packages/pypi"
    gitlab_api.get(GITLAB + f"{other}/files/{SHA}/{secret}").respond(200, content=WHEEL)
    forwarded(gitlab_api)
    gitlab_api.get(PYPI).respond(200, content=public_page(), headers=JSON)
    public = gitlab_api.get(f"{FILES}/{WHEEL_NAME}").respond(200, content=WHEEL)
    head = gitlab_api.head(GITLAB + f"{API}/files/{SHA}/{WHEEL_NAME}").respond(404)
    async with serve(token=TOKEN) as client:
        assert (await client.get(f"{other}/files/{SHA}/{secret}")).content == WHEEL
        await client.get(f"{API}/simple/requests/")
        response = await client.get(f"{API}/files/{SHA}/{WHEEL_NAME}")
    assert response.status_code == 404
    assert head.called
    assert not public.called


@pytest.mark.anyio
async def test_a_public_file_listed_for_another_project_is_dropped(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A followed page gives only files of its own project."""
    other: dict[str, object] = {"filename": "acme_tools-1.0-py3-none-any.whl"}
    other |= {"url": f"{FILES}/a.whl", "hashes": {"sha256": "b" * 64}}
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
@pytest.mark.anyio
async def test_refused_forwarding_is_a_404_with_a_reason(
    serve: Serve, gitlab_api: respx.MockRouter, settings: dict[str, object], reason: str
) -> None:
    """deny, a never pattern and a host not allowed give 404 saying why; nothing public is asked."""
    forwarded(gitlab_api)
    public = gitlab_api.get(PYPI).respond(200, content=public_page(), headers=JSON)
    async with serve(settings) as client:
        response = await client.get(f"{API}/simple/requests/")
    assert response.status_code == 404
    assert reason in response.json()["message"]
    assert not public.called


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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
    assert statuses[:2] == ["MISS", "HIT"]
    assert statuses[-1] == "REVALIDATED"
    assert public.calls.last.request.headers["if-none-match"] == '"v1"'
    assert "if-none-match" not in gitlab.calls.last.request.headers


@pytest.mark.anyio
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
    assert WHEEL_NAME in first.text
    assert WHEEL_NAME not in second.text
    assert "requests-9.0.tar.gz" in second.text


@pytest.mark.anyio
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
@pytest.mark.anyio
async def test_min_age_leaves_out_new_and_undated_files(
    serve: Serve, gitlab_api: respx.MockRouter, upload_time: str, listed: bool
) -> None:
    """With min_age, a file uploaded too recently, or with no upload time, is left out."""
    forwarded(gitlab_api)
    gitlab_api.get(PYPI).respond(200, content=public_page(upload_time=upload_time), headers=JSON)
    async with serve({"forwarding.min_age": "7d"}) as client:
        response = await client.get(f"{API}/simple/requests/", headers={"accept": JSON_TYPE})
    assert bool(response.json()["files"]) is listed


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


# -- end to end: real pip and uv, a proxy process, the fake GitLab and a fake public index --


@pytest.fixture
def index() -> Iterator[FakeIndex]:
    """A running fake public index, holding `dep-pkg` 1.0."""
    with FakeIndex() as fake:
        fake.add("dep-pkg", "1.0")
        yield fake


@pytest.fixture
def forwarding_gitlab(index: FakeIndex) -> Iterator[FakeGitLab]:
    """A fake GitLab forwarding unknown names to `index`, with app-pkg (needing dep-pkg)
    in project 42."""
    with FakeGitLab(forwarding_url=f"{index.url}/simple/") as gitlab:
        acme(gitlab)
        filename, content = make_wheel("app-pkg", "1.0", requires=("dep-pkg",))
        gitlab.add_file(42, "app-pkg", "1.0", filename, content)
        yield gitlab


def _proxy(
    start: Start, gitlab: FakeGitLab, index: FakeIndex, cache: Path, *args: str, **env: str
) -> str:
    """A proxy allowing `index` as the public host; returns project 42's simple URL."""
    proxy = serve_proxy(
        start,
        gitlab,
        cache,
        *args,
        token=SERVICE,
        GITLAB_PYPI_PROXY_FORWARDING_ALLOWED_HOSTS=index.host,
        **env,
    )
    return f"{proxy.url}{API}/simple"


@pytest.mark.e2e
@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_a_public_dependency_installs_and_is_then_served_offline(
    forwarding_gitlab: FakeGitLab,
    index: FakeIndex,
    start_proxy: Start,
    tmp_path: Path,
    installer: str,
) -> None:
    """A GitLab package whose dependency is only on the public index installs; with the
    index stopped it installs again from a fresh venv, and from a proxy in offline mode."""
    cache = tmp_path / "cache"
    url = _proxy(start_proxy, forwarding_gitlab, index, cache)

    def install(where: str, venv: str) -> None:
        python = new_venv(tmp_path / venv)
        if installer == "uv":
            result = uv_install(python, where, "app-pkg", cache=tmp_path / f"uv-{venv}")
        else:
            result = pip_install(python, where, "app-pkg")
        assert result.returncode == 0, result.stdout + result.stderr
        assert installed_version(python, "dep_pkg") == "1.0"

    install(url, "one")
    assert any(path.startswith("/files/dep_pkg") for path in index.paths)
    index.stop()
    install(url, "two")
    offline = _proxy(start_proxy, forwarding_gitlab, index, cache, "--offline")
    forwarding_gitlab.set_down(True)
    install(offline, "three")
    assert all("authorization" not in headers for headers in index.headers)


@pytest.mark.e2e
def test_a_name_in_gitlab_and_on_the_public_index_comes_from_gitlab(
    forwarding_gitlab: FakeGitLab, index: FakeIndex, start_proxy: Start, tmp_path: Path
) -> None:
    """GitLab's own dep-pkg 2.0 is served; the public dep-pkg is never asked for."""
    filename, _ = publish(forwarding_gitlab, 42, "dep-pkg", "2.0")
    url = _proxy(start_proxy, forwarding_gitlab, index, tmp_path / "cache")
    page = httpx.get(f"{url}/dep-pkg/")
    assert page.status_code == 200
    assert filename in page.text
    assert "dep_pkg-1.0" not in page.text
    assert index.paths == []


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("env", "status", "asked"),
    [
        ({}, 200, True),
        ({"GITLAB_PYPI_PROXY_FORWARDING_MODE": "redirect"}, 302, False),
        ({"GITLAB_PYPI_PROXY_FORWARDING_MODE": "deny"}, 404, False),
        ({"GITLAB_PYPI_PROXY_FORWARDING_NEVER": "acme-*,dep-*"}, 404, False),
    ],
)
def test_each_forwarding_mode_against_real_servers(
    forwarding_gitlab: FakeGitLab,
    index: FakeIndex,
    start_proxy: Start,
    tmp_path: Path,
    env: dict[str, str],
    status: int,
    asked: bool,
) -> None:
    """follow answers 200 from the public index, redirect passes GitLab's 302 on, deny and
    a never pattern answer 404 without asking the public index."""
    url = _proxy(start_proxy, forwarding_gitlab, index, tmp_path / "cache", **env)
    response = httpx.get(f"{url}/dep-pkg/")
    assert response.status_code == status
    assert bool(index.paths) is asked
    if status == 302:
        assert response.headers["location"] == f"{index.url}/simple/dep-pkg/"


@pytest.mark.e2e
def test_a_gitlab_redirect_to_a_host_not_allowed_is_not_followed(
    forwarding_gitlab: FakeGitLab, index: FakeIndex, start_proxy: Start, tmp_path: Path
) -> None:
    """With the index's host not in allowed_hosts (the default: pypi.org only), 404."""
    proxy = serve_proxy(start_proxy, forwarding_gitlab, tmp_path / "cache", token=SERVICE)
    response = httpx.get(f"{proxy.url}{API}/simple/dep-pkg/")
    assert response.status_code == 404
    assert index.paths == []


@pytest.mark.e2e
def test_a_public_redirect_chain_leaving_the_allowed_hosts_is_refused(
    forwarding_gitlab: FakeGitLab, index: FakeIndex, start_proxy: Start, tmp_path: Path
) -> None:
    """The public index redirecting its page to another (not allowed) server: 502, and
    that server is never asked."""
    with FakeIndex() as elsewhere:
        elsewhere.add("dep-pkg", "1.0")
        index.redirect_pages_to = elsewhere.url
        url = _proxy(start_proxy, forwarding_gitlab, index, tmp_path / "cache")
        response = httpx.get(f"{url}/dep-pkg/")
        assert response.status_code == 502
        assert elsewhere.paths == []


@pytest.mark.e2e
def test_min_age_leaves_out_a_too_new_public_file(
    forwarding_gitlab: FakeGitLab, index: FakeIndex, start_proxy: Start, tmp_path: Path
) -> None:
    """A public file uploaded a moment ago is not listed under min_age = 7d; an old one is."""
    fresh = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    index.add("dep-pkg", "1.1", upload_time=fresh)
    url = _proxy(
        start_proxy,
        forwarding_gitlab,
        index,
        tmp_path / "cache",
        GITLAB_PYPI_PROXY_FORWARDING_MIN_AGE="7d",
    )
    page = httpx.get(f"{url}/dep-pkg/", headers={"accept": JSON_TYPE}).json()
    assert [f["filename"] for f in page["files"]] == ["dep_pkg-1.0-py3-none-any.whl"]
