"""Cold ranges and HEAD: what the running fill lacks comes from GitLab, as a client would get it."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager

from proxy.app import create_app
from proxy.config import load
from tests.fakegitlab import FakeGitLab
from tests.inproc import GITLAB, PROXY, finishing
from tests.scenario import SERVICE, Start, acme, serve

pytestmark = pytest.mark.anyio
BIG = bytes(range(256)) * 16384  # 4 MiB: two halves of whole 256 KiB chunks
SIZE = len(BIG)
SHA = hashlib.sha256(BIG).hexdigest()
FILE = f"/api/v4/projects/42/packages/pypi/files/{SHA}/big-1.0-py3-none-any.whl"
TAIL = "bytes=-65536"
TAIL_RANGE = f"bytes {SIZE - 65536}-{SIZE - 1}/{SIZE}"
STORAGE = "https://objects.example.com/bucket/k/big-1.0-py3-none-any.whl?X-Amz-Signature=s"
MEMBER = "Basic bWVtYmVyOnRva2Vu"
OUTSIDER = "Basic b3V0c2lkZXI6dG9rZW4="


class Gate(httpx.AsyncByteStream):
    """GitLab's whole body: its first half, then nothing until the test lets the rest go."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        """Set once the first half was taken (the fill writes it soon after)."""
        self.release = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield BIG[: SIZE // 2]
        self.waiting.set()
        await self.release.wait()
        yield BIG[SIZE // 2 :]


@asynccontextmanager
async def _proxy(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The proxy in process, GitLab reached through respx's mocked transport, so that a
    mocked body can stream (and wait)."""
    settings = load(
        env={}, overrides={"upstream.url": GITLAB, "cache.dir": str(tmp_path / "cache")}
    )
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=finishing(manager.app)), base_url=PROXY
        ) as client,
    ):
        yield client


async def _written(client: httpx.AsyncClient, count: int) -> None:
    """Wait (10 s at most) until the status page shows a fill with `count` bytes on disk:
    the fill writes in a thread while it takes the next bytes from GitLab."""
    async with asyncio.timeout(10):
        while True:
            status = await client.get("/", headers={"Accept": "application/json"})
            if any(fill["written"] >= count for fill in status.json()["fills"]):
                return
            await asyncio.sleep(0.01)


def _gated_whole(router: respx.MockRouter, gate: Gate) -> respx.Route:
    """GitLab's answer to a GET without Range: the whole file, held back by `gate`."""
    return router.get(GITLAB + FILE).mock(
        side_effect=lambda request: httpx.Response(
            200, headers={"Content-Length": str(SIZE)}, stream=gate
        )
    )


def _tail(router: respx.MockRouter) -> respx.Route:
    """GitLab's 206 for the last 64 KiB."""
    return router.get(GITLAB + FILE, headers={"Range": TAIL}).respond(
        206, content=BIG[-65536:], headers={"Content-Range": TAIL_RANGE}
    )


async def _cached(client: httpx.AsyncClient) -> httpx.Response:
    """The file once the cache serves it (X-Cache HIT), within a deadline."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        response = await client.get(FILE, headers={"Authorization": MEMBER})
        if response.headers["x-cache"] == "HIT" or asyncio.get_running_loop().time() > deadline:
            return response
        await asyncio.sleep(0.05)  # polling a condition with a deadline


async def test_a_cold_tail_is_gitlabs_206_while_the_fill_is_held_back(
    tmp_path: Path, gitlab_api: respx.MockRouter
) -> None:
    """A suffix range of a file not held is GitLab's 206 at once (BYPASS) while the fill waits."""
    gate = Gate()
    tail, whole = _tail(gitlab_api), _gated_whole(gitlab_api, gate)
    async with _proxy(tmp_path) as client:
        response = await asyncio.wait_for(
            client.get(FILE, headers={"Range": TAIL, "Authorization": MEMBER}), timeout=10
        )
        assert response.status_code == 206
        assert response.headers["x-cache"] == "BYPASS"
        assert response.headers["content-range"] == TAIL_RANGE
        assert response.headers["content-length"] == "65536"
        assert response.content == BIG[-65536:]
        assert not gate.release.is_set()
        assert tail.call_count == 1
        await asyncio.wait_for(gate.waiting.wait(), timeout=10)  # the fill runs all the same
        assert whole.call_count == 1
        gate.release.set()


async def test_the_fill_behind_a_cold_range_is_cached_in_full(
    tmp_path: Path, gitlab_api: respx.MockRouter
) -> None:
    """The fill a cold range started goes on and commits the whole verified file."""
    gate = Gate()
    _tail(gitlab_api)
    whole = _gated_whole(gitlab_api, gate)
    async with _proxy(tmp_path) as client:
        ranged = client.get(FILE, headers={"Range": TAIL, "Authorization": MEMBER})
        await asyncio.wait_for(ranged, timeout=10)
        gate.release.set()
        cached = await _cached(client)
        assert cached.headers["x-cache"] == "HIT"
        assert cached.content == BIG
        assert whole.call_count == 1


async def test_a_range_the_fill_has_written_is_served_from_the_fill(
    tmp_path: Path, gitlab_api: respx.MockRouter
) -> None:
    """A range starting in bytes the fill wrote is the fill's (MISS), not asked of GitLab."""
    gate = Gate()
    tail = _tail(gitlab_api)
    _gated_whole(gitlab_api, gate)
    async with _proxy(tmp_path) as client:
        ranged = client.get(FILE, headers={"Range": TAIL, "Authorization": MEMBER})
        await asyncio.wait_for(ranged, timeout=10)
        await asyncio.wait_for(gate.waiting.wait(), timeout=10)
        await _written(client, SIZE // 2)
        head = client.get(FILE, headers={"Range": "bytes=0-1023", "Authorization": MEMBER})
        reading = asyncio.create_task(head)
        gate.release.set()  # the last byte of the range waits for the verdict
        response = await asyncio.wait_for(reading, timeout=10)
        assert response.status_code == 206
        assert response.headers["x-cache"] == "MISS"
        assert response.content == BIG[:1024]
        ranged = [call for call in gitlab_api.calls if "range" in call.request.headers]
        assert len(ranged) == tail.call_count == 1


async def test_a_non_members_cold_range_gets_gitlabs_refusal(
    tmp_path: Path, gitlab_api: respx.MockRouter
) -> None:
    """A cold range goes to GitLab with the caller's own credential, and its 404 comes back."""
    route = gitlab_api.get(GITLAB + FILE).respond(404, json={"message": "404 Not Found"})
    async with _proxy(tmp_path) as client:
        response = await client.get(FILE, headers={"Range": TAIL, "Authorization": OUTSIDER})
    assert response.status_code == 404
    assert response.headers["x-cache"] == "BYPASS"
    assert response.json() == {"message": "404 Not Found"}
    assert {call.request.headers.get("range") for call in route.calls} >= {TAIL}
    assert all(call.request.headers["authorization"] == OUTSIDER for call in route.calls)


@pytest.mark.parametrize(
    ("if_range", "sent"),
    [('"gitlab-etag"', '"gitlab-etag"'), (f'"{SHA}"', None)],
    ids=["gitlabs-validator", "own-etag"],
)
async def test_if_range_passes_to_gitlab(
    tmp_path: Path, gitlab_api: respx.MockRouter, if_range: str, sent: str | None
) -> None:
    """If-Range goes to GitLab as sent, but the proxy's own ETag (the sha256) holds: left out."""
    gate = Gate()
    tail = _tail(gitlab_api)
    _gated_whole(gitlab_api, gate)
    async with _proxy(tmp_path) as client:
        headers = {"Range": TAIL, "If-Range": if_range, "Authorization": MEMBER}
        response = await asyncio.wait_for(client.get(FILE, headers=headers), timeout=10)
        gate.release.set()
    assert response.status_code == 206
    assert response.content == BIG[-65536:]
    assert tail.calls.last.request.headers.get("if-range") == sent


async def test_a_range_gitlab_answers_whole_is_the_fills_verified_body(
    tmp_path: Path, gitlab_api: respx.MockRouter
) -> None:
    """When GitLab sends the whole file for a range (its If-Range failed), the fill serves it."""
    gitlab_api.get(GITLAB + FILE).respond(200, content=BIG)
    async with _proxy(tmp_path) as client:
        headers = {"Range": TAIL, "If-Range": '"stale"', "Authorization": MEMBER}
        response = await client.get(FILE, headers=headers)
    assert response.status_code == 200
    assert response.headers["x-cache"] == "MISS"
    assert response.content == BIG


async def test_a_cold_head_asks_gitlab_and_downloads_nothing(
    tmp_path: Path, gitlab_api: respx.MockRouter
) -> None:
    """HEAD of a file not held gives GitLab's real length and ranges, with no GET (BYPASS)."""
    head = gitlab_api.head(GITLAB + FILE).respond(
        200, headers={"Content-Length": str(SIZE), "Accept-Ranges": "bytes"}
    )
    get = gitlab_api.get(GITLAB + FILE).respond(200, content=BIG)
    async with _proxy(tmp_path) as client:
        response = await client.head(FILE, headers={"Authorization": MEMBER})
    assert response.status_code == 200
    assert response.headers["x-cache"] == "BYPASS"
    assert response.headers["content-length"] == str(SIZE)
    assert response.headers["accept-ranges"] == "bytes"
    assert head.call_count == 1
    assert get.call_count == 0


async def test_a_cold_head_learns_the_size_with_one_byte_when_storage_refuses_head(
    tmp_path: Path, gitlab_api: respx.MockRouter
) -> None:
    """Object storage that refuses HEAD (an URL presigned for GET): a `bytes=0-0` GET gives
    the size, fetched without GitLab's credentials."""
    gitlab_api.route(method__in=["GET", "HEAD"], url=GITLAB + FILE).respond(
        302, headers={"Location": STORAGE}
    )
    gitlab_api.head(STORAGE).respond(403)
    probe = gitlab_api.get(STORAGE, headers={"Range": "bytes=0-0"}).respond(
        206, content=BIG[:1], headers={"Content-Range": f"bytes 0-0/{SIZE}"}
    )
    async with _proxy(tmp_path) as client:
        response = await client.head(FILE, headers={"Authorization": MEMBER})
    assert response.status_code == 200
    assert response.headers["content-length"] == str(SIZE)
    assert response.headers["accept-ranges"] == "bytes"
    assert probe.call_count == 1
    assert "authorization" not in probe.calls.last.request.headers


async def test_a_cold_head_claims_no_ranges_gitlab_does_not_serve(
    tmp_path: Path, gitlab_api: respx.MockRouter
) -> None:
    """Without Accept-Ranges from GitLab, a HEAD does not claim them (a Range would not work)."""
    gitlab_api.head(GITLAB + FILE).respond(200, headers={"Content-Length": str(SIZE)})
    async with _proxy(tmp_path) as client:
        response = await client.head(FILE, headers={"Authorization": MEMBER})
    assert response.headers["content-length"] == str(SIZE)
    assert "accept-ranges" not in response.headers


async def test_a_non_members_cold_head_gets_gitlabs_refusal(
    tmp_path: Path, gitlab_api: respx.MockRouter
) -> None:
    """A HEAD goes to GitLab with the caller's credential, and GitLab's 401 comes back."""
    realm = {"WWW-Authenticate": 'Basic realm="GitLab Packages Registry"'}
    head = gitlab_api.head(GITLAB + FILE).respond(401, headers=realm)
    async with _proxy(tmp_path) as client:
        response = await client.head(FILE, headers={"Authorization": OUTSIDER})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == realm["WWW-Authenticate"]
    assert head.calls.last.request.headers["authorization"] == OUTSIDER


# -- a real proxy process in front of the fake GitLab ----------------------------------------

LARGE = bytes(range(256)) * (120 * 1024)  # 30 MiB
LARGE_NAME = "large_pkg-1.0-py3-none-any.whl"
LARGE_PATH = (
    f"/api/v4/projects/42/packages/pypi/files/{hashlib.sha256(LARGE).hexdigest()}/{LARGE_NAME}"
)


def _large(gitlab: FakeGitLab) -> None:
    acme(gitlab)
    gitlab.add_file(42, "large-pkg", "1.0", LARGE_NAME, LARGE)
    gitlab.redirect_downloads = True  # files come from object storage, as on gitlab.com


def _ranged(gitlab: FakeGitLab) -> list[str]:
    """The Range of every GET that reached object storage, "" for none."""
    return [
        r.headers.get("range", "")
        for r in list(gitlab.requests)
        if r.server == "object" and r.method == "GET"
    ]


def test_a_tail_through_the_proxy_comes_before_the_whole_file(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """The last 64 KiB of a 30 MiB file not held arrive while GitLab's whole download is
    stalled after 1 MiB; that download still ends in the cache."""
    _large(gitlab)
    gitlab.stall_files_after = 1024 * 1024
    proxy = serve(start_proxy, gitlab, tmp_path / "c", token=SERVICE)
    response = httpx.get(proxy.url + LARGE_PATH, headers={"Range": TAIL}, timeout=30)
    assert not gitlab.stall_release.is_set()  # the whole file is still on its way
    assert response.status_code == 206
    assert response.headers["x-cache"] == "BYPASS"
    assert (
        response.headers["content-range"]
        == f"bytes {len(LARGE) - 65536}-{len(LARGE) - 1}/{len(LARGE)}"
    )
    assert response.content == LARGE[-65536:]
    assert TAIL in _ranged(gitlab)
    assert gitlab.object_auth_violations == 0
    gitlab.stall_release.set()
    deadline = time.monotonic() + 30
    while (
        "" not in _ranged(gitlab) or httpx.head(proxy.url + LARGE_PATH).headers["x-cache"] != "HIT"
    ):
        assert time.monotonic() < deadline, "the fill never reached the cache"
        time.sleep(0.05)  # polling a condition with a deadline
    assert sorted(_ranged(gitlab)) == ["", TAIL]  # one whole download, one range


def test_a_head_through_the_proxy_downloads_nothing(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """A HEAD of a 30 MiB file not held gives its real length and no GET reaches GitLab."""
    _large(gitlab)
    proxy = serve(start_proxy, gitlab, tmp_path / "c", token=SERVICE)
    response = httpx.head(proxy.url + LARGE_PATH, timeout=30)
    assert response.status_code == 200
    assert response.headers["x-cache"] == "BYPASS"
    assert response.headers["content-length"] == str(len(LARGE))
    assert response.headers["accept-ranges"] == "bytes"
    assert [r.method for r in gitlab.requests if "/files/" in r.path or r.server == "object"] == [
        "HEAD",
        "HEAD",
    ]
