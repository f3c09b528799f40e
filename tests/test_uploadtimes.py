"""PEP 700: upload times, sizes and versions of GitLab's files, from its package API."""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import json
import sys
import threading
import time
from pathlib import Path

import anyio
import httpx
import pytest
import respx

from proxy import pagerender
from proxy.models import Link, Page, pep700_time
from proxy.uploadtimes import INLINE_LINKS, bare, carry
from tests.clients import ProxyProcess, installed_version, new_venv, pip_install, run, uv_install
from tests.fakegitlab import FakeGitLab
from tests.inproc import GITLAB, Serve, gitlab_page
from tests.scenario import SERVICE, Start, acme, publish, serve

JSON_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.01"
API = "/api/v4/projects/42/packages/pypi"
OLD = calendar.timegm((2024, 1, 2, 3, 4, 5))
NEW = calendar.timegm((2025, 6, 1, 0, 0, 0))
CUTOFF = "2025-01-01T00:00:00Z"


def _link(filename: str, *attrs: tuple[str, str]) -> Link:
    sha = hashlib.sha256(filename.encode()).hexdigest()
    return Link(f"{API}/files/{sha}/{filename}", filename, f"sha256={sha}", attrs)


def _json(page: Page) -> dict[str, object]:
    body, _ = pagerender.render(page, base_url="http://proxy")
    document: dict[str, object] = json.loads(body)
    return document


# -- rendering -------------------------------------------------------------------------


def test_a_json_page_with_every_size_is_api_version_1_1_with_versions() -> None:
    """Every file sized: api-version 1.1, "versions" from the file names (normalized, once
    each), and each file's size and upload time."""
    stamp = ("data-upload-time", "2024-01-02T03:04:05.123Z")
    page = Page(
        "Links for demo",
        (
            _link("demo-1.0-py3-none-any.whl", stamp, ("data-size", "10")),
            _link("demo-1.0.tar.gz", stamp, ("data-size", "20")),
            _link("demo-2.0rc1-py3-none-any.whl", stamp, ("data-size", "30")),
        ),
        json=True,
    )
    document = _json(page)
    assert document["meta"] == {"api-version": "1.1"}
    assert document["versions"] == ["1.0", "2.0rc1"]
    files = document["files"]
    assert isinstance(files, list)
    assert [f["size"] for f in files] == [10, 20, 30]
    assert {f["upload-time"] for f in files} == {"2024-01-02T03:04:05.123Z"}


@pytest.mark.parametrize(
    "links",
    [
        (_link("demo-1.0-py3-none-any.whl", ("data-upload-time", "2024-01-02T03:04:05Z")),),
        (_link("demo-1.0.egg", ("data-size", "10")),),
    ],
    ids=["a-file-without-size", "a-file-without-a-version"],
)
def test_a_json_page_that_cannot_meet_1_1_stays_1_0(links: tuple[Link, ...]) -> None:
    """PEP 700 makes size and versions mandatory: a page missing either stays 1.0 (extra
    keys are allowed there: "clients MUST ignore keys that they don't understand")."""
    document = _json(Page("Links for demo", links, json=True))
    assert document["meta"] == {"api-version": "1.0"}
    assert "versions" not in document


@pytest.mark.parametrize(
    ("given", "written"),
    [
        ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"),
        ("2024-01-02T03:04:05.123Z", "2024-01-02T03:04:05.123Z"),
        ("2024-02-30T03:04:05Z", None),
        ("2024-01-02T04:04:05.5+01:00", "2024-01-02T03:04:05.500000Z"),
        ("2024-01-02T03:04:05", "2024-01-02T03:04:05.000000Z"),
        ("yesterday", None),
    ],
)
def test_an_upload_time_is_written_in_utc_with_z(given: str, written: str | None) -> None:
    """PEP 700: "yyyy-mm-ddThh:mm:ss.ffffffZ", UTC; an unreadable time is no time."""
    assert pep700_time(given) == written


