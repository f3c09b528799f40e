"""`export` and `import`: one verified bundle file, refused whole when anything is wrong."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import respx

from proxy import __main__ as cli
from proxy.bundles import Progress
from proxy.cache import Store, StoredPage
from proxy.grants import Grants
from proxy.models import Link, Page, Scope
from tests.clients import clean_env, installed_version, new_venv, pip_install, uv_install
from tests.fakegitlab import FakeGitLab
from tests.inproc import in_process
from tests.scenario import SERVICE, Start, acme, publish, serve

Members = list[tuple[tarfile.TarInfo, bytes]]
PERSONAL = "projects/42@0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GITLAB_PYPI_PROXY_* variable of the developer's leaks in; caches go to tmp_path."""
    for name in list(os.environ):
        if name.startswith("GITLAB_PYPI_PROXY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _wheel(name: str, version: str) -> str:
    return f"{name.replace('-', '_')}-{version}-py3-none-any.whl"


def _fill(
    cache: Path,
    owner: str,
    files: dict[str, bytes],
    *,
    pinned: bool = False,
    fetched_at: float = 1000.0,
    hours_ago: float = 0.0,
) -> list[str]:
    """Files held and bound to `owner` as a proxy would have them (last used `hours_ago`),
    with a page listing them; returns their sha256s."""
    store = Store(cache, max_size=10**9, clock=lambda: time.time() - hours_ago * 3600)
    shas, links = [], []
    for filename, content in files.items():
        sha = hashlib.sha256(content).hexdigest()
        staged = cache.parent / f"{sha}.part"
        staged.write_bytes(content)
        store.put_file(sha, staged, pinned=pinned)
        staged.unlink()
        Grants(store.access).bind(owner, [(sha, filename)])
        kind, scope_id = owner.split("@")[0].split("/")
        path = f"{Scope(kind, scope_id).api_path}/files/{sha}/{filename}"  # type: ignore[arg-type]
        links.append(Link(path, filename, f"sha256={sha}", (("data-requires-python", ">=3"),)))
        shas.append(sha)
    name = next(iter(files)).split("-")[0].replace("_", "-")
    page = Page(title=f"Links for {name}", links=tuple(links))
    key = Store.page_key(owner, name, "html")
    store.put_page(key, StoredPage(page, fetched_at, "etag"), name=name)
    store.close()
    return shas


def _run(*argv: str) -> int:
    return cli.main([*argv])


def _export(cache: Path, bundle: Path, *flags: str) -> int:
    return _run("export", str(bundle), "--cache-dir", str(cache), *flags)


def _import(cache: Path, bundle: Path) -> int:
    return _run("import", str(bundle), "--cache-dir", str(cache))


Content = tuple[
    list[tuple[str, int, bool]],
    list[tuple[str, float, Page]],
    list[tuple[str, list[tuple[str, str]]]],
]


def _content(cache: Path) -> Content:
    """What a proxy would serve from the cache: files (pinned or not), pages, bindings."""
    store = Store(cache, max_size=10**9)
    try:
        files = sorted((f.sha256, f.size, f.pinned) for f in store.iter_files())
        pages = sorted((key, stored) for key, stored in store.iter_pages())
        bound = sorted((owner, sorted(fs)) for owner, fs in Grants(store.access).bindings())
        return files, [(k, s.fetched_at, s.page) for k, s in pages], bound
    finally:
        store.close()


def _snapshot(cache: Path) -> tuple[object, ...]:
    """The cache's content and every file on disk (SQLite's own files aside: reads touch them)."""
    on_disk = sorted(
        (str(p.relative_to(cache)), p.stat().st_size)
        for p in cache.rglob("*")
        if p.is_file() and not p.name.endswith((".db", "-wal", "-shm"))
    )
    return _content(cache), on_disk


def _members(bundle: Path) -> Members:
    with tarfile.open(bundle) as tar:
        found = []
        for info in tar:
            reader = tar.extractfile(info)
            found.append((info, reader.read() if reader else b""))
        return found


def _write(bundle: Path, members: Members) -> None:
    with tarfile.open(bundle, "w") as tar:
        for info, data in members:
            if info.isreg():
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def _file_member(members: Members) -> int:
    return next(i for i, (info, _) in enumerate(members) if info.name.startswith("files/"))


def _flip_byte(members: Members) -> str:
    i = _file_member(members)
    info, data = members[i]
    members[i] = (info, bytes([data[0] ^ 1]) + data[1:])
    return info.name


def _drop_file(members: Members) -> str:
    return members.pop(_file_member(members))[0].name


def _lie_about_size(members: Members) -> str:
    manifest = json.loads(members[0][1])
    manifest["files"][0]["size"] += 1
    members[0] = (members[0][0], json.dumps(manifest).encode())
    return f"files/{manifest['files'][0]['sha256']}"


def _path_outside(members: Members) -> str:
    members.insert(1, (tarfile.TarInfo("../x"), b"hello"))
    return "../x"


def _symlink(members: Members) -> str:
    info = tarfile.TarInfo("pages.jsonl")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    members.insert(1, (info, b""))
    return "pages.jsonl: not a regular file"


def _page_link_elsewhere(members: Members) -> str:
    i = next(i for i, (info, _) in enumerate(members) if info.name == "pages.jsonl")
    page = json.loads(members[i][1])
    page["links"][0]["path"] = "/-/metrics"
    members[i] = (members[i][0], json.dumps(page).encode() + b"\n")
    return "is not below a scope's PyPI API"


def _binding_of_another_file(members: Members) -> str:
    i = next(i for i, (info, _) in enumerate(members) if info.name == "bindings.jsonl")
    binding = json.loads(members[i][1])
    binding["files"][0][0] = "f" * 64
    members[i] = (members[i][0], json.dumps(binding).encode() + b"\n")
    return "is not a file of the bundle"


def _personal_page(members: Members) -> str:
    i = next(i for i, (info, _) in enumerate(members) if info.name == "pages.jsonl")
    page = json.loads(members[i][1])
    page["key"] = f"{PERSONAL}|demo-pkg|html"
    members[i] = (members[i][0], json.dumps(page).encode() + b"\n")
    return "is not a scope another cache can serve"


def _add_record(members: Members, record: dict[str, str]) -> None:
    i = next(i for i, (info, _) in enumerate(members) if info.name == "sources.jsonl")
    members[i] = (members[i][0], members[i][1] + json.dumps(record).encode() + b"\n")


def _bound_pair(members: Members) -> tuple[str, str]:
    binding = json.loads(next(data for info, data in members if info.name == "bindings.jsonl"))
    sha, filename = binding["files"][0]
    return sha, filename


def _source_not_http(members: Members) -> str:
    sha, filename = _bound_pair(members)
    _add_record(members, {"sha256": sha, "filename": filename, "url": "file:///etc/passwd"})
    return "is not an http(s) URL"


def _source_of_a_pair_not_bound(members: Members) -> str:
    sha, _ = _bound_pair(members)
    url = "https://files.example/other-1.0-py3-none-any.whl"
    _add_record(members, {"sha256": sha, "filename": "other-1.0-py3-none-any.whl", "url": url})
    return "is not bound to it in the bundle"


def _source_of_metadata_without_its_hash(members: Members) -> str:
    sha, filename = _bound_pair(members)
    i = next(i for i, (info, _) in enumerate(members) if info.name == "bindings.jsonl")
    binding = json.loads(members[i][1])
    binding["files"].append([sha, filename + ".metadata"])
    members[i] = (members[i][0], json.dumps(binding).encode() + b"\n")
    url = f"https://files.example/{filename}.metadata"
    _add_record(members, {"sha256": sha, "filename": filename + ".metadata", "url": url})
    return "fragment ''"


def _public_record_of_another_file(members: Members) -> str:
    _add_record(members, {"public": "f" * 64})
    return "is not a file of the bundle"


def _drop_sources(members: Members) -> str:
    members[:] = [(info, data) for info, data in members if info.name != "sources.jsonl"]
    return "sources.jsonl: missing from the bundle"


@pytest.mark.parametrize(
    "tamper",
    [
        _flip_byte,
        _drop_file,
        _lie_about_size,
        _path_outside,
        _symlink,
        _page_link_elsewhere,
        _binding_of_another_file,
        _personal_page,
        _source_not_http,
        _source_of_a_pair_not_bound,
        _source_of_metadata_without_its_hash,
        _public_record_of_another_file,
        _drop_sources,
    ],
)
def test_a_bad_bundle_is_refused_with_its_bad_entry_and_the_cache_is_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: Callable[[Members], str]
) -> None:
    """A flipped byte, a missing file, a lying manifest, an unexpected member or a record
    that breaks the format (a page, a binding, a source or public record opening up what
    the bundle does not bind or hold): exit 1, the entry listed, the cache as it was."""
    _fill(tmp_path / "src", "projects/42", {_wheel("demo-pkg", "1.0"): b"one" * 1000})
    assert _export(tmp_path / "src", tmp_path / "good.tar") == 0
    members = _members(tmp_path / "good.tar")
    bad = tamper(members)
    _write(tmp_path / "bad.tar", members)
    target = tmp_path / "target"
    _fill(target, "projects/7", {_wheel("old-pkg", "0.1"): b"old"})
    before = _snapshot(target)
    capsys.readouterr()
    assert _import(target, tmp_path / "bad.tar") == 1
    err = capsys.readouterr().err
    assert "the bundle was refused; the cache is unchanged" in err
    assert bad in err
    assert _snapshot(target) == before
    assert list((target / "tmp").iterdir()) == []


