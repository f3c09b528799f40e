"""Three replicas on one Redis behind a real nginx, as deploy/ runs them (local storage each)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.fakegitlab import FakeGitLab
from tests.fleet import Fleet, start_fleet
from tests.scenario import SERVICE, Start, acme
from tests.services import RedisServer, wait_until

pytestmark = pytest.mark.e2e
CLIENTS = 30
FILES = {f"fleet_pkg-{n}.0-py3-none-any.whl": bytes([n]) * (4 * 1024 * 1024) for n in range(1, 3)}
WAITS = "gitlab_pypi_proxy_lease_waits_total"


@pytest.fixture
def fleet(
    gitlab: FakeGitLab, start_proxy: Start, redis_server: RedisServer, tmp_path: Path
) -> Iterator[Fleet]:
    """Three replicas holding the service token, coordinated by the test's Redis."""
    acme(gitlab)
    started = start_fleet(
        start_proxy,
        gitlab,
        tmp_path / "fleet",
        3,
        token=SERVICE,
        GITLAB_PYPI_PROXY_COORDINATION_REDIS_URL=redis_server.url,
        GITLAB_PYPI_PROXY_ACCESS_MODE="open",
    )
    yield started
    started.balancer.stop()


def _waits(url: str) -> float:
    text = httpx.get(url + "/-/metrics").text
    line = next((line for line in text.splitlines() if line.startswith(WAITS + " ")), None)
    return 0.0 if line is None else float(line.rsplit(" ", 1)[1])


def _gets(gitlab: FakeGitLab, sha256: str) -> int:
    return sum(1 for r in gitlab.requests if r.method == "GET" and f"/files/{sha256}/" in r.path)


def _fetch_all(base: str, paths: list[str]) -> Callable[[], list[bytes]]:
    def fetch() -> list[bytes]:
        with httpx.Client(base_url=base, timeout=120) as client:
            answers = [client.get(path) for path in paths]
        assert all(a.status_code == 200 for a in answers), [a.status_code for a in answers]
        return [a.content for a in answers]

    return fetch


def test_thirty_clients_through_nginx_cause_one_gitlab_download_at_a_time(
    fleet: Fleet, gitlab: FakeGitLab
) -> None:
    """30 concurrent clients fetch the same files through nginx: while the first replica
    downloads a file the other two wait for it (GitLab has one download of it), and each
    replica downloads each file at most once. (Every replica keeps its own copy until
    storage is shared; with one bucket, GitLab serves each file once in all.)"""
    shas = {name: hashlib.sha256(content).hexdigest() for name, content in FILES.items()}
    for name, content in FILES.items():
        gitlab.add_file(42, "fleet-pkg", name.split("-")[1], name, content)
    paths = [f"/api/v4/projects/42/packages/pypi/files/{shas[n]}/{n}" for n in FILES]
    gitlab.stall_files_after = 1024 * 1024
    with ThreadPoolExecutor(CLIENTS) as pool:
        clients = [pool.submit(_fetch_all(fleet.url, paths)) for _ in range(CLIENTS)]
        wait_until(gitlab.stalled.is_set, "the first download")
        wait_until(
            lambda: sum(_waits(r.url) >= 1 for r in fleet.replicas) == 2,
            "the two other replicas to wait for it",
        )
        first = shas[next(iter(FILES))]
        assert _gets(gitlab, first) == 1
        gitlab.stall_release.set()
        bodies = [client.result() for client in clients]
    assert all(body == list(FILES.values()) for body in bodies)
    assert all(1 <= _gets(gitlab, sha) <= len(fleet.replicas) for sha in shas.values())