def test_carry_keeps_the_times_of_the_same_files_only() -> None:
    """A changed page keeps the times of files it listed before (same sha256 and name);
    new files get none, and `bare` takes them off again for comparison."""
    stamp = ("data-upload-time", "2024-01-02T03:04:05Z")
    before = Page("t", (_link("demo-1.0.tar.gz", stamp, ("data-size", "1")),))
    after = Page("t", (_link("demo-1.0.tar.gz"), _link("demo-2.0.tar.gz")))
    carried = carry(before, after)
    assert carried.links[0].attrs == (stamp, ("data-size", "1"))
    assert carried.links[1].attrs == ()
    assert bare(carried) == after


# -- the package API, in process ----------------------------------------------------------

WHEEL_NAME = "my_pkg-1.0-py3-none-any.whl"
WHEEL = b"PK\x03\x04" + bytes(range(256))
SHA = hashlib.sha256(WHEEL).hexdigest()
PAGE_BODY = gitlab_page(
    "my_pkg",
    f'<a href="{GITLAB}{API}/files/{SHA}/{WHEEL_NAME}#sha256={SHA}" '
    f'data-requires-python="">{WHEEL_NAME}</a>',
)


def _package_api(request: httpx.Request) -> httpx.Response:
    """GitLab's package API for project 42: My_Pkg 1.0 (id 5) and its wheel."""
    if request.url.path.endswith("/api/v4/projects/42/packages"):
        package = {"id": 5, "name": "My_Pkg", "version": "1.0", "package_type": "pypi"}
        return httpx.Response(200, json=[package])
    if request.url.path.endswith("/api/v4/projects/42/packages/5/package_files"):
        wheel = {
            "id": 9,
            "package_id": 5,
            "created_at": "2024-01-02T03:04:05.123Z",
            "file_name": WHEEL_NAME,
            "size": len(WHEEL),
            "file_sha256": SHA,
        }
        return httpx.Response(200, json=[wheel])
    return httpx.Response(404, json={"message": "404 Not Found"})