def test_a_bundle_that_breaks_off_mid_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bundle cut short inside a file (an interrupted copy) is refused; the cache is unchanged."""
    _fill(tmp_path / "src", "projects/42", {_wheel("demo-pkg", "1.0"): os.urandom(200_000)})
    assert _export(tmp_path / "src", tmp_path / "good.tar") == 0
    data = (tmp_path / "good.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    target = tmp_path / "target"
    _fill(target, "projects/7", {_wheel("old-pkg", "0.1"): b"old"})
    before = _snapshot(target)
    assert _import(target, tmp_path / "cut.tar") == 1
    assert "breaks off" in capsys.readouterr().err
    assert _snapshot(target) == before


def test_import_of_an_export_holds_the_same_files_pages_and_bindings(tmp_path: Path) -> None:
    """An empty cache that imports an export serves the same files, pages and bindings."""
    _fill(tmp_path / "src", "projects/42", {_wheel("demo-pkg", "1.0"): b"a" * 5000}, pinned=True)
    _fill(tmp_path / "src", "groups/7", {_wheel("lib-pkg", "2.0"): b"b" * 7000})
    assert _export(tmp_path / "src", tmp_path / "bundle.tar") == 0
    assert not (tmp_path / "bundle.tar.tmp").exists()
    assert _import(tmp_path / "dst", tmp_path / "bundle.tar") == 0
    assert _content(tmp_path / "dst") == _content(tmp_path / "src")


def test_import_merges_into_a_cache_that_holds_other_things(tmp_path: Path) -> None:
    """Files, pages and bindings already in the cache stay; the bundle's are added."""
    theirs = _fill(tmp_path / "src", "projects/42", {_wheel("demo-pkg", "1.0"): b"new"})
    ours = _fill(tmp_path / "dst", "projects/42", {_wheel("demo-pkg", "0.9"): b"old"})
    _fill(tmp_path / "dst", "groups/7", {_wheel("lib-pkg", "1.0"): b"lib"})
    assert _export(tmp_path / "src", tmp_path / "bundle.tar") == 0
    assert _import(tmp_path / "dst", tmp_path / "bundle.tar") == 0
    files, pages, _ = _content(tmp_path / "dst")
    assert {sha for sha, _, _ in files} >= {*theirs, *ours}
    assert [key for key, _, _ in pages] == ["groups/7|lib-pkg|html", "projects/42|demo-pkg|html"]
    store = Store(tmp_path / "dst", max_size=10**9)
    grants = Grants(store.access)
    assert grants.is_bound("projects/42", theirs[0], _wheel("demo-pkg", "1.0"))
    assert grants.is_bound("projects/42", ours[0], _wheel("demo-pkg", "0.9"))
    store.close()


