"""Keeps serving when GitLab doesn't: stale pages, offline mode, one fetch per file, no rot."""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.clients import ProxyProcess, new_venv, pip_install
from tests.fakegitlab import FakeGitLab
from tests.scenario import DEV, SERVICE, Start, acme, publish, serve

pytestmark = pytest.mark.e2e
PAGE = "/api/v4/projects/42/packages/pypi/simple/demo-pkg/"
BIG = bytes(range(256)) * (8 * 4096)  # 8 MiB
BIG_SHA = hashlib.sha256(BIG).hexdigest()
BIG_NAME = "big_pkg-1.0-py3-none-any.whl"
BIG_PATH = f"/api/v4/projects/42/packages/pypi/files/{BIG_SHA}/{BIG_NAME}"


def _wait_for(condition: Callable[[], bool], what: str, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.rsplit(" ", 1)[1])


def _big(gitlab: FakeGitLab) -> None:
    acme(gitlab)
    gitlab.add_file(42, "big-pkg", "1.0", BIG_NAME, BIG)


def _serve(
    start: Start, gitlab: FakeGitLab, cache: Path, *args: str, **options: object
) -> ProxyProcess:
    """A proxy holding the service token (open on loopback)."""
    return serve(start, gitlab, cache, *args, token=SERVICE, **options)


def _links(response: httpx.Response) -> list[str]:
    return [part.split('"')[0] for part in response.text.split('href="')[1:]]


def test_install_works_when_gitlab_goes_down(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """After one install fills the cache, pip installs in a fresh venv with GitLab down."""
    acme(gitlab)
    publish(gitlab, 42, "demo-pkg", "1.0")
    proxy = _serve(start_proxy, gitlab, tmp_path / "c", GITLAB_PYPI_PROXY_CACHE_PAGE_TTL="0")
    index = proxy.url + "/api/v4/projects/42/packages/pypi/simple"
    warm = pip_install(new_venv(tmp_path / "one"), index, "demo-pkg")
    assert warm.returncode == 0, warm.stdout + warm.stderr
    gitlab.set_down(True)
    result = pip_install(new_venv(tmp_path / "two"), index, "demo-pkg")
    assert result.returncode == 0, result.stdout + result.stderr
    page = httpx.get(proxy.url + PAGE)
    assert page.headers["x-cache"] == "STALE", page.text


@pytest.mark.parametrize(
    ("switch", "value"),
    [
        ("fail_status", 500),
        ("fail_status", 502),
        ("fail_status", 503),
        ("down", True),
        ("delay", 3.0),
    ],
)
def test_stale_page_is_served_when_gitlab_fails(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, switch: str, value: object
) -> None:
    """Down, 5xx or slower than connect_timeout: the cached page is served with X-Cache: STALE."""
    acme(gitlab)
    publish(gitlab, 42, "demo-pkg", "1.0")
    proxy = _serve(
        start_proxy,
        gitlab,
        tmp_path / "c",
        GITLAB_PYPI_PROXY_CACHE_PAGE_TTL="0",
        GITLAB_PYPI_PROXY_UPSTREAM_CONNECT_TIMEOUT="0.5",
    )
    assert httpx.get(proxy.url + PAGE).headers["x-cache"] == "MISS"
    if switch == "down":
        gitlab.set_down(True)
    else:
        setattr(gitlab, switch, value)
    stale = httpx.get(proxy.url + PAGE, timeout=10)
    assert stale.status_code == 200
    assert stale.headers["x-cache"] == "STALE"


def test_rate_limit_is_respected(gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path) -> None:
    """After a 429 with Retry-After, the stale page is served and GitLab is not asked again."""
    acme(gitlab)
    publish(gitlab, 42, "demo-pkg", "1.0")
    proxy = _serve(start_proxy, gitlab, tmp_path / "c", GITLAB_PYPI_PROXY_CACHE_PAGE_TTL="0")
    httpx.get(proxy.url + PAGE)
    gitlab.fail_status, gitlab.retry_after = 429, 3600
    page = httpx.get(proxy.url + PAGE)
    assert page.headers["x-cache"] == "STALE", page.text
    asked = gitlab.counts["page"]
    again = httpx.get(proxy.url + PAGE)
    assert again.headers["x-cache"] == "STALE"
    assert gitlab.counts["page"] == asked


def test_revalidation_uses_the_etag(gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path) -> None:
    """A page past page_ttl is revalidated with If-None-Match; GitLab's 304 refreshes it."""
    acme(gitlab)
    publish(gitlab, 42, "demo-pkg", "1.0")
    proxy = _serve(start_proxy, gitlab, tmp_path / "c", GITLAB_PYPI_PROXY_CACHE_PAGE_TTL="0")
    first = httpx.get(proxy.url + PAGE)
    second = httpx.get(proxy.url + PAGE)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "REVALIDATED")
    assert second.text == first.text
    assert "if-none-match" in gitlab.requests[-1].headers


