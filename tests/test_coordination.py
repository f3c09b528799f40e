"""Coordinator: replicas share fills, invalidations and tokens through a real redis-server."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import pytest

from proxy.coordination import Coordinator
from tests.clients import ProxyProcess, clean_env, twine_upload
from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab
from tests.scenario import DEV, SERVICE, Start, acme, publish, serve
from tests.services import RedisServer, wait_until

SHA = "a" * 64
BIG = bytes(range(256)) * (8 * 4096)  # 8 MiB
BIG_SHA = hashlib.sha256(BIG).hexdigest()
BIG_NAME = "big_pkg-1.0-py3-none-any.whl"
BIG_PATH = f"/api/v4/projects/42/packages/pypi/files/{BIG_SHA}/{BIG_NAME}"
WAITS = "gitlab_pypi_proxy_lease_waits_total"


async def _nothing(name: str) -> None:
    return None


@pytest.fixture
async def coordinators(
    redis_server: RedisServer,
) -> AsyncIterator[Callable[..., Awaitable[Coordinator]]]:
    """Started Coordinators on the test's Redis; all closed at the end."""
    started: list[Coordinator] = []

    async def start(
        lease_ttl: float = 30.0, on_pages: Callable[[str], Awaitable[None]] = _nothing
    ) -> Coordinator:
        coordinator = Coordinator(redis_server.url, lease_ttl=lease_ttl)
        started.append(coordinator)
        await coordinator.start(on_pages)
        return coordinator

    yield start
    for coordinator in started:
        await coordinator.aclose()


async def _eventually(condition: Callable[[], bool], what: str, deadline: float = 10.0) -> None:
    end = asyncio.get_running_loop().time() + deadline
    while not condition():
        assert asyncio.get_running_loop().time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # polling a condition with a deadline


# -- leases and fencing (unit, on a real Redis) ------------------------------------------


@pytest.mark.anyio
async def test_a_stale_writer_is_refused_its_commit(
    coordinators: Callable[..., Awaitable[Coordinator]],
) -> None:
    """A lease that expired and was granted again may not commit; the later one may."""
    first, second = await coordinators(lease_ttl=0.2), await coordinators(lease_ttl=0.2)
    stale = await first.acquire(SHA, wait=0)
    assert stale is not None
    fresh = await second.acquire(SHA, wait=10)  # granted once the unrenewed lease expired
    assert fresh is not None
    assert fresh.fence > stale.fence
    assert not await first.may_commit(stale)
    assert await second.may_commit(fresh)


@pytest.mark.anyio
async def test_a_renewed_lease_keeps_other_replicas_waiting(
    coordinators: Callable[..., Awaitable[Coordinator]],
) -> None:
    """While a leader's fill runs past several lease lifetimes, nobody else gets the lease;
    it is granted at once when the leader lets go."""
    leader, other = await coordinators(lease_ttl=0.3), await coordinators(lease_ttl=0.3)
    async with leader.lead(SHA, wait=0) as lease:
        assert lease is not None
        assert await other.acquire(SHA, wait=1.0) is None
    assert await other.acquire(SHA, wait=0) is not None


@pytest.mark.anyio
async def test_without_redis_every_lease_is_local() -> None:
    """With no redis_url, a fill leads at once without a lease and may always commit."""
    alone = Coordinator()
    await alone.start(_nothing)
    async with alone.lead(SHA, wait=0) as lease:
        assert lease is None
    assert await alone.may_commit(None)
    assert alone.state == "local"


@pytest.mark.anyio
async def test_an_invalidation_reaches_every_replica(
    coordinators: Callable[..., Awaitable[Coordinator]],
) -> None:
    """A name published by one replica is dropped by every replica, the publisher too."""
    heard: list[tuple[int, str]] = []

    def hearing(which: int) -> Callable[[str], Awaitable[None]]:
        async def on_pages(name: str) -> None:
            heard.append((which, name))

        return on_pages

    one = await coordinators(on_pages=hearing(1))
    await coordinators(on_pages=hearing(2))
    await one.invalidate("demo-pkg")
    await _eventually(lambda: len(heard) >= 2, "both replicas to hear the upload")
    assert sorted(heard) == [(1, "demo-pkg"), (2, "demo-pkg")]


