"""Store: pages with metadata, files by sha256, eviction, pins, verify, prune and temp files."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import diskcache
import pytest

from proxy.cache import Store, StoredPage
from proxy.models import Link, Page
from proxy.retention import StoredFile
from proxy.storage import USE_RESOLUTION

DAY = 86_400.0


def _file(tmp_path: Path, content: bytes) -> tuple[str, Path]:
    path = tmp_path / hashlib.sha256(content).hexdigest()
    path.write_bytes(content)
    return hashlib.sha256(content).hexdigest(), path


def test_page_round_trips_with_its_metadata(tmp_path: Path) -> None:
    """A stored page comes back equal, with its fetch time and ETag."""
    store = Store(tmp_path / "c", max_size=10**6)
    page = Page("Links for a", (Link("/api/v4/projects/1/packages/pypi/files/x/a.whl", "a.whl"),))
    key = Store.page_key("projects/1", "a", "html")
    store.put_page(key, StoredPage(page, 12.5, 'W/"e"'), name="a")
    assert store.get_page(key) == StoredPage(page, 12.5, 'W/"e"')


def test_pages_survive_reopening_the_store(tmp_path: Path) -> None:
    """A page stored by one Store is read by the next one on the same folder (a restart)."""
    key = Store.page_key("projects/1", "a", "html")
    first = Store(tmp_path / "c", max_size=10**6)
    first.put_page(key, StoredPage(Page("t"), 1.0), name="a")
    first.close()
    assert Store(tmp_path / "c", max_size=10**6).get_page(key) == StoredPage(Page("t"), 1.0)


def test_drop_pages_removes_the_name_everywhere_and_every_index(tmp_path: Path) -> None:
    """Dropping a name removes its pages in all scopes and all index pages, and nothing else."""
    store = Store(tmp_path / "c", max_size=10**6)
    keys = {
        ("projects/1", "a"): True,
        ("groups/7", "a"): True,
        ("projects/1", ""): True,
        ("projects/1", "b"): False,
    }
    for (scope, name), _ in keys.items():
        store.put_page(Store.page_key(scope, name, "html"), StoredPage(Page("t"), 1.0), name=name)
    store.drop_pages("a")
    for (scope, name), dropped in keys.items():
        assert (store.get_page(Store.page_key(scope, name, "html")) is None) == dropped


def test_file_is_stored_once_and_read_back(tmp_path: Path) -> None:
    """A published file is held under its sha256 and reads back byte for byte."""
    store = Store(tmp_path / "c", max_size=10**6)
    sha, path = _file(tmp_path, b"wheel bytes" * 100)
    store.put_file(sha, path)
    handle = store.open_file(sha)
    assert handle is not None
    with handle:
        assert handle.read() == b"wheel bytes" * 100
    assert store.held(frozenset({sha, "0" * 64})) == {sha}


def test_least_recently_used_file_is_evicted_first(tmp_path: Path) -> None:
    """Past max_size, the file read longest ago goes first and a recently read one stays."""
    clock = Clock()
    store = Store(tmp_path / "c", max_size=3_500_000, clock=clock)
    shas = []
    for i in range(3):
        sha, path = _file(tmp_path, bytes([i]) * 1_000_000)
        store.put_file(sha, path)
        shas.append(sha)
        clock.now += USE_RESOLUTION
    handle = store.open_file(shas[0])  # a use: now shas[1] is the oldest
    assert handle is not None
    handle.close()
    clock.now += USE_RESOLUTION
    sha, path = _file(tmp_path, b"3" * 1_000_000)
    assert store.put_file(sha, path) == 1
    assert not store.has_file(shas[1])
    assert store.has_file(shas[0])
    assert store.stats().bytes <= 3_500_000


class Clock:
    """A clock the test moves by hand, for last-use times without sleeping."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _put(store: Store, tmp_path: Path, content: bytes, *, pinned: bool = False) -> str:
    sha, path = _file(tmp_path, content)
    store.put_file(sha, path, pinned=pinned)
    return sha


def _read(store: Store, sha: str) -> bytes:
    handle = store.open_file(sha)
    assert handle is not None
    with handle:
        return handle.read()


def test_pinned_file_survives_eviction_pressure(tmp_path: Path) -> None:
    """A pinned file stays held and readable however many files push past max_size."""
    store = Store(tmp_path / "c", max_size=3_500_000)
    pinned = _put(store, tmp_path, b"p" * 1_000_000, pinned=True)
    others = [_put(store, tmp_path, bytes([i]) * 1_000_000) for i in range(10)]
    assert not all(store.has_file(sha) for sha in others)
    assert store.is_pinned(pinned)
    assert _read(store, pinned) == b"p" * 1_000_000


