"""A full disk degrades, never stops: what is cached is served, the rest streamed through."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.cache import Store
from proxy.changes import Changes
from proxy.errors import CacheFull
from proxy.spool import Spool
from proxy.storage import USE_RESOLUTION
from tests.fakegitlab import FakeGitLab
from tests.scenario import SERVICE, Start, acme, publish, serve
from tests.test_cache import Clock

pytestmark = pytest.mark.e2e
API = "/api/v4/projects/42/packages/pypi"
DISK = 16 * 1024 * 1024
BIG = os.urandom(24 * 1024 * 1024)  # larger than the whole disk
BIG_NAME = "big_pkg-1.0-py3-none-any.whl"
BIG_PATH = f"{API}/files/{hashlib.sha256(BIG).hexdigest()}/{BIG_NAME}"


def _mount(directory: Path, size: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        why = f"cannot mount a small tmpfs: {mounted.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)  # CI runs as root: the full-disk tests must run there
        pytest.skip(why)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB file system of its own (tmpfs), unmounted after the test however it ends."""
    directory = tmp_path / "disk"
    _mount(directory, DISK)
    try:
        yield directory
    finally:
        # Lazily: a proxy of the test may still hold files open while it stops.
        subprocess.run(["umount", "-l", str(directory)], check=False)