@pytest.mark.parametrize(
    ("ours", "theirs", "kept"), [(2000.0, 1000.0, 2000.0), (1000.0, 2000.0, 2000.0)]
)
def test_of_two_pages_the_one_gitlab_gave_later_is_kept(
    tmp_path: Path, ours: float, theirs: float, kept: float
) -> None:
    """A page in the bundle replaces the cache's only if GitLab gave it later."""
    _fill(tmp_path / "src", "projects/42", {_wheel("demo-pkg", "1.0"): b"x"}, fetched_at=theirs)
    _fill(tmp_path / "dst", "projects/42", {_wheel("demo-pkg", "1.0"): b"x"}, fetched_at=ours)
    assert _export(tmp_path / "src", tmp_path / "bundle.tar") == 0
    assert _import(tmp_path / "dst", tmp_path / "bundle.tar") == 0
    store = Store(tmp_path / "dst", max_size=10**9)
    stored = store.get_page("projects/42|demo-pkg|html")
    store.close()
    assert stored is not None
    assert stored.fetched_at == kept


def _bundled(bundle: Path) -> set[str]:
    return {info.name.removeprefix("files/") for info, _ in _members(bundle) if "/" in info.name}


def test_export_pinned_holds_only_pinned_files(tmp_path: Path) -> None:
    """--pinned leaves unpinned files out."""
    pinned = _fill(tmp_path / "c", "projects/42", {_wheel("a", "1"): b"a"}, pinned=True)
    _fill(tmp_path / "c", "projects/42", {_wheel("b", "1"): b"b"})
    assert _export(tmp_path / "c", tmp_path / "bundle.tar", "--pinned") == 0
    assert _bundled(tmp_path / "bundle.tar") == set(pinned)


