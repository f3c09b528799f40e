"""Three replicas on one bucket and one Redis behind a real nginx, as deploy/ runs them."""

from __future__ import annotations

import hashlib
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from subprocess import CompletedProcess

import httpx
import pytest

from tests.clients import ProxyProcess, proxies, twine_upload, uv_install
from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab
from tests.fleet import Fleet, start_fleet
from tests.s3server import S3Server, moto_server
from tests.scenario import DEV, SERVICE, acme
from tests.services import RedisServer, wait_until

pytestmark = pytest.mark.e2e
CLIENTS = 30
PREFIX = "fleet"
JSON = {"accept": "application/json"}
WAITS = "gitlab_pypi_proxy_lease_waits_total"


@pytest.fixture(scope="module")
def gitlab() -> Iterator[FakeGitLab]:
    """One fake GitLab for the module's fleet (each test publishes packages of its own)."""
    with FakeGitLab() as fake:
        acme(fake)
        yield fake


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module's fleet (a test that stops it starts it again)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """One moto server for the module's fleet: its bucket holds every test's files."""
    with moto_server() as server:
        yield server


@pytest.fixture(scope="module")
def fleet(
    gitlab: FakeGitLab,
    redis_server: RedisServer,
    s3_server: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    """Three replicas holding the service token, their files in one bucket, coordinated
    by one Redis (short leases), pages kept for an hour; started once for the module (a
    test that kills a replica starts it again)."""
    work = tmp_path_factory.mktemp("fleet")
    with proxies(work) as start:
        started = start_fleet(
            start,
            gitlab,
            work,
            3,
            token=SERVICE,
            GITLAB_PYPI_PROXY_ACCESS_MODE="open",
            GITLAB_PYPI_PROXY_CACHE_PAGE_TTL="3600",
            GITLAB_PYPI_PROXY_STORAGE_BACKEND="s3",
            GITLAB_PYPI_PROXY_STORAGE_URL=f"s3://{s3_server.bucket}/{PREFIX}",
            GITLAB_PYPI_PROXY_STORAGE_ENDPOINT_URL=s3_server.endpoint,
            GITLAB_PYPI_PROXY_COORDINATION_REDIS_URL=redis_server.url,
            GITLAB_PYPI_PROXY_COORDINATION_LEASE_TTL="2",
            **s3_server.env(),
        )
        try:
            yield started
        finally:
            started.balancer.stop()


@pytest.fixture(autouse=True)
def no_stall(gitlab: FakeGitLab) -> Iterator[None]:
    """Every test starts and ends with GitLab answering at once."""
    yield
    gitlab.stall_files_after = None
    gitlab.stall_release.set()


def _stall(gitlab: FakeGitLab, after: int) -> None:
    """Make GitLab's downloads stop after `after` bytes until `stall_release` is set."""
    gitlab.stall_release.clear()
    gitlab.stalled.clear()
    gitlab.stall_files_after = after


def _publish(gitlab: FakeGitLab, name: str, *requires: str) -> dict[str, bytes]:
    """Put a wheel of `name` 1.0 into project 42; returns {sha256: content}."""
    filename, content = make_wheel(name, "1.0", requires=requires)
    return {gitlab.add_file(42, name, "1.0", filename, content): content}


def _index(base: str) -> str:
    return f"{base}/api/v4/projects/42/packages/pypi/simple"


def _install(base: str, work: Path, *requirements: str) -> CompletedProcess[str]:
    """`uv pip install --target` from the proxy at `base` only, with its own cache."""
    python = Path(sys.executable)
    return uv_install(python, _index(base), *requirements, cache=work / "cache", target=work / "t")


def _gets(gitlab: FakeGitLab, sha256: str) -> int:
    """GitLab's whole-file downloads of a file (cold Range peeks pass through, design 3.2)."""
    return sum(
        1
        for r in gitlab.requests
        if r.method == "GET" and f"/files/{sha256}/" in r.path and "range" not in r.headers
    )


def _waits(fleet: Fleet) -> float:
    """Lease waits of all replicas: fills that waited for another replica's."""
    total = 0.0
    for replica in fleet.replicas:
        for line in httpx.get(replica.url + "/-/metrics").text.splitlines():
            if line.startswith(WAITS + " "):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _says(url: str, text: str) -> bool:
    """Whether a GET of `url` answers with `text` in its body."""
    return text in httpx.get(url).text


def _coordinating(replica: ProxyProcess, state: str) -> bool:
    """Whether the replica's /-/ready names this coordination state."""
    return bool(httpx.get(replica.url + "/-/ready").json()["coordination"] == state)


def _leading(replica: ProxyProcess) -> bool:
    """Whether the replica is downloading a fill: GitLab answered it (its length known),
    where a fill waiting for another replica's lease has no answer yet."""
    fills = httpx.get(replica.url + "/", headers=JSON).json()["fills"]
    return any(fill["length"] is not None for fill in fills)


def test_thirty_installs_through_nginx_make_one_gitlab_download_per_file(
    fleet: Fleet, gitlab: FakeGitLab, s3_server: S3Server, tmp_path: Path
) -> None:
    """30 concurrent uv installs through nginx: GitLab sends each whole file once in all;
    the replicas that waited for another's lease serve its object from the bucket."""
    files = _publish(gitlab, "fleet-lib")
    files |= _publish(gitlab, "fleet-util")
    files |= _publish(gitlab, "fleet-app", "fleet-lib", "fleet-util")
    waited = _waits(fleet)
    _stall(gitlab, 100)  # every download waits, so the clients meet in fills
    with ThreadPoolExecutor(CLIENTS) as pool:
        installs = [
            pool.submit(_install, fleet.url, tmp_path / f"client-{n}", "fleet-app")
            for n in range(CLIENTS)
        ]
        wait_until(gitlab.stalled.is_set, "the first download")
        wait_until(lambda: _waits(fleet) > waited, "another replica to wait for its lease")
        gitlab.stall_release.set()
        results = [install.result() for install in installs]
    assert all(r.returncode == 0 for r in results), next(r.stderr for r in results if r.returncode)
    assert {sha: _gets(gitlab, sha) for sha in files} == dict.fromkeys(files, 1)
    held = {key.rsplit("/", 1)[1] for key in s3_server.keys(f"{PREFIX}/files/")}
    assert set(files) <= held


class BucketWatch:
    """Lists the bucket's files over and over in a thread, keeping every (key, size) seen."""

    def __init__(self, server: S3Server) -> None:
        self.seen: set[tuple[str, int]] = set()
        self._client = server.client()
        self._bucket = server.bucket
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> BucketWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._stop.is_set():
            listed = self._client.list_objects_v2(Bucket=self._bucket, Prefix=f"{PREFIX}/files/")
            self.seen |= {(item["Key"], int(item["Size"])) for item in listed.get("Contents", ())}


def test_a_replica_killed_mid_fill_leaves_no_partial_object_and_the_install_succeeds(
    fleet: Fleet, gitlab: FakeGitLab, s3_server: S3Server, tmp_path: Path
) -> None:
    """The replica filling a file is SIGKILLed mid-download: uv's install through nginx
    still succeeds (another replica fetches it once the lease is free), and the bucket
    never lists an object that is not the whole verified file."""
    files = _publish(gitlab, "fleet-solo")
    _stall(gitlab, 100)
    with BucketWatch(s3_server) as watch, ThreadPoolExecutor(1) as pool:
        install = pool.submit(_install, fleet.url, tmp_path / "client", "fleet-solo")
        wait_until(gitlab.stalled.is_set, "the download to stall")
        wait_until(lambda: any(map(_leading, fleet.replicas)), "a replica to fill it")
        (leader,) = [replica for replica in fleet.replicas if _leading(replica)]
        leader.stop(signal.SIGKILL)
        gitlab.stall_files_after = None
        gitlab.stall_release.set()
        result = install.result()
    leader.start()  # the fleet whole again for the next test
    assert result.returncode == 0, result.stderr
    assert [_gets(gitlab, sha) for sha in files] == [2]  # the killed fill's, and one more
    whole = {(f"{PREFIX}/files/{sha}", len(content)) for sha, content in files.items()}
    assert {(key, size) for key, size in watch.seen if key in dict(whole)} == whole
    for sha in files:
        body = s3_server.client().get_object(Bucket=s3_server.bucket, Key=f"{PREFIX}/files/{sha}")
        assert hashlib.sha256(body["Body"].read()).hexdigest() == sha


def test_an_upload_through_one_replica_is_seen_through_the_others_at_once(
    fleet: Fleet, gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """twine uploads through replica 0; the pages replicas 1 and 2 hold for an hour show
    the new file without waiting for their TTL."""
    _publish(gitlab, "fleet-up")
    others = fleet.replicas[1:]
    for replica in others:
        assert "fleet_up-2.0" not in httpx.get(_index(replica.url) + "/fleet-up/").text
    filename, content = make_wheel("fleet-up", "2.0")
    (tmp_path / filename).write_bytes(content)
    project = f"{fleet.replicas[0].url}/api/v4/projects/42/packages/pypi"
    uploaded = twine_upload(project, [tmp_path / filename], username="dev", password=DEV)
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    for replica in others:
        wait_until(
            partial(_says, _index(replica.url) + "/fleet-up/", filename),
            f"{replica.url} to show the upload",
            deadline=2.0,
        )


@pytest.fixture
def redis_stopped(fleet: Fleet, redis_server: RedisServer) -> Iterator[None]:
    """Redis stopped for the test; started again after, and every replica back on it."""
    redis_server.stop()
    yield
    redis_server.start()
    for replica in fleet.replicas:
        wait_until(partial(_coordinating, replica, "redis"), "Redis again")


@pytest.mark.usefixtures("redis_stopped")
def test_installs_succeed_with_redis_stopped(
    fleet: Fleet, gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """With Redis gone, every replica says so in /-/ready and installs through nginx still
    succeed (each replica coordinating alone)."""
    files = _publish(gitlab, "fleet-alone")
    for replica in fleet.replicas:
        wait_until(
            partial(_coordinating, replica, "local (redis unreachable)"),
            f"{replica.url} to notice",
        )
    with ThreadPoolExecutor(3) as pool:
        installs = [
            pool.submit(_install, fleet.url, tmp_path / f"client-{n}", "fleet-alone")
            for n in range(3)
        ]
        results = [install.result() for install in installs]
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert all(_gets(gitlab, sha) >= 1 for sha in files)
