"""`gitlab-pypi-proxy cache stats | verify | prune`: plain lines out, exit 0, 1 or 2."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import httpx
import pytest
import respx

from proxy import __main__ as cli
from proxy.cache import Store, StoredPage
from proxy.grants import Grants
from proxy.maintenance import human_size
from proxy.models import Page
from tests.fakegitlab import FakeGitLab
from tests.inproc import GITLAB, Serve, gitlab_page
from tests.scenario import SERVICE, Start, acme, publish
from tests.scenario import serve as serve_process

DAY = 86_400.0


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GITLAB_PYPI_PROXY_* variable of the developer's leaks in; caches go to tmp_path."""
    for name in list(os.environ):
        if name.startswith("GITLAB_PYPI_PROXY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _fill(
    cache: Path, *contents: bytes, used_days_ago: float = 0, pinned: bool = False
) -> list[str]:
    """Store files in the cache at `cache` as a proxy would have, last used days ago."""
    store = Store(cache, max_size=10**9, clock=lambda: time.time() - used_days_ago * DAY)
    shas = []
    for content in contents:
        sha = hashlib.sha256(content).hexdigest()
        path = cache.parent / f"{sha}.part"
        path.write_bytes(content)
        store.put_file(sha, path, pinned=pinned)
        shas.append(sha)
    store.close()
    return shas


def _held(cache: Path, sha: str) -> bool:
    store = Store(cache, max_size=10**9)
    try:
        return store.has_file(sha)
    finally:
        store.close()


def _corrupt(cache: Path, sha: str) -> None:
    store = Store(cache, max_size=10**9)
    handle = store.open_file(sha)
    assert handle is not None
    handle.close()
    store.close()
    Path(handle.name).write_bytes(b"not the wheel")