def test_export_index_holds_only_files_bound_to_those_scopes(tmp_path: Path) -> None:
    """--index projects/42 --index groups/7 takes their files, not those of projects/421."""
    wanted = _fill(tmp_path / "c", "projects/42", {_wheel("a", "1"): b"a"})
    wanted += _fill(tmp_path / "c", "groups/7", {_wheel("b", "1"): b"b"})
    _fill(tmp_path / "c", "projects/421", {_wheel("c", "1"): b"c"})
    flags = ("--index", "projects/42", "--index", "groups/7")
    assert _export(tmp_path / "c", tmp_path / "bundle.tar", *flags) == 0
    assert _bundled(tmp_path / "bundle.tar") == set(wanted)
    pages = next(
        data for info, data in _members(tmp_path / "bundle.tar") if info.name == "pages.jsonl"
    )
    assert b"projects/421" not in pages


PUBLIC = "https://files.example/packages"


@dataclass(frozen=True)
class Followed:
    """A wheel of a followed public page as the proxy keeps it, with its core metadata."""

    sha256: str
    metadata_sha256: str
    filename: str

    @property
    def sources(self) -> dict[tuple[str, str], str]:
        url = f"{PUBLIC}/{self.filename}"
        metadata = f"{url}.metadata#sha256={self.metadata_sha256}"
        return {
            (self.sha256, self.filename): url,
            (self.sha256, self.filename + ".metadata"): metadata,
        }


def _follow(cache: Path, owner: str, name: str, *, metadata_held: bool = True) -> Followed:
    """A followed wheel held, pinned and bound to `owner` under its name and its
    `.metadata` name, with its sources and both files' bytes seen as public."""
    filename = _wheel(name, "1.0")
    wheel, metadata = f"{name} wheel".encode(), f"Name: {name}\n".encode()
    _fill(cache, owner, {filename: wheel}, pinned=True)
    followed = Followed(
        hashlib.sha256(wheel).hexdigest(), hashlib.sha256(metadata).hexdigest(), filename
    )
    store = Store(cache, max_size=10**9)
    if metadata_held:
        staged = cache.parent / "metadata.part"
        staged.write_bytes(metadata)
        store.put_file(followed.metadata_sha256, staged, pinned=False)  # warm pins wheels only
        staged.unlink()
    grants = Grants(store.access)
    grants.bind(owner, followed.sources)
    grants.add_sources(followed.sources)
    grants.see_public(followed.sha256)
    grants.see_public(followed.metadata_sha256)
    store.close()
    return followed


def _records(bundle: Path) -> list[dict[str, str]]:
    data = next(data for info, data in _members(bundle) if info.name == "sources.jsonl")
    return [json.loads(line) for line in data.splitlines()]


def test_followed_files_keep_their_sources_public_records_and_core_metadata(
    tmp_path: Path,
) -> None:
    """Exported --pinned --index, imported into an empty cache: the wheel's and its
    `.metadata` name's sources, both public records and the (unpinned) core metadata file
    come along, so an offline proxy can serve the metadata."""
    followed = _follow(tmp_path / "src", "projects/42", "pub-lib")
    flags = ("--pinned", "--index", "projects/42")
    assert _export(tmp_path / "src", tmp_path / "bundle.tar", *flags) == 0
    assert _import(tmp_path / "dst", tmp_path / "bundle.tar") == 0
    store = Store(tmp_path / "dst", max_size=10**9)
    grants = Grants(store.access)
    assert {pair: grants.source(*pair) for pair in followed.sources} == followed.sources
    shas = (followed.sha256, followed.metadata_sha256)
    assert [(store.has_file(s), grants.seen_public(s)) for s in shas] == [(True, True)] * 2
    store.close()


