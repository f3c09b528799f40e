"""Store: pages with metadata, files by sha256, eviction and temp files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from proxy.cache import Store, StoredPage
from proxy.models import Link, Page


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
    store = Store(tmp_path / "c", max_size=350_000)
    shas = []
    for i in range(3):
        sha, path = _file(tmp_path, bytes([i]) * 100_000)
        store.put_file(sha, path)
        shas.append(sha)
    handle = store.open_file(shas[0])  # a use: now shas[1] is the oldest
    assert handle is not None
    handle.close()
    for i in range(3, 6):
        sha, path = _file(tmp_path, bytes([i]) * 100_000)
        store.put_file(sha, path)
    assert not store.has_file(shas[1])
    assert store.stats().bytes <= 350_000 + 100_000


def test_clean_temp_removes_leftover_parts(tmp_path: Path) -> None:
    """Temp files a crash left behind are removed, and counted."""
    store = Store(tmp_path / "c", max_size=10**6)
    handle, path = store.new_temp()
    handle.write(b"partial")
    handle.close()
    assert store.clean_temp() == 1
    assert not path.exists()