@pytest.mark.anyio
async def test_with_redis_away_fills_lead_alone_until_it_returns(
    coordinators: Callable[..., Awaitable[Coordinator]], redis_server: RedisServer
) -> None:
    """Redis stopped: the state says so and leases are local; restarted: shared again,
    and every page is dropped (an upload elsewhere may have been missed)."""
    dropped: list[str] = []

    async def on_pages(name: str) -> None:
        dropped.append(name)

    coordinator = await coordinators(on_pages=on_pages)
    assert coordinator.state == "redis"
    redis_server.stop()
    await _eventually(lambda: coordinator.state == "local (redis unreachable)", "the loss")
    async with coordinator.lead(SHA, wait=5) as lease:
        assert lease is None
    redis_server.start()
    await _eventually(lambda: coordinator.state == "redis", "the reconnection")
    assert await coordinator.acquire(SHA, wait=0) is not None
    assert dropped == [""]


# -- replicas as processes -------------------------------------------------------------


def _replica(
    start: Start, gitlab: FakeGitLab, cache: Path, redis: RedisServer, **env: str
) -> ProxyProcess:
    return serve(
        start,
        gitlab,
        cache,
        token=SERVICE,
        GITLAB_PYPI_PROXY_COORDINATION_REDIS_URL=redis.url,
        **env,
    )


def _metric(proxy: ProxyProcess, name: str) -> float:
    text = httpx.get(proxy.url + "/-/metrics").text
    line = next((line for line in text.splitlines() if line.startswith(name + " ")), None)
    return 0.0 if line is None else float(line.rsplit(" ", 1)[1])


def _file_gets(gitlab: FakeGitLab) -> int:
    return sum(1 for r in gitlab.requests if r.method == "GET" and "/files/" in r.path)


def _accepts(url: str, token: str) -> bool:
    return httpx.get(url, auth=("ci", token)).status_code == 200


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=60)


