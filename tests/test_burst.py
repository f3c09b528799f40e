"""Pages under bursts: one GitLab request per page however many ask, stale-while-revalidate."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import respx

from proxy.cache import Store, StoredPage
from proxy.models import Link, Page
from tests.inproc import GITLAB, Serve, gitlab_page

pytestmark = pytest.mark.anyio

API = "/api/v4/projects/42/packages/pypi"
PAGE_URL = GITLAB + API + "/simple/my-pkg"
HTML = {"content-type": "text/html; charset=utf-8"}
OLD = "my_pkg-1.0-py3-none-any.whl"
NEW = "my_pkg-2.0-py3-none-any.whl"
JOINED = "joined the work in flight"
waiting: list[httpx.Request] = []
"""The requests that reached a gated route (respx counts a call only once it is answered)."""


async def until(condition: Callable[[], bool], deadline: float = 10.0) -> None:
    """Return once `condition()` holds; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "the condition did not hold in time"
        await asyncio.sleep(0.005)


def gated(
    router: respx.MockRouter, url: str = PAGE_URL, status: int = 200
) -> tuple[respx.Route, asyncio.Event]:
    """A GitLab page route listing NEW that answers only once the returned event is set."""
    gate = asyncio.Event()
    waiting.clear()
    anchor = f'<a href="{GITLAB}{API}/files/{"b" * 64}/{NEW}#sha256={"b" * 64}">{NEW}</a>'

    async def answer(request: httpx.Request) -> httpx.Response:
        waiting.append(request)
        await gate.wait()
        return httpx.Response(status, content=gitlab_page("my-pkg", anchor), headers=HTML)

    return router.get(url).mock(side_effect=answer), gate


def store_old(tmp_path: Path, age: float, owner: str = "projects/42") -> None:
    """Put the page of my-pkg listing OLD in the cache, fetched `age` seconds ago."""
    link = Link(f"{GITLAB}{API}/files/{'a' * 64}/{OLD}", OLD, f"sha256={'a' * 64}")
    store = Store(tmp_path / "cache", max_size=1 << 30)
    stored = StoredPage(Page("Links for my-pkg", (link,)), time.time() - age, "")
    store.put_page(Store.page_key(owner, "my-pkg", "html"), stored, name="my-pkg")
    store.close()


def joined(caplog: pytest.LogCaptureFixture) -> int:
    """How many requests joined a request to GitLab already in flight."""
    return sum(JOINED in record.getMessage() for record in caplog.records)


async def burst(
    client: httpx.AsyncClient, gate: asyncio.Event, caplog: pytest.LogCaptureFixture, n: int
) -> list[httpx.Response]:
    """`n` concurrent GETs of the page, GitLab held back until n - 1 of them wait on the first."""
    tasks = [asyncio.create_task(client.get(f"{API}/simple/my-pkg/")) for _ in range(n)]
    await until(lambda: joined(caplog) >= n - 1)
    gate.set()
    return await asyncio.gather(*tasks)


