"""End to end with storage.backend = "s3": a real proxy process, the fake GitLab and moto."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.objectstore import Bucket
from proxy.records import Records
from tests.clients import ProxyProcess
from tests.fakegitlab import FakeGitLab
from tests.s3server import SECRET, S3Server, moto_server
from tests.scenario import SERVICE, Start, acme, serve

pytestmark = pytest.mark.e2e
BIG = bytes(range(256)) * (12 * 4096)  # 12 MiB: above PART_SIZE, so uploaded in parts


@pytest.fixture
def s3() -> Iterator[S3Server]:
    """A moto server with an empty bucket."""
    with moto_server() as server:
        yield server


def _proxy(
    start_proxy: Start, gitlab: FakeGitLab, s3: S3Server, tmp_path: Path, **env: str
) -> ProxyProcess:
    storage = {
        "GITLAB_PYPI_PROXY_STORAGE_BACKEND": "s3",
        "GITLAB_PYPI_PROXY_STORAGE_URL": f"s3://{s3.bucket}/mirror",
        "GITLAB_PYPI_PROXY_STORAGE_ENDPOINT_URL": s3.endpoint,
    }
    return serve(
        start_proxy, gitlab, tmp_path / "cache", token=SERVICE, **storage, **s3.env(), **env
    )


def _file(gitlab: FakeGitLab, content: bytes = BIG) -> tuple[str, str]:
    """A wheel of `content` in project 42; returns its (filename, sha256)."""
    acme(gitlab)
    filename = "big_pkg-1.0-py3-none-any.whl"
    return filename, gitlab.add_file(42, "big-pkg", "1.0", filename, content)


def _url(proxy: ProxyProcess, sha: str, filename: str) -> str:
    return f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{sha}/{filename}"


def test_a_cold_file_lands_in_the_bucket_and_is_served_from_it_with_ranges(
    gitlab: FakeGitLab, start_proxy: Start, s3: S3Server, tmp_path: Path
) -> None:
    """The first GET fills from GitLab into the bucket; the next, and a range, come from
    the bucket (X-Cache HIT) with the same bytes, and GitLab is asked once."""
    filename, sha = _file(gitlab)
    proxy = _proxy(start_proxy, gitlab, s3, tmp_path)
    url = _url(proxy, sha, filename)
    cold = httpx.get(url, timeout=60)
    assert (cold.status_code, cold.headers["x-cache"]) == (200, "MISS")
    assert hashlib.sha256(cold.content).hexdigest() == sha
    assert s3.keys() == [f"mirror/files/{sha}"]
    hot = httpx.get(url, timeout=60)
    assert (hot.headers["x-cache"], hot.content) == ("HIT", BIG)
    ranged = httpx.get(url, headers={"Range": "bytes=1000-1999999"}, timeout=60)
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 1000-1999999/{len(BIG)}"
    assert ranged.content == BIG[1000:2_000_000]
    assert httpx.get(url, headers={"Range": "bytes=-10"}, timeout=60).content == BIG[-10:]
    fetched = [r for r in gitlab.requests if r.method == "GET" and "/files/" in r.path]
    assert len(fetched) == 1


def test_redirect_mode_answers_a_hit_with_a_presigned_url_free_of_credentials(
    gitlab: FakeGitLab, start_proxy: Start, s3: S3Server, tmp_path: Path
) -> None:
    """With storage.redirect, a held file is a 302 to a URL that gives the bytes without
    any header and carries neither the AWS secret nor any GitLab token."""
    filename, sha = _file(gitlab, b"redirected wheel" * 1000)
    proxy = _proxy(start_proxy, gitlab, s3, tmp_path, GITLAB_PYPI_PROXY_STORAGE_REDIRECT="true")
    url = _url(proxy, sha, filename)
    assert httpx.get(url, timeout=60).headers["x-cache"] == "MISS"
    hit = httpx.get(url, timeout=60)
    assert (hit.status_code, hit.headers["x-cache"]) == (302, "HIT")
    location = hit.headers["location"]
    assert location.startswith(s3.endpoint)
    assert SECRET not in location
    assert SERVICE not in location
    assert "X-Amz-Signature=" in location
    assert httpx.get(location, timeout=60).content == b"redirected wheel" * 1000


def test_redirect_mode_answers_a_head_itself(
    gitlab: FakeGitLab, start_proxy: Start, s3: S3Server, tmp_path: Path
) -> None:
    """With storage.redirect, a HEAD of a held file is answered by the proxy (a URL presigned
    for GET refuses HEAD), with the length and Accept-Ranges uv needs."""
    filename, sha = _file(gitlab, b"headed wheel" * 1000)
    proxy = _proxy(start_proxy, gitlab, s3, tmp_path, GITLAB_PYPI_PROXY_STORAGE_REDIRECT="true")
    url = _url(proxy, sha, filename)
    assert httpx.get(url, timeout=60).status_code == 200
    head = httpx.head(url, timeout=60)
    assert (head.status_code, head.headers["x-cache"]) == (200, "HIT")
    assert head.headers["content-length"] == str(len(b"headed wheel" * 1000))
    assert head.headers["accept-ranges"] == "bytes"


def test_no_partial_object_is_visible_while_a_fill_runs(
    gitlab: FakeGitLab, start_proxy: Start, s3: S3Server, tmp_path: Path
) -> None:
    """While GitLab holds back the rest of a file, the bucket lists nothing; once the
    verified file is complete, it lists exactly that object."""
    filename, sha = _file(gitlab)
    gitlab.stall_files_after = len(BIG) // 2
    proxy = _proxy(start_proxy, gitlab, s3, tmp_path)
    got: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: got.append(httpx.get(_url(proxy, sha, filename), timeout=60))
    )
    client.start()
    assert gitlab.stalled.wait(30)
    assert s3.keys() == []
    gitlab.stall_release.set()
    client.join(60)
    assert got
    assert got[0].content == BIG
    deadline = time.monotonic() + 30
    while s3.keys() != [f"mirror/files/{sha}"]:
        assert time.monotonic() < deadline, s3.keys()
        time.sleep(0.05)  # polling a condition with a deadline, not a fixed wait


def test_eviction_in_the_bucket_takes_the_least_recently_used_and_spares_a_pin(
    gitlab: FakeGitLab,
    start_proxy: Start,
    s3: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past cache.max_size, a proxy evicts the bucket's least recently used file, never one
    pinned (here by another Bucket on the same prefix, as a replica would)."""
    acme(gitlab)
    shas = {}
    for name in ("pinned", "first", "second", "third", "fourth"):
        filename = f"{name}_pkg-1.0-py3-none-any.whl"
        content = name.encode().ljust(1024 * 1024, b".")
        shas[name] = (filename, gitlab.add_file(42, f"{name}-pkg", "1.0", filename, content))
    proxy = _proxy(start_proxy, gitlab, s3, tmp_path, GITLAB_PYPI_PROXY_CACHE_MAX_SIZE="3500000")

    def fetch(name: str) -> None:
        filename, sha = shas[name]
        assert httpx.get(_url(proxy, sha, filename), timeout=60).status_code == 200

    fetch("pinned")
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    replica = Bucket(
        f"s3://{s3.bucket}/mirror",
        endpoint_url=s3.endpoint,
        uses=Records(tmp_path / "uses", size_limit=10**6),
    )
    assert replica.pin(shas["pinned"][1])
    for name in ("first", "second", "third"):
        fetch(name)
    held = set(s3.keys("mirror/files/"))
    assert held == {f"mirror/files/{sha}" for name, (_, sha) in shas.items() if name != "fourth"}
    fetch("fourth")
    held = set(s3.keys("mirror/files/"))
    assert f"mirror/files/{shas['pinned'][1]}" in held
    assert f"mirror/files/{shas['first'][1]}" not in held
    assert f"mirror/files/{shas['fourth'][1]}" in held