@pytest.mark.e2e
def test_replicas_fetch_a_file_from_gitlab_one_at_a_time(
    gitlab: FakeGitLab, start_proxy: Start, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two replicas on one Redis with their own caches: while the first fetches a file the
    second waits (GitLab has one download), then fetches it itself once the first
    committed, since storage is not shared between them (a shared store would serve it)."""
    acme(gitlab)
    gitlab.add_file(42, "big-pkg", "1.0", BIG_NAME, BIG)
    one = _replica(start_proxy, gitlab, tmp_path / "one", redis_server)
    two = _replica(start_proxy, gitlab, tmp_path / "two", redis_server)
    gitlab.stall_files_after = 1024 * 1024
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(_get, one.url + BIG_PATH)
        wait_until(gitlab.stalled.is_set, "the first replica's download")
        second = pool.submit(_get, two.url + BIG_PATH)
        wait_until(lambda: _metric(two, WAITS) >= 1, "the second replica to wait")
        assert _file_gets(gitlab) == 1
        gitlab.stall_release.set()
        answers = [first.result(), second.result()]
    assert all(a.status_code == 200 and a.content == BIG for a in answers)
    assert _file_gets(gitlab) == 2


@pytest.mark.e2e
def test_a_replica_killed_mid_fill_releases_the_file_after_its_lease(
    gitlab: FakeGitLab, start_proxy: Start, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A leader SIGKILLed mid-fill blocks the file only until its lease expires: the
    waiting replica then fetches it and its client gets every byte."""
    acme(gitlab)
    gitlab.add_file(42, "big-pkg", "1.0", BIG_NAME, BIG)
    short = {"GITLAB_PYPI_PROXY_COORDINATION_LEASE_TTL": "1"}
    leader = _replica(start_proxy, gitlab, tmp_path / "one", redis_server, **short)
    other = _replica(start_proxy, gitlab, tmp_path / "two", redis_server, **short)
    gitlab.stall_files_after = 1024 * 1024
    with ThreadPoolExecutor(2) as pool:
        doomed: Future[httpx.Response] = pool.submit(_get, leader.url + BIG_PATH)
        wait_until(gitlab.stalled.is_set, "the leader's download")
        waiting = pool.submit(_get, other.url + BIG_PATH)
        wait_until(lambda: _metric(other, WAITS) >= 1, "the other replica to wait")
        gitlab.stall_files_after = None
        leader.stop(signal.SIGKILL)
        answer = waiting.result()
        with pytest.raises(httpx.HTTPError):
            doomed.result()
    assert answer.status_code == 200
    assert answer.content == BIG


@pytest.mark.e2e
def test_an_upload_through_one_replica_drops_the_pages_of_the_others(
    gitlab: FakeGitLab, start_proxy: Start, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A page cached for 300 s on one replica lists a version uploaded through another as
    soon as the upload is done."""
    acme(gitlab)
    publish(gitlab, 42, "demo-pkg", "1.0")
    one = _replica(start_proxy, gitlab, tmp_path / "one", redis_server)
    two = _replica(start_proxy, gitlab, tmp_path / "two", redis_server)
    page = two.url + "/api/v4/projects/42/packages/pypi/simple/demo-pkg/"
    assert "demo_pkg-2.0" not in httpx.get(page).text
    assert httpx.get(page).headers["x-cache"] == "HIT"
    filename, content = make_wheel("demo-pkg", "2.0")
    (tmp_path / filename).write_bytes(content)
    upload = f"{one.url}/api/v4/projects/42/packages/pypi"
    result = twine_upload(upload, [tmp_path / filename], username="dev", password=DEV)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: "demo_pkg-2.0" in httpx.get(page).text, "the page to list 2.0", 5)


@pytest.mark.e2e
def test_a_token_added_once_is_accepted_by_every_replica(
    gitlab: FakeGitLab, start_proxy: Start, redis_server: RedisServer, tmp_path: Path
) -> None:
    """`token add` with coordination.redis_url: both replicas (access.mode tokens) accept
    the new token within a second, and neither had a tokens file."""
    acme(gitlab)
    publish(gitlab, 42, "demo-pkg", "1.0")
    env = {"GITLAB_PYPI_PROXY_ACCESS_MODE": "tokens"}
    replicas = [
        _replica(start_proxy, gitlab, tmp_path / name, redis_server, **env) for name in "ab"
    ]
    page = "/api/v4/projects/42/packages/pypi/simple/demo-pkg/"
    assert all(httpx.get(r.url + page).status_code == 401 for r in replicas)
    added = subprocess.run(
        [sys.executable, "-m", "proxy", "token", "add", "ci"],
        env=clean_env(
            GITLAB_PYPI_PROXY_COORDINATION_REDIS_URL=redis_server.url,
            XDG_CONFIG_HOME=str(tmp_path / "config"),
        ),
        capture_output=True,
        text=True,
        check=True,
    )
    token = added.stdout.strip()
    for replica in replicas:
        wait_until(partial(_accepts, replica.url + page, token), "the token to count", 5)
    assert not (tmp_path / "config").exists()


@pytest.mark.e2e
def test_with_redis_stopped_replicas_serve_and_say_so(
    gitlab: FakeGitLab, start_proxy: Start, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis down: files are still served, /-/ready stays ready and names the fallback,
    the gauge reads 0; Redis back: coordinating through it again."""
    acme(gitlab)
    filename, sha = publish(gitlab, 42, "demo-pkg", "1.0")
    replica = _replica(start_proxy, gitlab, tmp_path / "one", redis_server)
    up = "gitlab_pypi_proxy_coordination_redis_up"
    assert httpx.get(replica.url + "/-/ready").json()["coordination"] == "redis"
    redis_server.stop()
    wait_until(lambda: _metric(replica, up) == 0, "the replica to notice")
    ready = httpx.get(replica.url + "/-/ready")
    assert ready.status_code == 200
    assert ready.json()["coordination"] == "local (redis unreachable)"
    answer = _get(f"{replica.url}/api/v4/projects/42/packages/pypi/files/{sha}/{filename}")
    assert answer.status_code == 200
    assert hashlib.sha256(answer.content).hexdigest() == sha
    redis_server.start()
    wait_until(
        lambda: httpx.get(replica.url + "/-/ready").json()["coordination"] == "redis",
        "the replica to reconnect",
    )
    assert _metric(replica, up) == 1
