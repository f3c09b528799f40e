"""The storage protocol: the same table against both backends, local disk and an S3 bucket."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.cache import Store
from proxy.objectstore import Bucket
from proxy.records import Records
from proxy.storage import USE_RESOLUTION, Opened
from tests.s3server import SECRET, S3Server, moto_server

_PREFIXES = itertools.count()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """One moto server for the module; each test takes its own prefix in its bucket."""
    with moto_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test."""
    return str(request.param)


def _store(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, max_size: int, clock: Clock
) -> Store:
    files = None
    if backend == "s3":
        server: S3Server = request.getfixturevalue("s3")
        with pytest.MonkeyPatch.context() as patch:
            for name, value in server.env().items():
                patch.setenv(name, value)
            uses = Records(tmp_path / "uses", size_limit=10**6)
            url = f"s3://{server.bucket}/t{next(_PREFIXES)}"
            files = Bucket(url, endpoint_url=server.endpoint, uses=uses, clock=clock)
    return Store(tmp_path / "cache", max_size=max_size, clock=clock, files=files)


@pytest.fixture
def clock() -> Clock:
    """The store's clock."""
    return Clock()


@pytest.fixture
def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest, clock: Clock) -> Store:
    """A Store of 10 MB on the backend under test."""
    return _store(backend, tmp_path, request, 10**7, clock)


def _file(tmp_path: Path, content: bytes) -> tuple[str, Path]:
    sha = hashlib.sha256(content).hexdigest()
    path = tmp_path / sha
    path.write_bytes(content)
    return sha, path


async def _read(opened: Opened, start: int, end: int | None) -> bytes:
    return b"".join([chunk async for chunk in opened.read(start, end)])


CONTENT = bytes(range(256)) * 4096  # 1 MiB, more than one HIT_CHUNK


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("start", "end"),
    [(0, None), (0, 10), (1000, 700_000), (len(CONTENT) - 5, None), (10, 10)],
)
async def test_a_committed_file_reads_back_by_byte_range(
    store: Store, tmp_path: Path, start: int, end: int | None
) -> None:
    """open_range gives the size and exactly the bytes [start, end) of a committed file."""
    sha, path = _file(tmp_path, CONTENT)
    store.put_file(sha, path)
    opened = store.files.open_range(sha)
    assert opened is not None
    assert opened.size == len(CONTENT)
    assert await _read(opened, start, end) == CONTENT[start:end]
    opened.close()


def test_a_file_not_committed_is_not_held(store: Store) -> None:
    """Before a commit, has, open and open_range all say the file is not there."""
    sha = "ab" * 32
    assert not store.has_file(sha)
    assert store.open_file(sha) is None
    assert store.files.open_range(sha) is None


def test_the_sync_reader_seeks_and_reads(store: Store, tmp_path: Path) -> None:
    """open gives a seekable reader: a read after a seek from the end gives the tail."""
    sha, path = _file(tmp_path, CONTENT)
    store.put_file(sha, path)
    handle = store.open_file(sha)
    assert handle is not None
    with handle:
        handle.seek(-100, 2)
        assert handle.read() == CONTENT[-100:]
        handle.seek(0)
        assert handle.read(7) == CONTENT[:7]


def test_delete_forgets_a_file(store: Store, tmp_path: Path) -> None:
    """A removed file is no longer held; removing it again says it was not there."""
    sha, path = _file(tmp_path, b"x" * 1000)
    store.put_file(sha, path)
    assert store.held(frozenset({sha, "0" * 64})) == {sha}
    assert store.remove(sha)
    assert not store.has_file(sha)
    assert not store.remove(sha)


def test_list_gives_every_file_with_its_size_and_pin(store: Store, tmp_path: Path) -> None:
    """iter_files lists each committed file once, with its size and whether it is pinned."""
    small, small_path = _file(tmp_path, b"s" * 10)
    large, large_path = _file(tmp_path, b"L" * 5000)
    store.put_file(small, small_path)
    store.put_file(large, large_path, pinned=True)
    listed = {file.sha256: (file.size, file.pinned) for file in store.iter_files()}
    assert listed == {small: (10, False), large: (5000, True)}
    assert (store.stats().files, store.stats().bytes >= 5010, store.stats().pinned) == (2, True, 1)


def test_pin_marks_a_held_file_and_refuses_an_absent_one(store: Store, tmp_path: Path) -> None:
    """pin keeps a held file pinned, and is False for a file not held."""
    sha, path = _file(tmp_path, b"p" * 100)
    store.put_file(sha, path)
    assert not store.is_pinned(sha)
    assert store.pin(sha)
    assert store.is_pinned(sha)
    assert not store.pin("0" * 64)


def test_eviction_takes_the_least_recently_used_and_never_a_pinned_file(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, clock: Clock
) -> None:
    """Past max_size, the file used longest ago goes; a pinned older one and a recently
    read one stay."""
    store = _store(backend, tmp_path, request, 2_500_000, clock)
    shas = []
    for i in range(3):
        sha, path = _file(tmp_path, bytes([i]) * 1_000_000)
        store.put_file(sha, path, pinned=i == 0)
        shas.append(sha)
        clock.now += USE_RESOLUTION
    opened = store.files.open_range(shas[1])  # a use: shas[2] is now the least recent
    assert opened is not None
    opened.close()
    clock.now += USE_RESOLUTION
    sha, path = _file(tmp_path, b"n" * 1_000_000)
    assert store.put_file(sha, path) >= 1
    held = store.held(frozenset([*shas, sha]))
    assert held >= {shas[0], shas[1], sha}
    assert shas[2] not in held


def test_check_drops_a_file_whose_bytes_do_not_match(store: Store, tmp_path: Path) -> None:
    """check re-hashes a held file: a good one passes, one committed under a wrong sha256
    is reported and dropped."""
    good, good_path = _file(tmp_path, b"good" * 100)
    store.put_file(good, good_path)
    wrong = "f" * 64
    store.put_file(wrong, good_path)
    assert store.check(good) is None
    assert store.check(wrong) == f"hashes to {good}"
    assert not store.has_file(wrong)


def test_presign_gives_a_working_url_without_the_secret_or_none_locally(
    backend: str, store: Store, tmp_path: Path
) -> None:
    """s3 presigns a URL that GETs the bytes and carries no secret; local has no URL."""
    sha, path = _file(tmp_path, b"signed" * 100)
    store.put_file(sha, path)
    url = store.files.presign(sha, filename="a.whl", expires=60)
    if backend == "local":
        assert url is None
        return
    assert url is not None
    assert SECRET not in url
    assert httpx.get(url).content == b"signed" * 100
    assert store.files.presign("0" * 64, filename="a.whl", expires=60) is None