def test_stale_page_lists_only_files_the_proxy_holds(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """With GitLab down, a page links only cached files, so pip never picks one it can't get."""
    acme(gitlab)
    held, _ = publish(gitlab, 42, "demo-pkg", "1.0")
    missing, _ = publish(gitlab, 42, "demo-pkg", "2.0")
    proxy = _serve(start_proxy, gitlab, tmp_path / "c", GITLAB_PYPI_PROXY_CACHE_PAGE_TTL="0")
    index = proxy.url + "/api/v4/projects/42/packages/pypi/simple"
    warm = pip_install(new_venv(tmp_path / "v"), index, "demo-pkg==1.0")
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert len(_links(httpx.get(proxy.url + PAGE))) == 2
    gitlab.set_down(True)
    links = _links(httpx.get(proxy.url + PAGE))
    assert [link.split("#")[0].rsplit("/", 1)[-1] for link in links] == [held]
    assert missing not in httpx.get(proxy.url + PAGE).text


def test_pages_survive_a_restart(gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path) -> None:
    """A page cached before a restart is served after it with GitLab down."""
    acme(gitlab)
    publish(gitlab, 42, "demo-pkg", "1.0")
    first = _serve(start_proxy, gitlab, tmp_path / "c")
    before = httpx.get(first.url + PAGE)
    first.stop()
    gitlab.set_down(True)
    second = _serve(start_proxy, gitlab, tmp_path / "c")
    after = httpx.get(second.url + PAGE)
    assert after.status_code == 200
    assert _links(after) == [link.replace(first.url, second.url) for link in _links(before)]


def test_offline_mode_never_contacts_gitlab(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """--offline installs from the cache alone; unknown pages 404 (offline); uploads 503."""
    acme(gitlab)
    publish(gitlab, 42, "demo-pkg", "1.0")
    publish(gitlab, 42, "demo-pkg", "2.0")
    online = _serve(start_proxy, gitlab, tmp_path / "c")
    index = "/api/v4/projects/42/packages/pypi/simple"
    warm = pip_install(new_venv(tmp_path / "one"), online.url + index, "demo-pkg==1.0")
    assert warm.returncode == 0, warm.stdout + warm.stderr
    online.stop()
    gitlab.reset_counts()
    offline = _serve(start_proxy, gitlab, tmp_path / "c", "--offline")
    result = pip_install(new_venv(tmp_path / "two"), offline.url + index, "demo-pkg")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo-pkg-1.0" in result.stdout.replace("_", "-") or "demo-pkg-1.0" in result.stdout
    unknown = httpx.get(offline.url + index + "/never-seen/")
    assert unknown.status_code == 404
    assert "offline" in unknown.text
    upload = httpx.post(
        offline.url + "/api/v4/projects/42/packages/pypi", content=b"x", auth=("dev", DEV)
    )
    assert upload.status_code == 503
    assert sum(gitlab.counts.values()) == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_clients_share_one_fetch(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, workers: int
) -> None:
    """24 clients of one uncached 8 MiB file: one GitLab download, every body correct,
    and each client gets bytes before GitLab has sent them all."""
    _big(gitlab)
    gitlab.stall_files_after = 1024 * 1024
    proxy = _serve(start_proxy, gitlab, tmp_path / "c", "--workers", str(workers))
    started = threading.Semaphore(0)
    bodies: list[bytes] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with httpx.stream("GET", proxy.url + BIG_PATH, timeout=60) as response:
                chunks = response.iter_bytes()
                body = next(chunks)
                started.release()
                body += b"".join(chunks)
                bodies.append(body)
        except BaseException as exc:  # reported below
            errors.append(exc)
            started.release()

    threads = [threading.Thread(target=client) for _ in range(24)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert started.acquire(timeout=60), "a client got no first bytes"
    assert not gitlab.stall_release.is_set()  # all of them got bytes mid-download
    gitlab.stall_release.set()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(bodies) == 24
    assert all(body == BIG for body in bodies)
    assert gitlab.counts["file"] == 1
    # Whichever worker answers, /-/metrics counts every worker's requests.
    text = httpx.get(proxy.url + "/-/metrics").text
    served = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gitlab_pypi_proxy_requests_total{") and 'route="file"' in line
    ]
    assert sum(served) == 24


def test_client_disconnect_does_not_abort_the_fill(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """A client that hangs up mid-download leaves the fill running to a committed file."""
    _big(gitlab)
    gitlab.stall_files_after = 1024 * 1024
    proxy = _serve(start_proxy, gitlab, tmp_path / "c")
    with httpx.stream("GET", proxy.url + BIG_PATH, timeout=30) as response:
        next(response.iter_bytes())
    gitlab.stall_release.set()
    _wait_for(lambda: httpx.head(proxy.url + BIG_PATH).headers["x-cache"] == "HIT", "the commit")
    again = httpx.get(proxy.url + BIG_PATH, timeout=30)
    assert again.content == BIG
    # One download (the HEADs polled above ask GitLab until the file is held).
    assert len([r for r in gitlab.requests if r.method == "GET" and "/files/" in r.path]) == 1


def test_sigkill_mid_download_leaves_nothing_partial(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """A proxy killed mid-download restarts with no temp file and serves the right bytes."""
    _big(gitlab)
    gitlab.stall_files_after = 1024 * 1024
    cache = tmp_path / "c"
    first = _serve(start_proxy, gitlab, cache)
    with httpx.stream("GET", first.url + BIG_PATH, timeout=30) as response:
        next(response.iter_bytes())
        assert list((cache / "tmp").glob("*.fill"))
        first.stop(signal.SIGKILL)
    gitlab.stall_files_after = None
    gitlab.stall_release.set()
    second = _serve(start_proxy, gitlab, cache)
    assert list((cache / "tmp").iterdir()) == []
    after = httpx.get(second.url + BIG_PATH, timeout=30)
    assert after.headers["x-cache"] == "MISS"
    assert after.content == BIG


@pytest.mark.parametrize("switch", ["truncate_files", "corrupt_files"])
def test_bad_upstream_bodies_are_never_cached(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, switch: str
) -> None:
    """A truncated or wrong body breaks the download; the next request gets the right file."""
    _big(gitlab)
    setattr(gitlab, switch, True)
    proxy = _serve(start_proxy, gitlab, tmp_path / "c")
    with pytest.raises(httpx.HTTPError):
        httpx.get(proxy.url + BIG_PATH, timeout=30).raise_for_status()
    setattr(gitlab, switch, False)
    good = httpx.get(proxy.url + BIG_PATH, timeout=30)
    assert good.content == BIG
    assert gitlab.counts["file"] == 2


def test_full_disk_fails_cleanly_and_recovers(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """When the disk cannot take the file, the client's download fails and nothing is kept."""
    _big(gitlab)
    proxy = _serve(start_proxy, gitlab, tmp_path / "c", file_size_limit=2 * 1024 * 1024)
    with pytest.raises(httpx.HTTPError):
        httpx.get(proxy.url + BIG_PATH, timeout=30).raise_for_status()
    proxy.lift_file_size_limit()
    good = httpx.get(proxy.url + BIG_PATH, timeout=30)
    assert good.headers["x-cache"] == "MISS"
    assert good.content == BIG


def test_readiness_and_metrics(gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path) -> None:
    """/-/ready tells cache and GitLab state; /-/metrics counts requests, bytes and mismatches."""
    _big(gitlab)
    proxy = _serve(start_proxy, gitlab, tmp_path / "c")
    assert httpx.get(proxy.url + "/-/ready").json() == {
        "ready": True,
        "cache": "writable",
        "gitlab": "reachable",
        "coordination": "local",
    }
    httpx.get(proxy.url + BIG_PATH, timeout=30)
    httpx.get(proxy.url + BIG_PATH, timeout=30)
    gitlab.set_down(True)
    assert httpx.get(proxy.url + "/-/ready").json()["gitlab"].startswith("unreachable")
    text = httpx.get(proxy.url + "/-/metrics").text
    assert 'gitlab_pypi_proxy_requests_total{cache="HIT",route="file"} 1.0' in text
    assert _metric(text, 'gitlab_pypi_proxy_bytes_served_total{source="cache"}') == len(BIG)
    assert _metric(text, 'gitlab_pypi_proxy_bytes_served_total{source="gitlab"}') == len(BIG)
    assert _metric(text, 'gitlab_pypi_proxy_upstream_seconds_count{kind="file"}') == 1
    assert "gitlab_pypi_proxy_cache_files 1.0" in text
    assert SERVICE not in text