def test_unpinned_files_are_still_evicted_least_recently_used_first(tmp_path: Path) -> None:
    """With a pinned file present, the unpinned file read longest ago is evicted first."""
    clock = Clock()
    store = Store(tmp_path / "c", max_size=3_500_000, clock=clock)
    pinned = _put(store, tmp_path, b"p" * 1_000_000, pinned=True)
    shas = []
    for i in range(3):
        shas.append(_put(store, tmp_path, bytes([i]) * 1_000_000))
        clock.now += USE_RESOLUTION
    _read(store, shas[0])  # a use: now shas[1] is the oldest
    clock.now += USE_RESOLUTION
    _put(store, tmp_path, b"3" * 1_000_000)
    assert not store.has_file(shas[1])
    assert store.has_file(shas[0])
    assert store.has_file(pinned)


def test_pin_moves_a_held_file_out_of_eviction(tmp_path: Path) -> None:
    """A file pinned after it was stored stays held, byte for byte, past max_size."""
    store = Store(tmp_path / "c", max_size=3_500_000)
    sha = _put(store, tmp_path, b"p" * 1_000_000)
    assert store.pin(sha)
    for i in range(10):
        _put(store, tmp_path, bytes([i]) * 1_000_000)
    assert store.is_pinned(sha)
    assert _read(store, sha) == b"p" * 1_000_000
    assert store.stats().pinned == 1


def test_pin_of_a_file_not_held_is_false(tmp_path: Path) -> None:
    """Pinning a sha256 the cache does not hold pins nothing."""
    store = Store(tmp_path / "c", max_size=10**6)
    assert not store.pin("0" * 64)
    assert not store.has_file("0" * 64)


def test_put_file_pinned_is_pinned_from_the_start(tmp_path: Path) -> None:
    """A file published with pinned=True is held and pinned."""
    store = Store(tmp_path / "c", max_size=10**6)
    sha = _put(store, tmp_path, b"wheel", pinned=True)
    assert store.is_pinned(sha)
    assert _read(store, sha) == b"wheel"


def test_stats_count_pinned_files_among_the_files(tmp_path: Path) -> None:
    """stats() counts every file, and the pinned ones apart."""
    store = Store(tmp_path / "c", max_size=10**6)
    _put(store, tmp_path, b"a")
    _put(store, tmp_path, b"b", pinned=True)
    assert (store.stats().files, store.stats().pinned) == (2, 1)


def test_iter_files_lists_size_last_use_and_pin_least_recently_used_first(
    tmp_path: Path,
) -> None:
    """Each held file is listed once with its size, last use and pin, oldest use first."""
    clock = Clock()
    store = Store(tmp_path / "c", max_size=10**6, clock=clock)
    a = _put(store, tmp_path, b"a" * 10)
    clock.now += 100
    b = _put(store, tmp_path, b"b" * 20, pinned=True)
    clock.now += 100
    _read(store, a)
    assert list(store.iter_files()) == [
        StoredFile(b, 20, clock.now - 100, pinned=True),
        StoredFile(a, 10, clock.now, pinned=False),
    ]


def test_a_file_stored_without_a_record_is_listed_as_used_now(tmp_path: Path) -> None:
    """A file an older version stored (no size or use recorded) is listed, as used now."""
    with diskcache.Cache(str(tmp_path / "c" / "files")) as older, open(__file__, "rb") as source:
        older.set("f" * 64, source, read=True)
    clock = Clock()
    store = Store(tmp_path / "c", max_size=10**6, clock=clock)
    size = Path(__file__).stat().st_size
    assert list(store.iter_files()) == [StoredFile("f" * 64, size, clock.now, pinned=False)]


def test_check_keeps_an_intact_file(tmp_path: Path) -> None:
    """A file whose bytes still hash to its sha256 passes the check and stays."""
    store = Store(tmp_path / "c", max_size=10**6)
    sha = _put(store, tmp_path, b"wheel bytes")
    assert store.check(sha) is None
    assert store.has_file(sha)


def test_verify_drops_a_file_whose_bytes_changed_on_disk(tmp_path: Path) -> None:
    """A stored file altered on disk fails verification, is named as such and is dropped."""
    store = Store(tmp_path / "c", max_size=10**6)
    sha = _put(store, tmp_path, b"wheel bytes")
    handle = store.open_file(sha)
    assert handle is not None
    handle.close()
    Path(handle.name).write_bytes(b"wheel bytez")
    bad = hashlib.sha256(b"wheel bytez").hexdigest()
    assert store.check(sha) == f"hashes to {bad}"
    assert not store.has_file(sha)


def test_check_names_a_file_deleted_from_disk_missing(tmp_path: Path) -> None:
    """A file whose bytes were deleted by hand is reported missing and forgotten."""
    store = Store(tmp_path / "c", max_size=10**6)
    sha = _put(store, tmp_path, b"wheel bytes", pinned=True)
    handle = store.open_file(sha)
    assert handle is not None
    handle.close()
    Path(handle.name).unlink()
    assert store.check(sha) == "missing from disk"
    assert not store.has_file(sha)