def test_a_core_metadata_file_the_cache_lacks_is_left_out(tmp_path: Path) -> None:
    """Its source record still travels; the bundle holds only the wheel."""
    followed = _follow(tmp_path / "src", "projects/42", "pub-lib", metadata_held=False)
    assert _export(tmp_path / "src", tmp_path / "bundle.tar") == 0
    assert _bundled(tmp_path / "bundle.tar") == {followed.sha256}
    assert {
        (r["sha256"], r["filename"]) for r in _records(tmp_path / "bundle.tar") if "url" in r
    } == set(followed.sources)


def test_sources_of_files_left_out_stay_behind(tmp_path: Path) -> None:
    """--index takes the sources and public records of its own files only; a source that
    is a GitLab EE forward/ path (asked with a caller's credentials) is never exported."""
    kept = _follow(tmp_path / "c", "projects/42", "pub-lib")
    _follow(tmp_path / "c", "projects/421", "other-lib")
    store = Store(tmp_path / "c", max_size=10**9)
    forward = "/api/v4/projects/42/packages/pypi/forward/x"
    Grants(store.access).add_sources({(kept.sha256, kept.filename): forward})
    store.close()
    assert _export(tmp_path / "c", tmp_path / "bundle.tar", "--index", "projects/42") == 0
    records = _records(tmp_path / "bundle.tar")
    assert sorted(r.get("filename", "") for r in records if "url" in r) == [
        kept.filename + ".metadata"
    ]
    assert sorted(r["public"] for r in records if "public" in r) == sorted(
        (kept.sha256, kept.metadata_sha256)
    )


def test_a_bundle_of_format_1_is_still_imported(tmp_path: Path) -> None:
    """A bundle made before sources were carried (no sources member) imports as before."""
    shas = _fill(tmp_path / "src", "projects/42", {_wheel("a", "1"): b"a"})
    assert _export(tmp_path / "src", tmp_path / "new.tar") == 0
    members = [(i, d) for i, d in _members(tmp_path / "new.tar") if i.name != "sources.jsonl"]
    manifest = json.loads(members[0][1])
    manifest["format"] = 1
    members[0] = (members[0][0], json.dumps(manifest).encode())
    _write(tmp_path / "old.tar", members)
    assert _import(tmp_path / "dst", tmp_path / "old.tar") == 0
    assert [sha for sha, _, _ in _content(tmp_path / "dst")[0]] == shas


def test_personal_records_are_not_exported(tmp_path: Path) -> None:
    """Pages and bindings of passthrough's per-credential owners stay behind."""
    _fill(tmp_path / "c", PERSONAL, {_wheel("a", "1"): b"a"})
    assert _export(tmp_path / "c", tmp_path / "bundle.tar") == 0
    members = {info.name: data for info, data in _members(tmp_path / "bundle.tar")}
    assert members["pages.jsonl"] == members["bindings.jsonl"] == b""


def test_what_gitlab_gives_anyone_is_imported_for_every_mode(tmp_path: Path) -> None:
    """A passthrough cache's anonymous records are bound to the plain scope too (open, tokens)."""
    shas = _fill(tmp_path / "src", "projects/42@anyone", {_wheel("a", "1"): b"a"})
    assert _export(tmp_path / "src", tmp_path / "bundle.tar") == 0
    assert _import(tmp_path / "dst", tmp_path / "bundle.tar") == 0
    store = Store(tmp_path / "dst", max_size=10**9)
    grants = Grants(store.access)
    for owner in ("projects/42@anyone", "projects/42"):
        assert grants.is_bound(owner, shas[0], _wheel("a", "1"))
        assert store.get_page(f"{owner}|a|html") is not None
    store.close()