def _fill_up(directory: Path) -> None:
    """Write a file until the disk refuses another byte."""
    with open(directory / "filler", "wb", buffering=0) as out:
        block = b"\0" * (256 * 1024)
        while True:
            try:
                out.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                block = block[: len(block) // 2]
                if not block:
                    return


def _leftovers(cache: Path) -> list[str]:
    """Files of fills in the cache's tmp folder, and diskcache files beyond the held ones."""
    tmp = [p.name for p in (cache / "tmp").iterdir() if p.suffix in (".fill", ".json", ".staged")]
    return tmp + [str(p) for p in (cache / "files").rglob("*.val")]


def test_a_full_disk_serves_the_cache_and_streams_the_rest(
    small_disk: Path, gitlab: FakeGitLab, start_proxy: Start, request: pytest.FixtureRequest
) -> None:
    """With the disk full: a cached file is a HIT, pages are served, an uncached file and a
    file larger than the disk stream through uncached (BYPASS), readiness and metrics say
    full, and no partial file is left."""
    acme(gitlab)
    cached_name, cached_sha = publish(gitlab, 42, "cached-pkg", "1.0")
    small_name, small_sha = publish(gitlab, 42, "small-pkg", "1.0")
    gitlab.add_file(42, "big-pkg", "1.0", BIG_NAME, BIG)
    cache = small_disk / "cache"
    proxy = serve(start_proxy, gitlab, cache, token=SERVICE)
    client = httpx.Client(base_url=proxy.url, timeout=60)
    request.addfinalizer(client.close)
    get = client.get
    assert get(f"{API}/simple/cached-pkg/").status_code == 200
    cached_path = f"{API}/files/{cached_sha}/{cached_name}"
    assert get(cached_path).headers["x-cache"] == "MISS"
    big = get(BIG_PATH)  # the disk has room, but not for this file
    assert (big.status_code, big.headers["x-cache"], big.content == BIG) == (200, "BYPASS", True)

    _fill_up(small_disk)

    hit = get(cached_path)
    assert (hit.status_code, hit.headers["x-cache"]) == (200, "HIT")
    assert hashlib.sha256(hit.content).hexdigest() == cached_sha
    assert get(f"{API}/simple/cached-pkg/").status_code == 200
    assert get(f"{API}/simple/small-pkg/").status_code == 200
    small = get(f"{API}/files/{small_sha}/{small_name}")
    assert (small.status_code, small.headers["x-cache"]) == (200, "BYPASS")
    assert hashlib.sha256(small.content).hexdigest() == small_sha
    big = get(BIG_PATH)
    assert (big.status_code, big.headers["x-cache"], big.content == BIG) == (200, "BYPASS", True)
    ready = get("/-/ready")
    assert ready.status_code == 200
    assert ready.json()["cache"].startswith("full (")
    metrics = get("/-/metrics").text
    assert "gitlab_pypi_proxy_cache_full 1.0" in metrics
    assert "gitlab_pypi_proxy_streamed_through_total 3.0" in metrics
    # Kept: the cached wheel (and its core metadata, read once it was held); never a
    # byte of the files streamed through, whole or in part.
    kept = {hashlib.sha256(Path(name).read_bytes()).hexdigest() for name in _leftovers(cache)}
    assert cached_sha in kept
    assert not kept & {small_sha, hashlib.sha256(BIG).hexdigest()}
    assert [name for name in _leftovers(cache) if not name.endswith(".val")] == []


def test_a_corrupt_file_streamed_through_a_full_disk_is_aborted(
    small_disk: Path, gitlab: FakeGitLab, start_proxy: Start
) -> None:
    """A file streamed through uncached that fails its hash breaks the download."""
    acme(gitlab)
    gitlab.add_file(42, "big-pkg", "1.0", BIG_NAME, BIG)
    gitlab.corrupt_files = True
    proxy = serve(start_proxy, gitlab, small_disk / "cache", token=SERVICE)
    _fill_up(small_disk)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(proxy.url + BIG_PATH, timeout=60)
    metrics = httpx.get(proxy.url + "/-/metrics").text
    assert "gitlab_pypi_proxy_hash_mismatches_total 1.0" in metrics


def test_a_file_the_disk_cannot_take_leaves_no_partial_copy(
    small_disk: Path, tmp_path: Path
) -> None:
    """Store.put_file on a disk without room raises CacheFull and keeps nothing of it."""
    store = Store(small_disk / "cache", max_size=10**9)
    source = tmp_path / "big"
    source.write_bytes(BIG)
    with pytest.raises(CacheFull):
        store.put_file(hashlib.sha256(BIG).hexdigest(), source)
    assert _leftovers(small_disk / "cache") == []
    assert store.stats().files == 0


def test_an_announcement_the_disk_refuses_leaves_nothing(small_disk: Path) -> None:
    """Spool.announce on a full disk raises ENOSPC and leaves no staged file."""
    spool = Spool(small_disk / "cache")
    _fill_up(small_disk)
    with pytest.raises(OSError, match="No space left"):
        spool.announce("a" * 64, "token", origin="o", status=200, length=1)
    assert list(spool.tmp.iterdir()) == []


def test_a_use_the_full_disk_cannot_record_is_logged_once(
    small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Hits on a full disk are served; the use records it refuses make one warning, not one
    per hit."""
    clock = Clock()
    store = Store(small_disk / "cache", max_size=10**9, clock=clock)
    content = b"wheel" * 1000
    source = tmp_path / "wheel"
    source.write_bytes(content)
    sha = hashlib.sha256(content).hexdigest()
    store.put_file(sha, source)
    _fill_up(small_disk)
    for _ in range(3):
        clock.now += 2 * USE_RESOLUTION
        handle = store.open_file(sha)
        assert handle is not None
        with handle:
            assert handle.read() == content
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage().split(":")[0] for r in warnings] == [f"cannot record the use of {sha}"]


def test_change_marks_opened_on_a_full_disk_live_in_memory(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache opened on a full disk still starts: its change marks (shared by a directory's
    workers) become this process's own, said once, and still move."""
    _fill_up(small_disk)
    changes = Changes(small_disk / "changes")
    before = changes.stamp("my-pkg")
    changes.pages("my-pkg")
    assert changes.stamp("my-pkg") != before
    assert changes.dropped() == bytes(8)
    changes.files()
    assert changes.dropped() != bytes(8)
    assert "change marks are this process's own" in caplog.text