@pytest.mark.anyio
async def test_the_service_token_reads_the_package_api_as_a_private_token(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """The REST API takes no Basic credentials: the service token goes as PRIVATE-TOKEN (the
    scope is listed whole first: GitLab keeps "My_Pkg", which the listing shows)."""
    api = gitlab_api.routes["package_api"].mock(side_effect=_package_api)
    gitlab_api.get(f"{GITLAB}{API}/simple/my-pkg").respond(200, content=PAGE_BODY)
    async with serve(token="glpat-service") as client:
        response = await client.get(f"{API}/simple/my-pkg/", headers={"accept": JSON_ACCEPT})
    asked = api.calls[0].request
    assert asked.headers["private-token"] == "glpat-service"
    assert "authorization" not in asked.headers
    assert "package_name" not in asked.url.params
    assert 'data-upload-time="2024-01-02T03:04:05.123Z"' in response.text
    assert f'data-size="{len(WHEEL)}"' in response.text


@pytest.mark.anyio
async def test_a_revalidated_page_keeps_its_times_without_asking_again(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """GitLab's 304 keeps the stored page, and its times: the package API is asked once."""
    api = gitlab_api.routes["package_api"].mock(side_effect=_package_api)
    gitlab_api.get(f"{GITLAB}{API}/simple/my-pkg").mock(
        side_effect=[
            httpx.Response(200, content=PAGE_BODY, headers={"etag": 'W/"1"'}),
            httpx.Response(304),
        ]
    )
    async with serve({"cache.page_ttl": 0}) as client:
        await client.get(f"{API}/simple/my-pkg/")
        response = await client.get(f"{API}/simple/my-pkg/")
    assert response.headers["x-cache"] == "REVALIDATED"
    assert "data-upload-time" in response.text
    assert api.call_count == 2  # the listing and the package's files, once


@pytest.mark.anyio
async def test_a_cold_page_asks_the_package_api_while_gitlab_is_asked_for_the_page(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A page not held yet costs the round trips of the page or of the package API, not of
    both: here each answer waits until the other was asked (one after the other never ends)."""
    page_asked, listing_asked = anyio.Event(), anyio.Event()

    async def page(request: httpx.Request) -> httpx.Response:
        page_asked.set()
        with anyio.fail_after(5):
            await listing_asked.wait()
        return httpx.Response(200, content=PAGE_BODY)

    async def package_api(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/packages"):
            listing_asked.set()
            with anyio.fail_after(5):
                await page_asked.wait()
        return _package_api(request)

    gitlab_api.routes["package_api"].mock(side_effect=package_api)
    gitlab_api.get(f"{GITLAB}{API}/simple/my-pkg").mock(side_effect=page)
    async with serve(token="glpat-service") as client:
        response = await client.get(f"{API}/simple/my-pkg/")
    assert 'data-upload-time="2024-01-02T03:04:05.123Z"' in response.text


OTHER_NAME = "pkg-2.0-py3-none-any.whl"
OTHER = b"PK\x03\x04" + bytes(range(100))
OTHER_SHA = hashlib.sha256(OTHER).hexdigest()


def _two_names_api(request: httpx.Request) -> httpx.Response:
    """My_Pkg 1.0 (id 5) and pkg 2.0 (id 6): both found by the search term "pkg"."""
    if request.url.path.endswith("/api/v4/projects/42/packages"):
        other = {"id": 6, "name": "pkg", "version": "2.0", "package_type": "pypi"}
        first = _package_api(request).json()
        return httpx.Response(200, json=[*first, other])
    if request.url.path.endswith("/api/v4/projects/42/packages/6/package_files"):
        wheel = {
            "created_at": "2025-02-03T04:05:06.000Z",
            "file_name": OTHER_NAME,
            "size": len(OTHER),
            "file_sha256": OTHER_SHA,
        }
        return httpx.Response(200, json=[wheel])
    return _package_api(request)


@pytest.mark.anyio
async def test_pages_of_names_found_by_one_search_term_read_one_listing(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """The listing GitLab gave for my-pkg ("pkg") also names pkg's packages: pkg's page
    asks only for its files."""
    api = gitlab_api.routes["package_api"].mock(side_effect=_two_names_api)
    gitlab_api.get(f"{GITLAB}{API}/simple/my-pkg").respond(200, content=PAGE_BODY)
    other_page = gitlab_page(
        "pkg",
        f'<a href="{GITLAB}{API}/files/{OTHER_SHA}/{OTHER_NAME}#sha256={OTHER_SHA}">'
        f"{OTHER_NAME}</a>",
    )
    gitlab_api.get(f"{GITLAB}{API}/simple/pkg").respond(200, content=other_page)
    async with serve(token="glpat-service") as client:
        await client.get(f"{API}/simple/my-pkg/")
        response = await client.get(f"{API}/simple/pkg/")
    assert 'data-upload-time="2025-02-03T04:05:06.000Z"' in response.text
    listings = [c for c in api.calls if c.request.url.path.endswith("/packages")]
    assert len(listings) == 1


NEW_NAME = "my_pkg-2.0-py3-none-any.whl"
NEW_SHA = hashlib.sha256(b"2.0").hexdigest()


@pytest.mark.anyio
async def test_a_version_the_kept_listing_lacks_is_asked_for_again(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A version uploaded after the listing was kept gets its time all the same: the listing
    is asked for again when it lacks a version the page lists."""
    listed = [{"id": 5, "name": "My_Pkg", "version": "1.0", "package_type": "pypi"}]

    def package_api(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/api/v4/projects/42/packages"):
            return httpx.Response(200, json=listed)
        if request.url.path.endswith("/api/v4/projects/42/packages/6/package_files"):
            file = {"created_at": "2025-02-03T04:05:06.000Z", "file_name": NEW_NAME}
            return httpx.Response(200, json=[{**file, "size": 1, "file_sha256": NEW_SHA}])
        return _package_api(request)

    api = gitlab_api.routes["package_api"].mock(side_effect=package_api)
    new = f'<a href="{GITLAB}{API}/files/{NEW_SHA}/{NEW_NAME}#sha256={NEW_SHA}">{NEW_NAME}</a>'
    both = PAGE_BODY.replace(b"</a>", b"</a>" + new.encode())
    gitlab_api.get(f"{GITLAB}{API}/simple/my-pkg").mock(
        side_effect=[httpx.Response(200, content=PAGE_BODY), httpx.Response(200, content=both)]
    )
    async with serve({"cache.page_ttl": 0}, token="glpat-service") as client:
        await client.get(f"{API}/simple/my-pkg/")
        listed.append({"id": 6, "name": "My_Pkg", "version": "2.0", "package_type": "pypi"})
        response = await client.get(f"{API}/simple/my-pkg/")
    assert 'data-upload-time="2025-02-03T04:05:06.000Z"' in response.text
    listings = [c for c in api.calls if c.request.url.path.endswith("/packages")]
    assert len(listings) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("count", [3, INLINE_LINKS + 1], ids=["walked-inline", "in-a-thread"])
async def test_every_file_of_a_page_gets_its_time_small_or_large(
    serve: Serve, gitlab_api: respx.MockRouter, count: int
) -> None:
    """A small page is walked on the event loop, a large one in a worker thread: either way
    every file gets GitLab's time."""
    # Two releases, so that a busy machine answers the package API in time however many
    # files there are: the walk of the page is what is measured, not GitLab's answers.
    names = [f"my_pkg-1.{n % 2}-{n}-py3-none-any.whl" for n in range(count)]
    shas = [hashlib.sha256(name.encode()).hexdigest() for name in names]

    def package_api(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/api/v4/projects/42/packages"):
            listed = [{"id": 100 + r, "name": "My_Pkg", "version": f"1.{r}"} for r in (0, 1)]
            return httpx.Response(200, json=listed)
        release = int(request.url.path.split("/packages/")[1].split("/")[0]) - 100
        files = [
            {"created_at": "2024-01-02T03:04:05.000Z", "file_name": names[n], "size": n}
            | {"file_sha256": shas[n]}
            for n in range(release, count, 2)
        ]
        return httpx.Response(200, json=files)

    gitlab_api.routes["package_api"].mock(side_effect=package_api)
    anchors = "".join(
        f'<a href="{GITLAB}{API}/files/{sha}/{name}#sha256={sha}">{name}</a>'
        for name, sha in zip(names, shas, strict=True)
    )
    body = gitlab_page("my_pkg", anchors)
    gitlab_api.get(f"{GITLAB}{API}/simple/my-pkg").respond(200, content=body)
    async with serve(token="glpat-service") as client:
        response = await client.get(f"{API}/simple/my-pkg/")
    assert response.text.count('data-upload-time="2024-01-02T03:04:05.000Z"') == count


# -- against the fake GitLab, through a proxy process -------------------------------------


def _project(proxy: ProxyProcess, kind: str = "projects/42") -> str:
    dash = "/-" if kind.startswith("groups") else ""
    return f"{proxy.url}/api/v4/{kind}{dash}/packages/pypi"


def _two_versions(gitlab: FakeGitLab) -> dict[str, str]:
    """demo-pkg 1.0 (uploaded OLD) and 2.0 (NEW) in project 42; returns name -> sha256."""
    acme(gitlab)
    shas = {}
    for version, when in (("1.0", OLD), ("2.0", NEW)):
        filename, sha = publish(gitlab, 42, "demo-pkg", version)
        gitlab.backdate(filename, when)
        shas[filename] = sha
    return shas


@pytest.mark.parametrize("kind", ["projects/42", "groups/7"])
def test_a_json_page_from_gitlab_is_pep_700_with_gitlabs_times(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, kind: str
) -> None:
    """GitLab's JSON page (project or group) comes with api-version 1.1, "versions", and
    each file's created_at and size from GitLab's package API."""
    gitlab.pep691 = True
    _two_versions(gitlab)
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    response = httpx.get(
        f"{_project(proxy, kind)}/simple/demo-pkg/", headers={"accept": JSON_ACCEPT}
    )
    document = response.json()
    assert document["meta"] == {"api-version": "1.1"}
    assert sorted(document["versions"]) == ["1.0", "2.0"]
    sizes = {f.filename: len(f.content) for f in gitlab.files(42)}
    assert {f["filename"]: f["size"] for f in document["files"]} == sizes
    assert sorted(f["upload-time"] for f in document["files"]) == [
        "2024-01-02T03:04:05.000Z",
        "2025-06-01T00:00:00.000Z",
    ]


@pytest.mark.parametrize("fault", ["forbidden", "slow"])
def test_without_the_package_api_the_page_is_served_at_once_without_times(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, fault: str
) -> None:
    """A package API that refuses, or does not answer within the time allowed, costs the
    page its times (api-version 1.0), never the page itself or more than that time."""
    gitlab.pep691 = True
    _two_versions(gitlab)
    if fault == "forbidden":
        gitlab.api_status = 403
    else:
        gitlab.api_delay = 6.0
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    started = time.monotonic()
    response = httpx.get(
        f"{_project(proxy)}/simple/demo-pkg/", headers={"accept": JSON_ACCEPT}, timeout=30
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    document = response.json()
    assert document["meta"] == {"api-version": "1.0"}
    assert all("upload-time" not in f for f in document["files"])
    assert len(document["files"]) == 2
    assert elapsed < 4.0  # the package API gets 2 s at most


def test_the_fake_package_api_reads_no_basic_credentials(gitlab: FakeGitLab) -> None:
    """Like GitLab's REST API: a private project's packages need PRIVATE-TOKEN (Basic is
    anonymous there, so 404), and an unknown token is a 401."""
    _two_versions(gitlab)
    url = f"{gitlab.url}/api/v4/projects/42/packages?package_name=demo"
    assert httpx.get(url, auth=("bot", SERVICE)).status_code == 404
    assert httpx.get(url, headers={"PRIVATE-TOKEN": "nope"}).status_code == 401
    listed = httpx.get(url, headers={"PRIVATE-TOKEN": SERVICE}).json()
    assert [p["version"] for p in listed] == ["1.0", "2.0"]


# -- clients ------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("pep691", [False, True], ids=["html", "json"])
def test_uv_exclude_newer_picks_the_version_uploaded_before_the_date(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, pep691: bool
) -> None:
    """`uv pip install --exclude-newer` through the proxy installs the older version (uv
    reads data-upload-time in HTML and upload-time in JSON)."""
    gitlab.pep691 = pep691
    _two_versions(gitlab)
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    python = new_venv(tmp_path / "venv")
    index = f"{_project(proxy)}/simple"
    result = uv_install(
        python, index, "demo-pkg", "--exclude-newer", CUTOFF, cache=tmp_path / "uv-cache"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed_version(python, "demo_pkg") == "1.0"


def _pip_supports_uploaded_prior_to() -> bool:
    help_text = run([sys.executable, "-m", "pip", "install", "--help"]).stdout
    return "--uploaded-prior-to" in help_text


@pytest.mark.e2e
def test_pip_uploaded_prior_to_picks_the_version_uploaded_before_the_date(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """`pip install --uploaded-prior-to` (pip >= 26, JSON pages only) installs the older one."""
    if not _pip_supports_uploaded_prior_to():
        pytest.skip("this pip has no --uploaded-prior-to")
    gitlab.pep691 = True
    _two_versions(gitlab)
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    python = new_venv(tmp_path / "venv")
    result = pip_install(
        python, f"{_project(proxy)}/simple", "--uploaded-prior-to", CUTOFF, "demo-pkg"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed_version(python, "demo_pkg") == "1.0"


def test_a_slow_package_api_of_the_fake_stalls_no_page(gitlab: FakeGitLab) -> None:
    """The fake GitLab's slow package API (api_delay) waits outside its model's lock, so a
    page asked meanwhile is answered at once (the proxy's bound is what tests measure)."""
    _two_versions(gitlab)
    gitlab.api_delay = 30.0
    listing = f"{gitlab.url}/api/v4/projects/42/packages?package_name=demo"

    def ask() -> None:
        with contextlib.suppress(httpx.HTTPError):  # cut off when the fake stops
            httpx.get(listing, timeout=60)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    deadline = time.monotonic() + 10
    while not any("/packages?" in r.path for r in gitlab.requests):
        assert time.monotonic() < deadline, "the listing never reached the fake"
        time.sleep(0.01)
    page = httpx.get(f"{gitlab.url}/api/v4/projects/42/packages/pypi/simple/demo-pkg", timeout=5)
    assert page.status_code == 401  # a private project: answered, not stalled
    gitlab.api_delay = 0.0
