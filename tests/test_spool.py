"""Spool: per-file locks that live only while held, and the sweep of dead fills' files."""

from __future__ import annotations

import threading
from pathlib import Path

from proxy.spool import Spool

SHA = "a" * 64
OTHER = "b" * 64


def test_a_lock_file_lives_only_while_it_is_held(tmp_path: Path) -> None:
    """The leader's unlock removes the lock file, so none piles up per file ever fetched."""
    spool = Spool(tmp_path)
    for _ in range(3):
        lock = spool.try_lock(SHA)
        assert lock is not None
        assert spool.lock(SHA).exists()
        spool.unlock(SHA, lock)
    assert list(spool.locks.iterdir()) == []


def test_a_held_lock_keeps_other_lockers_out(tmp_path: Path) -> None:
    """While one locker leads, another gets None; once it let go, the other leads."""
    spool = Spool(tmp_path)
    lock = spool.try_lock(SHA)
    assert lock is not None
    assert spool.try_lock(SHA) is None
    spool.unlock(SHA, lock)
    again = spool.try_lock(SHA)
    assert again is not None
    spool.unlock(SHA, again)


def test_two_lockers_never_both_lead(tmp_path: Path) -> None:
    """Lockers racing with leaders that remove the lock file as they let go never lead at
    once (a locked file no longer at the path does not count)."""
    spool = Spool(tmp_path)
    counting = threading.Lock()
    leading: list[int] = []
    most = 0
    led = 0

    def race() -> None:
        nonlocal most, led
        for _ in range(2000):
            lock = spool.try_lock(SHA)
            if lock is None:
                continue
            with counting:
                leading.append(lock)
                most, led = max(most, len(leading)), led + 1
            spool.lock(SHA).stat()  # lead for a moment: long enough for others to open
            with counting:
                leading.remove(lock)
            spool.unlock(SHA, lock)

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert led > 0
    assert most == 1


def test_sweep_removes_every_kind_of_file_a_dead_fill_left(tmp_path: Path) -> None:
    """Body, announcement, staged announcement and lock file of a fill nobody holds go;
    those of a live fill, and files that are not a fill's, stay."""
    spool = Spool(tmp_path)
    dead = [
        spool.part(SHA),
        spool.notice(SHA),
        spool.tmp / f"{SHA}.0123456789abcdef.staged",
        spool.lock(SHA),
    ]
    live = [spool.part(OTHER), spool.notice(OTHER)]
    other = spool.tmp / "notes.txt"
    for path in [*dead, *live, other]:
        path.write_bytes(b"x")
    held = spool.try_lock(OTHER)
    assert held is not None
    assert spool.sweep() == len(dead)
    assert [path for path in dead if path.exists()] == []
    assert all(path.exists() for path in [*live, other])
    spool.unlock(OTHER, held)
