"""Hit and miss counts: counted per response, kept per process, summed for `cache stats`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.tally import Counts, Ledger, Tally, recorded


@pytest.mark.parametrize(
    ("route", "status", "cache", "expected"),
    [
        ("file", 200, "HIT", Counts(file_requests=1, file_hits=1, bytes_from_cache=10)),
        ("file", 206, "HIT", Counts(file_requests=1, file_hits=1, bytes_from_cache=10)),
        ("file", 200, "MISS", Counts(file_requests=1, bytes_from_gitlab=10)),
        ("file", 206, "BYPASS", Counts(file_requests=1, bytes_from_gitlab=10)),
        ("page", 200, "HIT", Counts(page_requests=1, page_hits=1)),
        ("page", 200, "STALE", Counts(page_requests=1, page_hits=1)),
        ("page", 200, "REVALIDATED", Counts(page_requests=1, page_hits=1)),
        ("index", 200, "HIT", Counts(page_requests=1, page_hits=1)),
        ("page", 200, "MISS", Counts(page_requests=1)),
        ("page", 302, "BYPASS", Counts(page_requests=1)),
        ("file", 401, "BYPASS", Counts()),
        ("file", 404, "MISS", Counts()),
        ("page", 502, "BYPASS", Counts()),
        ("upload", 201, "BYPASS", Counts()),
        ("health", 200, "BYPASS", Counts()),
    ],
)
def test_tally_counts_answered_files_and_pages(
    route: str, status: int, cache: str, expected: Counts
) -> None:
    """A 2xx or 3xx file or page counts; HIT, STALE, REVALIDATED are hits; bytes by source."""
    tally = Tally()
    body = tally.response(route, status, cache)
    body(4)
    body(6)
    assert tally.counts() == expected


def make_ledger(cache: Path, *, requests: int, hits: int, interval: float = 60.0) -> Ledger:
    """A started Ledger on `cache` whose tally counted `requests` file requests, `hits` hits."""
    tally = Tally()
    for number in range(requests):
        tally.response("file", 200, "HIT" if number < hits else "MISS")
    ledger = Ledger(tally, cache, interval=interval)
    ledger.start()
    return ledger


def json_files(cache: Path) -> list[str]:
    """The names of the JSON files in the stats directory."""
    return sorted(path.name for path in (cache / "stats").glob("*.json"))


def wait_for(condition: Callable[[], bool]) -> bool:
    """Whether `condition` held within 5 seconds (asked every 10 ms)."""
    deadline = time.monotonic() + 5
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_closing_a_ledger_folds_its_counts_into_the_totals(tmp_path: Path) -> None:
    """After close() the counts are in totals.json, and the process's own file is gone."""
    make_ledger(tmp_path, requests=4, hits=3).close()
    assert recorded(tmp_path) == Counts(file_requests=4, file_hits=3)
    assert json_files(tmp_path) == ["totals.json"]


def test_restarts_add_up(tmp_path: Path) -> None:
    """A second run on the same cache adds to the first's totals."""
    make_ledger(tmp_path, requests=4, hits=3).close()
    make_ledger(tmp_path, requests=2, hits=2).close()
    assert recorded(tmp_path) == Counts(file_requests=6, file_hits=5)


def test_recorded_sums_the_files_of_running_processes(tmp_path: Path) -> None:
    """A ledger started while another runs (here in the same process) leaves its file
    alone; recorded() sums both files, and both closes count once."""
    first = make_ledger(tmp_path, requests=4, hits=3, interval=0.01)
    try:
        assert wait_for(lambda: recorded(tmp_path) == Counts(file_requests=4, file_hits=3))
        second = make_ledger(tmp_path, requests=6, hits=1, interval=0.01)
        try:
            expected = Counts(file_requests=10, file_hits=4)
            assert wait_for(lambda: recorded(tmp_path) == expected)
            assert len(json_files(tmp_path)) == 2
        finally:
            second.close()
    finally:
        first.close()
    assert recorded(tmp_path) == expected
    assert json_files(tmp_path) == ["totals.json"]


KILLED = """
import os, sys, time
from pathlib import Path
from proxy.tally import Ledger, Tally
tally = Tally()
for _ in range(3):
    tally.response("file", 200, "HIT")
tally.response("page", 200, "MISS")
Ledger(tally, Path(sys.argv[1]), interval=0.01).start()
deadline = time.monotonic() + 10
while not list((Path(sys.argv[1]) / "stats").glob("*-*-*.json")) and time.monotonic() < deadline:
    time.sleep(0.01)
os._exit(0)  # killed: no close()
"""


def test_a_new_process_folds_the_file_a_killed_one_left(tmp_path: Path) -> None:
    """A process that died without closing leaves its file; the next start folds it in."""
    subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], check=True, timeout=30)
    left = Counts(file_requests=3, file_hits=3, page_requests=1)
    assert recorded(tmp_path) == left
    assert len(json_files(tmp_path)) == 1
    ledger = make_ledger(tmp_path, requests=0, hits=0)
    try:
        assert json_files(tmp_path) == ["totals.json"]
        assert len(list((tmp_path / "stats").glob("*-*-*.lock"))) == 1  # its own alone
        assert recorded(tmp_path) == left
    finally:
        ledger.close()


def test_recorded_without_a_stats_directory_is_zero_and_creates_nothing(tmp_path: Path) -> None:
    """A cache no proxy has counted in: all zeros, and `cache stats` leaves no trace."""
    assert recorded(tmp_path) == Counts()
    assert os.listdir(tmp_path) == []


def test_a_ledger_that_cannot_write_logs_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache directory that cannot hold stats costs a warning, never an exception."""
    blocked = tmp_path / "cache"
    blocked.write_text("a file, not a directory")
    with caplog.at_level(logging.WARNING, logger="proxy.tally"):
        make_ledger(blocked, requests=1, hits=1).close()
    assert "cannot keep request counts" in caplog.text