def test_a_bad_scope_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--index that is not projects/<id> or groups/<id> stops export before anything is written."""
    (tmp_path / "c").mkdir()
    assert _export(tmp_path / "c", tmp_path / "bundle.tar", "--index", "users/1") == 2
    assert capsys.readouterr().err.startswith('gitlab-pypi-proxy: --index: "users/1"')
    assert not (tmp_path / "bundle.tar").exists()


def test_export_that_cannot_write_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bundle that cannot be written is a one-line failure, exit 1."""
    _fill(tmp_path / "c", "projects/42", {_wheel("a", "1"): b"a"})
    assert _export(tmp_path / "c", tmp_path / "missing" / "bundle.tar") == 1
    err = capsys.readouterr().err
    assert err.startswith("gitlab-pypi-proxy: export: ")
    assert err.count("\n") == 1


def test_not_a_bundle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not a tar with a manifest first is refused, exit 1."""
    (tmp_path / "x.tar").write_bytes(b"not a tar at all" * 100)
    assert _import(tmp_path / "c", tmp_path / "x.tar") == 1
    assert "not a bundle" in capsys.readouterr().err


def _staged_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in (cache / "tmp").glob("import-*/*") if p.is_file())


def _wait_for(condition: Callable[[], bool], deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)  # polling a condition with a deadline


def _import_process(cache: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "proxy", "import", "-", "--cache-dir", str(cache)]
    return subprocess.Popen(command, env=clean_env(), stdin=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_import_leaves_the_cache_as_it_was(tmp_path: Path, sig: int) -> None:
    """SIGTERM or SIGINT mid-file: exit 130, the staging removed, the cache unchanged."""
    _fill(tmp_path / "src", "projects/42", {_wheel("a", "1"): os.urandom(4 * 1024 * 1024)})
    assert _export(tmp_path / "src", tmp_path / "bundle.tar") == 0
    target = tmp_path / "target"
    _fill(target, "projects/7", {_wheel("old", "1"): b"old"})
    before = _snapshot(target)
    data = (tmp_path / "bundle.tar").read_bytes()
    process = _import_process(target)
    assert process.stdin is not None
    process.stdin.write(data[: len(data) // 2])
    process.stdin.flush()
    _wait_for(lambda: _staged_bytes(target) > 0)
    process.send_signal(sig)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert b"interrupted" in err
    assert _snapshot(target) == before


def test_a_killed_import_leaves_staging_the_next_import_sweeps(tmp_path: Path) -> None:
    """After SIGKILL the cache is unchanged; the next import removes the dead staging."""
    _fill(tmp_path / "src", "projects/42", {_wheel("a", "1"): os.urandom(4 * 1024 * 1024)})
    assert _export(tmp_path / "src", tmp_path / "bundle.tar") == 0
    target = tmp_path / "target"
    _fill(target, "projects/7", {_wheel("old", "1"): b"old"})
    before = _content(target)
    data = (tmp_path / "bundle.tar").read_bytes()
    process = _import_process(target)
    assert process.stdin is not None
    process.stdin.write(data[: len(data) // 2])
    process.stdin.flush()
    _wait_for(lambda: _staged_bytes(target) > 0)
    process.kill()
    process.communicate(timeout=30)
    assert _content(target) == before
    assert _import(target, tmp_path / "bundle.tar") == 0
    assert list((target / "tmp").glob("import-*")) == []


@pytest.mark.anyio
async def test_serve_sweeps_the_staging_a_killed_import_left(
    tmp_path: Path, gitlab_api: respx.MockRouter
) -> None:
    """A staging folder whose import died is removed when the proxy starts; a live one stays."""
    tmp = tmp_path / "cache" / "tmp"
    dead, live = tmp / "import-dead", tmp / "import-live"
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "part").write_bytes(b"half a bundle")
    held = os.open(live / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    (dead / ".lock").touch()
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        async with in_process(tmp_path, gitlab_api)() as client:
            assert (await client.get("/-/health")).status_code == 200
        assert not dead.exists()
        assert (live / "part").exists()
    finally:
        os.close(held)


@pytest.mark.e2e
def test_a_bundle_serves_pip_and_uv_offline_without_gitlab(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """Filled through a real proxy, exported, imported into an empty cache: `serve --offline`
    installs with pip and uv, pages list only what is held, and GitLab gets no request."""
    acme(gitlab)
    publish(gitlab, 42, "demo-pkg", "1.0")
    publish(gitlab, 42, "demo-pkg", "1.1")  # listed, never fetched: not in the bundle
    publish(gitlab, 43, "lib-pkg", "2.0")
    online = serve(start_proxy, gitlab, tmp_path / "online", token=SERVICE)
    project = f"{online.url}/api/v4/projects/42/packages/pypi/simple"
    group = f"{online.url}/api/v4/groups/7/-/packages/pypi/simple"
    for index, package in ((project, "demo-pkg==1.0"), (group, "lib-pkg")):
        filled = pip_install(new_venv(tmp_path / f"fill-{package}"), index, package)
        assert filled.returncode == 0, filled.stdout + filled.stderr
        filled = uv_install(
            new_venv(tmp_path / f"uvfill-{package}"), index, package, cache=tmp_path / "uvc0"
        )
        assert filled.returncode == 0, filled.stdout + filled.stderr
    online.stop()
    assert _export(tmp_path / "online", tmp_path / "bundle.tar") == 0
    assert _import(tmp_path / "offline", tmp_path / "bundle.tar") == 0
    gitlab.reset_counts()
    proxy = serve(start_proxy, gitlab, tmp_path / "offline", "--offline", token=SERVICE)
    project = f"{proxy.url}/api/v4/projects/42/packages/pypi/simple"
    group = f"{proxy.url}/api/v4/groups/7/-/packages/pypi/simple"
    for index, package, module in (
        (project, "demo-pkg", "demo_pkg"),
        (group, "lib-pkg", "lib_pkg"),
    ):
        python = new_venv(tmp_path / f"pip-{package}")
        result = pip_install(python, index, package)
        assert result.returncode == 0, result.stdout + result.stderr
        uv_python = new_venv(tmp_path / f"uv-{package}")
        cache = tmp_path / f"uvc-{package}"
        result = uv_install(uv_python, index, package, cache=cache)
        assert result.returncode == 0, result.stdout + result.stderr
        for venv in (python, uv_python):
            assert installed_version(venv, module) == ("1.0" if module == "demo_pkg" else "2.0")
    assert gitlab.requests == []


def test_a_full_disk_while_staging_refuses_the_import_and_leaves_the_cache(
    tmp_path: Path,
) -> None:
    """Staging that cannot be written (RLIMIT_FSIZE, as a full disk) fails in one line, exit 1."""
    _fill(tmp_path / "src", "projects/42", {_wheel("a", "1"): os.urandom(2 * 1024 * 1024)})
    assert _export(tmp_path / "src", tmp_path / "bundle.tar") == 0
    target = tmp_path / "target"
    _fill(target, "projects/7", {_wheel("old", "1"): b"old"})
    before = _snapshot(target)
    command = [sys.executable, "-m", "proxy", "import", str(tmp_path / "bundle.tar")]
    limit = (1024 * 1024, resource.RLIM_INFINITY)
    result = subprocess.run(
        [*command, "--cache-dir", str(target)],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, limit),
    )
    assert result.returncode == 1, result.stderr
    assert "cannot stage the bundle" in result.stderr
    assert _snapshot(target) == before


def test_export_does_not_count_as_a_use(tmp_path: Path) -> None:
    """Exporting reads every file without making it recently used (prune order unchanged)."""
    files = {_wheel("a", "1"): b"a", _wheel("a", "2"): b"b"}
    _fill(tmp_path / "c", "projects/42", files, hours_ago=2)
    before = _content(tmp_path / "c")
    store = Store(tmp_path / "c", max_size=10**9)
    used = [(f.sha256, f.last_used) for f in store.iter_files()]
    store.close()
    assert _export(tmp_path / "c", tmp_path / "bundle.tar") == 0
    store = Store(tmp_path / "c", max_size=10**9)
    assert [(f.sha256, f.last_used) for f in store.iter_files()] == used
    store.close()
    assert _content(tmp_path / "c") == before


@pytest.mark.parametrize(
    ("tty", "expected"),
    [
        (False, "import: 2 files\n"),
        (True, "\rimport: [############             ]  50% 512.0 KiB of 1.0 MiB"),
    ],
)
def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(tty: bool, expected: str) -> None:
    """On a terminal a redrawn bar; otherwise one line per step and no bar."""
    out = io.StringIO()
    progress = Progress(out, verb="import", tty=tty)
    progress.step("2 files")
    progress.start(1024 * 1024)
    progress.advance(512 * 1024)
    assert out.getvalue().endswith(expected)
