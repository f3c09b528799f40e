"""HotFiles: what a small file's hit found, reused while it holds, never for another caller."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from proxy.changes import Changes
from proxy.hotfiles import HotFile, HotFiles, verified
from proxy.storage import USE_RESOLUTION
from tests.test_cache import Clock

DATA = b"PK\x03\x04" + bytes(range(256)) * 8
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "my_pkg-1.0-py3-none-any.whl"
ALICE, BOB = "projects/42@alice", "projects/42@bob"


@pytest.fixture
def changes(tmp_path: Path) -> Changes:
    return Changes(tmp_path / "changes")


def kept(hot: HotFiles, owner: str = ALICE, *, until: float = math.inf) -> HotFile:
    file = verified(DATA, SHA)
    assert file is not None
    hot.keep(owner, SHA, NAME, file, until=until, mark=hot.mark())
    return file


def test_bytes_that_do_not_hash_to_their_name_are_never_kept() -> None:
    """Only checked bytes are kept: a cached file gone bad on disk stays there."""
    assert verified(DATA + b"x", SHA) is None
    assert verified(DATA, SHA.upper()) == HotFile(DATA, SHA)


def test_a_kept_file_is_for_its_caller_and_name_only(changes: Changes) -> None:
    """Another owner, or the same bytes under another name, asks the cache again."""
    hot = HotFiles(changes)
    file = kept(hot)
    assert hot.get(ALICE, SHA, NAME) == file
    assert hot.get(BOB, SHA, NAME) is None
    assert hot.get(ALICE, SHA, NAME + ".metadata") is None


def test_a_grant_ends_when_gitlab_s_word_does(changes: Changes) -> None:
    """Passthrough's auth_ttl: past `until`, the next hit asks the Keeper (and GitLab)."""
    clock = Clock(1000.0)
    hot = HotFiles(changes, clock=clock)
    kept(hot, until=1010.0)
    clock.now = 1009.9
    assert hot.get(ALICE, SHA, NAME) is not None
    clock.now = 1010.0
    assert hot.get(ALICE, SHA, NAME) is None
    clock.now = 1000.0
    assert hot.get(ALICE, SHA, NAME) is None, "an ended grant is forgotten"


def test_a_grant_for_good_still_ends_to_record_the_file_s_use(changes: Changes) -> None:
    """The Store evicts by last use: once per USE_RESOLUTION a hit goes through it again."""
    clock = Clock(1000.0)
    hot = HotFiles(changes, clock=clock)
    kept(hot)
    clock.now = 1000.0 + USE_RESOLUTION - 0.1
    assert hot.get(ALICE, SHA, NAME) is not None
    clock.now = 1000.0 + USE_RESOLUTION
    assert hot.get(ALICE, SHA, NAME) is None


def test_a_file_dropped_anywhere_forgets_every_grant(tmp_path: Path) -> None:
    """Another worker (another mapping of the marks) drops a file: nothing kept is served."""
    hot = HotFiles(Changes(tmp_path / "changes"))
    kept(hot)
    Changes(tmp_path / "changes").files()
    assert hot.get(ALICE, SHA, NAME) is None


def test_what_was_read_before_a_drop_is_not_kept(changes: Changes) -> None:
    """The mark taken before the read decides: a drop between the read and `keep` wins."""
    hot = HotFiles(changes)
    mark = hot.mark()
    changes.files()
    file = verified(DATA, SHA)
    assert file is not None
    hot.keep(ALICE, SHA, NAME, file, until=math.inf, mark=mark)
    assert hot.get(ALICE, SHA, NAME) is None
    assert hot.held_bytes == 0


def test_bytes_stay_within_the_bound_least_recently_used_first(changes: Changes) -> None:
    """Bytes shared by several callers are held once; past max_bytes the oldest go."""
    hot = HotFiles(changes, max_bytes=2 * len(DATA))
    files = []
    for n in range(3):
        data = DATA[:-1] + bytes([n])
        file = verified(data, hashlib.sha256(data).hexdigest())
        assert file is not None
        files.append(file)
        for owner in (ALICE, BOB):
            hot.keep(owner, file.sha256, NAME, file, until=math.inf, mark=hot.mark())
        if n == 1:
            assert hot.get(ALICE, files[0].sha256, NAME) == files[0]  # used: now the newest
    assert hot.held_bytes == 2 * len(DATA)
    assert hot.get(BOB, files[1].sha256, NAME) is None
    assert hot.get(BOB, files[0].sha256, NAME) == files[0]
    assert hot.get(ALICE, files[2].sha256, NAME) == files[2]
