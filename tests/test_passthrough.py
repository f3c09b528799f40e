"""Files answered straight from GitLab, uncached: streamed through when the cache has no room."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager

from proxy.app import create_app
from proxy.cache import Store
from proxy.config import load
from tests.inproc import GITLAB, PROXY, BrokenBody, Serve

pytestmark = pytest.mark.anyio

API = "/api/v4/projects/42/packages/pypi"
WHEEL_NAME = "my_pkg-1.0-py3-none-any.whl"

LARGE = bytes(range(256)) * 8192  # 2 MiB
LARGE_FILE = f"{API}/files/{hashlib.sha256(LARGE).hexdigest()}/{WHEEL_NAME}"
TOO_BIG = {"cache.max_size": len(LARGE) // 2}
"""A cache that can never hold LARGE: every download of it is streamed through."""


async def test_a_file_the_cache_cannot_hold_is_streamed_through(
    serve: Serve, gitlab_api: respx.MockRouter, tmp_path: Path
) -> None:
    """GitLab's bytes reach the client uncached (BYPASS), with its length and no Range offer;
    once a fill found no room for it, later downloads go straight through."""
    route = gitlab_api.get(GITLAB + LARGE_FILE).respond(200, content=LARGE)
    async with serve(TOO_BIG) as client:
        for _ in range(2):
            response = await client.get(LARGE_FILE)
            assert (response.status_code, response.headers["x-cache"]) == (200, "BYPASS")
            assert response.content == LARGE
            assert response.headers["content-length"] == str(len(LARGE))
            assert "accept-ranges" not in response.headers
        metrics = (await client.get("/-/metrics")).text
    assert route.call_count == 3  # the fill that found no room, then one per download
    assert "gitlab_pypi_proxy_streamed_through_total 2.0" in metrics
    assert Store(tmp_path / "cache", max_size=10**9).stats().files == 0


async def test_a_streamed_through_file_ignores_range(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A Range on a file streamed through is answered with the whole file (RFC 9110 allows it)."""
    gitlab_api.get(GITLAB + LARGE_FILE).respond(200, content=LARGE)
    async with serve(TOO_BIG) as client:
        response = await client.get(LARGE_FILE, headers={"Range": "bytes=0-9"})
    assert (response.status_code, response.content) == (200, LARGE)


@pytest.mark.parametrize(
    ("body", "headers"),
    [(b"x" + LARGE[1:], {}), (LARGE[:-10], {"content-length": str(len(LARGE))})],
    ids=["wrong-bytes", "short"],
)
async def test_a_streamed_through_file_that_fails_its_check_is_aborted(
    serve: Serve, gitlab_api: respx.MockRouter, body: bytes, headers: dict[str, str]
) -> None:
    """Wrong or missing bytes break the download: the client never sees a clean end."""
    gitlab_api.get(GITLAB + LARGE_FILE).respond(200, content=body, headers=headers)
    async with serve(TOO_BIG) as client:
        with pytest.raises(BrokenBody) as broken:
            await client.get(LARGE_FILE)
    assert broken.value.headers["x-cache"] == "BYPASS"
    assert len(broken.value.received) < len(LARGE)


class Watched(httpx.AsyncByteStream):
    """A body that records whether it was closed."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.content

    async def aclose(self) -> None:
        self.closed.set()


async def test_a_head_of_a_streamed_through_file_closes_gitlab_s_response(
    tmp_path: Path,
) -> None:
    """A HEAD reads nothing of GitLab's body, and GitLab's response is closed anyway."""
    body = Watched(LARGE)
    settings = load(
        env={},
        overrides={"upstream.url": GITLAB, "cache.dir": str(tmp_path / "cache"), **TOO_BIG},
    )
    length = {"content-length": str(len(LARGE))}
    edge = httpx.MockTransport(lambda request: httpx.Response(200, headers=length, stream=body))
    app = create_app(settings, transport=edge)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url=PROXY) as client,
    ):
        response = await client.head(LARGE_FILE)
        assert (response.status_code, response.headers["x-cache"]) == (200, "BYPASS")
        await asyncio.wait_for(body.closed.wait(), timeout=10)