def test_stats_prints_one_fact_a_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """stats prints files, pinned files, pages, bytes, max size and the hit ratio; exit 0."""
    cache = tmp_path / "cache"
    _fill(cache, b"a", b"b")
    _fill(cache, b"p", pinned=True)
    store = Store(cache, max_size=10**9)
    store.put_page("k", StoredPage(Page("t"), 1.0), name="a")
    store.close()
    assert cli.main(["cache", "stats", "--cache-dir", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["files: 3", "pinned files: 1", "pages: 1"]
    assert lines[3].startswith("bytes: ")
    assert lines[4].startswith("page bytes: ")
    assert lines[5].startswith("access records: 0 (")
    assert lines[6].startswith("total bytes: ")
    assert lines[7] == (
        "max size: 21474836480 (20.0 GiB, for files, pages and access records;"
        " pinned files not counted)"
    )
    assert lines[8] == "hit ratio: unknown (no requests yet)"
    assert lines[9] == "file bytes served: 0 B from the cache, 0 B from GitLab"


def test_prune_older_than_drops_old_pages_and_access_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--older-than DAYS also removes pages GitLab last confirmed before then and credentials
    GitLab last accepted before then; newer ones stay."""
    cache = tmp_path / "cache"
    store = Store(cache, max_size=10**9)
    store.put_page("old", StoredPage(Page("t"), time.time() - 3 * DAY), name="a")
    store.put_page("new", StoredPage(Page("t"), time.time()), name="b")
    grants = Grants(store.access)
    grants.accept("projects/1@old", time.time() - 3 * DAY)
    grants.accept("projects/1@new", time.time())
    store.close()
    argv = ["cache", "prune", "--older-than", "2", "--cache-dir", str(cache)]
    assert cli.main(argv) == 0
    assert "pruned 1 access records" in capsys.readouterr().out
    store = Store(cache, max_size=10**9)
    assert (store.get_page("old"), store.get_page("new") is not None) == (None, True)
    grants = Grants(store.access)
    assert grants.accepted("projects/1@old") is None
    assert grants.accepted("projects/1@new") is not None
    store.close()


WHEEL = b"PK\x03\x04" + bytes(range(256)) * 16
SHA = hashlib.sha256(WHEEL).hexdigest()
API = "/api/v4/projects/42/packages/pypi"
FILE = f"{API}/files/{SHA}/my_pkg-1.0-py3-none-any.whl"
PAGE = f"{API}/simple/my-pkg/"


@pytest.fixture
def gitlab_has_the_wheel(gitlab_api: respx.MockRouter) -> None:
    """GitLab serves the wheel under files/ and its package page under simple/."""
    anchor = f'<a href="{GITLAB}{FILE}#sha256={SHA}">my_pkg-1.0-py3-none-any.whl</a>'
    gitlab_api.get(url__regex=r".*/files/.*").respond(200, content=WHEEL)
    gitlab_api.get(url__regex=r".*/simple/.*").respond(
        200, content=gitlab_page("my-pkg", anchor), headers={"content-type": "text/html"}
    )


def _stats_line(cache: Path, capsys: pytest.CaptureFixture[str], start: str) -> str:
    """The line of `cache stats` for `cache` that starts with `start`."""
    capsys.readouterr()
    assert cli.main(["cache", "stats", "--cache-dir", str(cache)]) == 0
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith(start))


@pytest.mark.anyio
@pytest.mark.usefixtures("gitlab_has_the_wheel")
async def test_stats_gives_the_hit_ratio_of_a_proxy_that_ran(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files and pages fetched once (MISS) then from the cache (HIT): 50% each, bytes by source."""
    async with serve() as client:
        for path in (PAGE, PAGE, FILE, FILE):
            assert (await client.get(path)).status_code == 200
    assert _stats_line(tmp_path / "cache", capsys, "hit ratio: ") == (
        "hit ratio: 50.0% of 2 file requests (pages: 50.0% of 2)"
    )
    assert _stats_line(tmp_path / "cache", capsys, "file bytes served: ") == (
        "file bytes served: 4.0 KiB from the cache, 4.0 KiB from GitLab"
    )


@pytest.mark.anyio
@pytest.mark.usefixtures("gitlab_has_the_wheel")
async def test_stats_sums_every_proxy_process_that_used_the_cache(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A proxy that missed and one that ran while it still served, each counted once."""
    async with serve() as first:
        assert (await first.get(FILE)).headers["x-cache"] == "MISS"
        async with serve() as second:
            for _ in range(3):
                assert (await second.get(FILE)).headers["x-cache"] == "HIT"
    assert _stats_line(tmp_path / "cache", capsys, "hit ratio: ") == (
        "hit ratio: 75.0% of 4 file requests (pages: no requests yet)"
    )


@pytest.mark.e2e
def test_stats_counts_what_the_workers_of_a_stopped_proxy_served(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve --workers 2`, one file fetched four times, SIGTERM: four requests, three hits."""
    acme(gitlab)
    filename, sha = publish(gitlab, 42, "demo-pkg", "1.0")
    proxy = serve_process(start_proxy, gitlab, tmp_path / "cache", "--workers", "2", token=SERVICE)
    url = f"{proxy.url}{API}/files/{sha}/{filename}"
    seen = [httpx.get(url, timeout=20).headers["x-cache"] for _ in range(4)]
    assert seen == ["MISS", "HIT", "HIT", "HIT"]
    proxy.stop()
    assert _stats_line(tmp_path / "cache", capsys, "hit ratio: ") == (
        "hit ratio: 75.0% of 4 file requests (pages: no requests yet)"
    )


def test_verify_of_a_clean_cache_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify re-hashes every file, finds none corrupt, prints a summary and exits 0."""
    cache = tmp_path / "cache"
    _fill(cache, b"a", b"b")
    assert cli.main(["cache", "verify", "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out == "verified 2 files: 2 intact, 0 corrupt\n"


def test_verify_reports_and_drops_a_corrupt_file_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file altered on disk is named with the reason, dropped, and the exit status is 1."""
    cache = tmp_path / "cache"
    bad, good = _fill(cache, b"a", b"b")
    _corrupt(cache, bad)
    assert cli.main(["cache", "verify", "--cache-dir", str(cache)]) == 1
    wrong = hashlib.sha256(b"not the wheel").hexdigest()
    assert capsys.readouterr().out.splitlines() == [
        f"corrupt: {bad}: hashes to {wrong} (dropped)",
        "verified 2 files: 1 intact, 1 corrupt",
    ]
    assert (_held(cache, bad), _held(cache, good)) == (False, True)


def test_prune_older_than_removes_files_unused_for_that_many_days(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--older-than DAYS removes the files last used longer ago, prints each and a total."""
    cache = tmp_path / "cache"
    (old,) = _fill(cache, b"o" * 2048, used_days_ago=40)
    (recent,) = _fill(cache, b"r" * 10, used_days_ago=1)
    assert cli.main(["cache", "prune", "--older-than", "30", "--cache-dir", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"removed: {old} (2.0 KiB, last used ")
    assert lines[1] == "pruned 1 files, 2048 bytes (2.0 KiB)"
    assert (_held(cache, old), _held(cache, recent)) == (False, True)


def test_prune_to_size_removes_the_least_recently_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--to SIZE removes files, least recently used first, until the rest fit in SIZE."""
    cache = tmp_path / "cache"
    shas = [_fill(cache, bytes([i]) * 1000, used_days_ago=3 - i)[0] for i in range(3)]
    store = Store(cache, max_size=10**9)
    held = store.stats()
    store.close()
    size = 2000 + held.page_bytes + held.access_bytes  # pages and access records count too
    assert cli.main(["cache", "prune", "--to", str(size), "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "pruned 1 files, 1000 bytes (1000 B)"
    assert [_held(cache, sha) for sha in shas] == [False, True, True]


def test_prune_keeps_pinned_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Pinned files survive a prune that removes everything else."""
    cache = tmp_path / "cache"
    (pinned,) = _fill(cache, b"p", used_days_ago=400, pinned=True)
    _fill(cache, b"o", used_days_ago=400)
    assert (
        cli.main(["cache", "prune", "--older-than", "0", "--to", "1", "--cache-dir", str(cache)])
        == 0
    )
    assert capsys.readouterr().out.splitlines()[-1] == "pruned 1 files, 1 bytes (1 B)"
    assert _held(cache, pinned)


def test_cache_dir_comes_from_the_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --cache-dir, the cache is the one the --config file names, as for serve."""
    cache = tmp_path / "configured"
    _fill(cache, b"a")
    config = tmp_path / "proxy.toml"
    config.write_text(f'[cache]\ndir = "{cache}"\nmax_size = "1GiB"\n')
    assert cli.main(["cache", "stats", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "files: 1\n" in out
    assert "max size: 1073741824 (1.0 GiB" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune"], "gitlab-pypi-proxy: cache prune: nothing to do"),
        (["prune", "--to", "ten"], 'gitlab-pypi-proxy: --to: "ten" is not a size'),
        (["prune", "--older-than", "soon"], 'gitlab-pypi-proxy: --older-than: "soon" is not'),
        (["prune", "--older-than", "-1"], 'gitlab-pypi-proxy: --older-than: "-1" is not'),
        (["stats", "--cache-dir", "absent"], 'gitlab-pypi-proxy: cache.dir: "absent" is not'),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    """A missing limit, a bad value or a cache dir that is not there: one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["cache", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_commands_never_create_a_cache(tmp_path: Path) -> None:
    """Pointing a cache command at a directory that does not exist leaves it absent."""
    assert cli.main(["cache", "verify", "--cache-dir", str(tmp_path / "absent")]) == 2
    assert not (tmp_path / "absent").exists()


def test_cache_without_an_action_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """`cache` alone prints its usage on stderr and exits 2."""
    assert cli.main(["cache"]) == 2
    assert capsys.readouterr().err.startswith("usage: gitlab-pypi-proxy cache")


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536 * 1024, "1.5 MiB"),
        (20 * 1024**3, "20.0 GiB"),
    ],
)  # fmt: skip
def test_human_size(size: int, shown: str) -> None:
    """Sizes are shown in binary units with one decimal, bytes below 1 KiB."""
    assert human_size(size) == shown