@pytest.fixture(autouse=True)
def debug(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the flights' debug records."""
    caplog.set_level(logging.DEBUG, logger="proxy.flights")
    caplog.set_level(logging.DEBUG, logger="proxy.mirror")


async def test_an_expired_page_asked_by_50_clients_is_one_gitlab_request(
    serve: Serve, gitlab_api: respx.MockRouter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """50 concurrent requests for an expired page share one request to GitLab."""
    store_old(tmp_path, age=100)
    route, gate = gated(gitlab_api)
    async with serve({"cache.page_ttl": 60}) as client:
        responses = await burst(client, gate, caplog, 50)
    assert route.call_count == 1
    assert all(r.status_code == 200 and NEW in r.text and OLD not in r.text for r in responses)


async def test_a_cold_page_asked_by_50_clients_is_one_gitlab_request(
    serve: Serve, gitlab_api: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """50 concurrent requests for a page never cached share one request to GitLab."""
    route, gate = gated(gitlab_api)
    async with serve() as client:
        responses = await burst(client, gate, caplog, 50)
    assert route.call_count == 1
    assert all(r.status_code == 200 and NEW in r.text for r in responses)
    assert sorted({r.headers["x-cache"] for r in responses}) == ["MISS"]


def basic(user: str) -> dict[str, str]:
    """An Authorization header for `user`."""
    return {"authorization": "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()}


async def test_different_passthrough_credentials_are_not_coalesced(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Two clients with their own credentials each get GitLab's answer to them."""
    _, gate = gated(gitlab_api)
    async with serve({"access.mode": "passthrough"}) as client:
        tasks = [
            asyncio.create_task(client.get(f"{API}/simple/my-pkg/", headers=basic(user)))
            for user in ("alice", "bob")
        ]
        await until(lambda: sum("authorization" in r.headers for r in waiting) == 2)
        gate.set()
        responses = await asyncio.gather(*tasks)
    assert len({r.headers["authorization"] for r in waiting if "authorization" in r.headers}) == 2
    assert [r.status_code for r in responses] == [200, 200]


async def test_stale_while_revalidate_answers_without_waiting_for_gitlab(
    serve: Serve, gitlab_api: respx.MockRouter, tmp_path: Path
) -> None:
    """Within stale_while_revalidate an expired page is answered while GitLab is held back,
    and once the one background request lands the next request gets the new page."""
    store_old(tmp_path, age=100)
    route, gate = gated(gitlab_api)
    async with serve({"cache.page_ttl": 60, "cache.stale_while_revalidate": 300}) as client:
        async with asyncio.timeout(5):
            stale = [await client.get(f"{API}/simple/my-pkg/") for _ in range(3)]
        gate.set()
        fresh: list[httpx.Response] = []

        async def landed() -> bool:
            fresh.append(await client.get(f"{API}/simple/my-pkg/"))
            return fresh[-1].headers["x-cache"] == "HIT"

        end = time.monotonic() + 10
        while not await landed():
            assert time.monotonic() < end
            await asyncio.sleep(0.005)
    assert all(r.headers["x-cache"] == "STALE" and OLD in r.text for r in stale)
    assert stale[0].headers["cache-control"].endswith("max-age=0")
    assert NEW in fresh[-1].text
    assert route.call_count == 1


async def test_a_failing_background_revalidation_keeps_the_stale_page(
    serve: Serve, gitlab_api: respx.MockRouter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """GitLab failing a background revalidation leaves the stale page served, and says so."""
    store_old(tmp_path, age=100)
    route = gitlab_api.get(PAGE_URL).respond(503)
    async with serve({"cache.page_ttl": 60, "cache.stale_while_revalidate": 300}) as client:
        first = await client.get(f"{API}/simple/my-pkg/")
        await until(lambda: any(r.levelno == logging.WARNING for r in caplog.records))
        second = await client.get(f"{API}/simple/my-pkg/")
    assert route.called
    assert [first.status_code, second.status_code] == [200, 200]
    assert OLD in first.text
    assert OLD in second.text
    assert second.headers["x-cache"] == "STALE"


async def test_a_cancelled_client_leaves_the_request_to_gitlab_to_the_others(
    serve: Serve, gitlab_api: respx.MockRouter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The client whose request went to GitLab goes away; those waiting on it get the page."""
    store_old(tmp_path, age=100)
    route, gate = gated(gitlab_api)
    async with serve({"cache.page_ttl": 60}) as client:
        first = asyncio.create_task(client.get(f"{API}/simple/my-pkg/"))
        await until(lambda: len(waiting) == 1)
        others = [asyncio.create_task(client.get(f"{API}/simple/my-pkg/")) for _ in range(5)]
        await until(lambda: joined(caplog) >= 5)
        first.cancel()
        gate.set()
        responses = await asyncio.gather(*others)
    assert first.cancelled()
    assert route.call_count == 1
    assert all(r.status_code == 200 and NEW in r.text for r in responses)