def test_prune_older_than_removes_only_files_unused_that_long(tmp_path: Path) -> None:
    """prune(older_than) removes the unpinned files last used longer ago than that, only."""
    clock = Clock()
    store = Store(tmp_path / "c", max_size=10**6, clock=clock)
    old = _put(store, tmp_path, b"o" * 10)
    clock.now += 5 * DAY
    recent = _put(store, tmp_path, b"r" * 20)
    clock.now += 5 * DAY
    assert store.prune(older_than=7 * DAY) == (1, 10)
    assert (store.has_file(old), store.has_file(recent)) == (False, True)


def test_prune_to_size_removes_least_recently_used_first(tmp_path: Path) -> None:
    """prune(to_size) removes files in order of last use until the rest fit in to_size."""
    clock = Clock()
    store = Store(tmp_path / "c", max_size=10**6, clock=clock)
    shas = []
    for i in range(3):
        shas.append(_put(store, tmp_path, bytes([i]) * 1000))
        clock.now += 60
    _read(store, shas[0])  # shas[1] is now the least recently used
    held = store.stats()
    pages_and_access = held.page_bytes + held.access_bytes  # count toward the size too
    assert store.prune(to_size=2000 + pages_and_access) == (1, 1000)
    assert [store.has_file(sha) for sha in shas] == [True, False, True]


def test_prune_never_removes_pinned_files(tmp_path: Path) -> None:
    """However old and however far above to_size, a pinned file is never pruned."""
    clock = Clock()
    store = Store(tmp_path / "c", max_size=10**6, clock=clock)
    pinned = _put(store, tmp_path, b"p" * 1000, pinned=True)
    other = _put(store, tmp_path, b"o" * 1000)
    clock.now += 365 * DAY
    assert store.prune(older_than=0, to_size=1) == (1, 1000)
    assert (store.has_file(pinned), store.has_file(other)) == (True, False)


def test_remove_forgets_the_file(tmp_path: Path) -> None:
    """remove() drops a pinned file and says whether anything was held."""
    store = Store(tmp_path / "c", max_size=10**6)
    sha = _put(store, tmp_path, b"wheel", pinned=True)
    assert store.remove(sha)
    assert not store.has_file(sha)
    assert not store.remove(sha)


def _evict(store: Store, sha: str, tmp_path: Path) -> None:
    for i in range(8):
        _put(store, tmp_path, bytes([i]) * 1_000_000)


def _prune(store: Store, sha: str, tmp_path: Path) -> None:
    store.prune(older_than=0, to_size=1)


def _remove(store: Store, sha: str, tmp_path: Path) -> None:
    store.remove(sha)


@pytest.mark.parametrize("drop", [_evict, _prune, _remove], ids=["evict", "prune", "remove"])
def test_a_reader_keeps_reading_after_its_file_is_dropped(
    tmp_path: Path, drop: Callable[[Store, str, Path], None]
) -> None:
    """A handle opened before eviction, prune or remove still reads every byte of the file."""
    clock = Clock()
    store = Store(tmp_path / "c", max_size=3_500_000, clock=clock)
    content = bytes(range(256)) * 1000
    sha = _put(store, tmp_path, content)
    handle = store.open_file(sha)
    assert handle is not None
    with handle:
        first = handle.read(1000)
        clock.now += DAY
        drop(store, sha, tmp_path)
        assert not store.has_file(sha)
        assert first + handle.read() == content


def test_serving_a_cached_file_writes_nothing(tmp_path: Path) -> None:
    """Opening a held file within USE_RESOLUTION of its last use changes no file on disk
    (a full disk still serves what it holds)."""
    store = Store(tmp_path / "c", max_size=10**6)
    sha = _put(store, tmp_path, b"wheel" * 1000)

    def snapshot() -> dict[Path, tuple[int, int]]:
        found = (tmp_path / "c").rglob("*")
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in found if p.is_file()}

    before = snapshot()
    for _ in range(3):
        assert _read(store, sha) == b"wheel" * 1000
    assert snapshot() == before


def test_a_committed_file_is_linked_not_copied(tmp_path: Path) -> None:
    """put_file gives the cache the file itself (a hard link): no second write of its bytes."""
    store = Store(tmp_path / "c", max_size=10**6)
    sha, path = _file(tmp_path, b"x" * 5000)
    store.put_file(sha, path)
    handle = store.open_file(sha)
    assert handle is not None
    with handle:
        assert os.fstat(handle.fileno()).st_ino == path.stat().st_ino
    path.unlink()
    assert store.check(sha) is None


@pytest.mark.parametrize("refusal", [errno.EXDEV, errno.EPERM])
def test_a_file_that_cannot_be_linked_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: int
) -> None:
    """On another file system (or one without links) put_file copies the bytes instead."""
    store = Store(tmp_path / "c", max_size=10**6)
    sha, path = _file(tmp_path, b"y" * 5000)

    def refuse(source: object, target: object) -> None:
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(os, "link", refuse)
    store.put_file(sha, path)
    handle = store.open_file(sha)
    assert handle is not None
    with handle:
        assert os.fstat(handle.fileno()).st_ino != path.stat().st_ino
        assert handle.read() == b"y" * 5000
