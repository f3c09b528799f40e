"""Core metadata (PEP 658/714): METADATA found in real wheels, served as .metadata, advertised."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
import respx

from proxy.metadata import NoMetadata, Piece, Span, drive_sync, extract_from, steps
from tests import scenario
from tests.clients import run
from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab
from tests.fakehttp import Response, byte_range
from tests.inproc import GITLAB, BrokenBody, Serve, gitlab_page, memory_hits
from tests.scenario import SERVICE, Start, acme, publish

API = "/api/v4/projects/42/packages/pypi"
PAGE = f"{API}/simple/big-pkg/"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
_TIME = (2020, 1, 1, 0, 0, 0)


def wheel_of(members: list[tuple[str, bytes]], *, stored: bool = False) -> bytes:
    """A zip of `members` in order (deflated unless `stored`)."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for path, data in members:
            archive.writestr(zipfile.ZipInfo(path, date_time=_TIME), data, compress_type=method)
    return buffer.getvalue()


def big_wheel(size: int, *, metadata_first: bool = False) -> tuple[str, bytes, bytes]:
    """(filename, bytes, METADATA) of big-pkg 1.0 with `size` random bytes stored in it."""
    metadata = b"Metadata-Version: 2.1\nName: big-pkg\nVersion: 1.0\nRequires-Dist: tiny\n\n"
    payload = ("big_pkg/blob.bin", os.urandom(size))
    dist = [("big_pkg-1.0.dist-info/METADATA", metadata), ("big_pkg-1.0.dist-info/WHEEL", b"")]
    members = [*dist, payload] if metadata_first else [payload, *dist]
    return "big_pkg-1.0-py3-none-any.whl", wheel_of(members, stored=True), metadata


def counted(data: bytes) -> tuple[list[int], Callable[[Span], Piece]]:
    """A reader of `data` for drive_sync, and the list of byte counts it was asked for."""
    reads: list[int] = []

    def read(span: Span) -> Piece:
        start = max(0, len(data) + span.start) if span.start < 0 else span.start
        end = len(data) if span.start < 0 else min(span.end, len(data))
        reads.append(end - start)
        return Piece(start, data[start:end], len(data))

    return reads, read


# -- extraction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "directory"),
    [
        ("foo-bar", "foo_bar-1.0.dist-info"),
        ("foo-bar", "Foo_Bar-1.0.dist-info"),
        ("foo-bar", "FOO_BAR-1.0.dist-info"),
        ("foo-bar", "foo.bar-1.0.dist-info"),
        ("foo-bar", "foo-bar-1.0.dist-info"),
        ("foo-bar", "foo_bar-1.0.0.dist-info"),
    ],
)
def test_the_dist_info_directory_is_found_whatever_its_case_or_normalization(
    name: str, directory: str
) -> None:
    """The wheel spec's {name}-{version}.dist-info is matched normalized, as in the filename."""
    metadata = b"Name: foo-bar\nVersion: 1.0\n"
    data = wheel_of([("foo_bar/__init__.py", b""), (f"{directory}/METADATA", metadata)])
    assert extract_from(io.BytesIO(data), "foo_bar-1.0-py3-none-any.whl") == metadata


def test_metadata_of_a_distfactory_wheel() -> None:
    """A real wheel's METADATA comes out as it went in (deflated)."""
    filename, data = make_wheel("Demo.Pkg", "2.0", requires=("tiny>=1",))
    metadata = extract_from(io.BytesIO(data), filename)
    assert b"Name: Demo.Pkg\nVersion: 2.0\n" in metadata
    assert b"Requires-Dist: tiny>=1" in metadata


@pytest.mark.parametrize(
    "members",
    [
        [("foo_bar-1.0.dist-info/WHEEL", b"")],  # no METADATA
        [("other-1.0.dist-info/METADATA", b"Name: other\n")],  # another project's
        [("foo_bar-2.0.dist-info/METADATA", b"Name: foo-bar\n")],  # another version's
        [("foo_bar-1.0.dist-info/METADATA", b"x"), ("Foo_Bar-1.0.dist-info/METADATA", b"y")],
        [("foo_bar-1.0.dist-info/METADATA", b"x"), ("FOO_BAR-1.0.dist-info/RECORD", b"")],
        [("sub/foo_bar-1.0.dist-info/METADATA", b"x")],  # not at the top
    ],
)
def test_a_wheel_without_one_matching_metadata_is_refused(
    members: list[tuple[str, bytes]],
) -> None:
    """No METADATA, or several candidate dist-info directories: no metadata, never a guess."""
    with pytest.raises(NoMetadata):
        extract_from(io.BytesIO(wheel_of(members)), "foo_bar-1.0-py3-none-any.whl")


def test_a_file_that_is_not_a_zip_is_refused() -> None:
    """Bytes without an end of central directory record have no metadata."""
    with pytest.raises(NoMetadata):
        extract_from(io.BytesIO(b"PK\x03\x04" + bytes(5000)), "foo_bar-1.0-py3-none-any.whl")


def test_a_zip64_wheel() -> None:
    """Members written with zip64 extra fields are read."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, data in [("foo_bar/x.py", b"x" * 1000), ("foo_bar-1.0.dist-info/METADATA", b"M")]:
            with archive.open(zipfile.ZipInfo(path, _TIME), "w", force_zip64=True) as member:
                member.write(data)
    assert extract_from(buffer, "foo_bar-1.0-py3-none-any.whl") == b"M"


def test_a_wheel_larger_than_4_gib(tmp_path: Path) -> None:
    """Offsets beyond 4 GiB (zip64 end records, a zip64 offset in the central directory) are
    read; the file is sparse, so the test uses a few KB of disk."""
    path = tmp_path / "huge.whl"
    with path.open("wb") as out:
        out.seek(5 * 1024**3)  # a hole: everything before it reads as zeros
        out.write(b"\0")
    with zipfile.ZipFile(path, "a") as archive:  # appended after the hole
        archive.writestr(zipfile.ZipInfo("foo_bar-1.0.dist-info/METADATA", _TIME), b"Name: x\n")
    assert path.stat().st_size > 5 * 1024**3
    assert path.stat().st_blocks * 512 < 1024**2
    with path.open("rb") as handle:
        assert extract_from(handle, "foo_bar-1.0-py3-none-any.whl") == b"Name: x\n"


def test_a_big_wheel_needs_only_its_tail() -> None:
    """METADATA near the central directory (where wheels put it): one 64 KiB read."""
    filename, data, metadata = big_wheel(5 * 1024**2)
    reads, read = counted(data)
    assert drive_sync(steps(filename), read) == metadata
    assert sum(reads) <= 64 * 1024


def test_metadata_far_from_the_end_costs_one_more_small_read() -> None:
    """METADATA at the start of a big wheel: the tail, then a read of about its own size."""
    filename, data, metadata = big_wheel(5 * 1024**2, metadata_first=True)
    reads, read = counted(data)
    assert drive_sync(steps(filename), read) == metadata
    assert len(reads) == 2
    assert reads[1] < 4 * 1024


# -- through the proxy ------------------------------------------------------------------


def page_of(filename: str, data: bytes) -> bytes:
    """GitLab's page of big-pkg listing one file."""
    sha = hashlib.sha256(data).hexdigest()
    href = f"{GITLAB}{API}/files/{sha}/{filename}#sha256={sha}"
    return gitlab_page("big-pkg", f'<a href="{href}">{filename}</a>')


def ranged(data: bytes, sent: list[int]) -> Callable[[httpx.Request], httpx.Response]:
    """A respx side effect serving `data` with Range as GitLab does; counts bytes sent."""

    def answer(request: httpx.Request) -> httpx.Response:
        try:
            span = byte_range(request.headers.get("range"), len(data))
        except Response as refusal:
            return httpx.Response(refusal.status, headers=refusal.headers)
        if span is None:
            sent.append(len(data))
            return httpx.Response(200, content=data)
        start, end = span
        sent.append(end - start)
        content_range = f"bytes {start}-{end - 1}/{len(data)}"
        headers = {"content-range": content_range}
        return httpx.Response(206, content=data[start:end], headers=headers)

    return answer


def advertised(page: str) -> list[tuple[str, str]]:
    """The core-metadata attributes of a rendered HTML page."""
    return re.findall(r'(data-(?:core|dist-info)-metadata)="([^"]*)"', page)


def urls(filename: str, data: bytes) -> tuple[str, str]:
    """The proxy paths of the wheel and of its .metadata."""
    sha = hashlib.sha256(data).hexdigest()
    wheel = f"{API}/files/{sha}/{filename}"
    return wheel, wheel + ".metadata"


@pytest.mark.anyio
async def test_cached_mode_advertises_a_wheel_once_it_is_held(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """mode cached: nothing before the wheel is held; then both attributes with the hash."""
    filename, data, metadata = big_wheel(200 * 1024)
    wheel, meta = urls(filename, data)
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_of(filename, data))
    gitlab_api.get(GITLAB + wheel).respond(200, content=data)
    async with serve() as client:
        assert advertised((await client.get(PAGE)).text) == []
        assert (await client.get(meta)).status_code == 404
        assert (await client.get(wheel)).content == data
        digest = hashlib.sha256(metadata).hexdigest()
        assert advertised((await client.get(PAGE)).text) == [
            ("data-core-metadata", f"sha256={digest}"),
            ("data-dist-info-metadata", f"sha256={digest}"),
        ]
        response = await client.get(meta)
        again = await client.get(meta)  # from memory now (HotFiles)
        assert memory_hits((await client.get("/-/metrics")).text) == 1
    for answer in (response, again):
        assert answer.content == metadata
        assert answer.headers["content-type"] == "text/plain"
        assert answer.headers["etag"] == f'"{digest}"'


@pytest.mark.anyio
async def test_json_pages_carry_both_keys(serve: Serve, gitlab_api: respx.MockRouter) -> None:
    """PEP 691 pages advertise `core-metadata` and `dist-info-metadata` with the hash."""
    filename, data, metadata = big_wheel(1024)
    wheel, _ = urls(filename, data)
    sha = hashlib.sha256(data).hexdigest()
    document = {
        "meta": {"api-version": "1.0"},
        "name": "big-pkg",
        "files": [{"filename": filename, "url": GITLAB + wheel, "hashes": {"sha256": sha}}],
    }
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(
        200, json=document, headers={"content-type": JSON_TYPE}
    )
    gitlab_api.get(GITLAB + wheel).respond(200, content=data)
    async with serve() as client:
        await client.get(wheel)
        entry = (await client.get(PAGE, headers={"accept": JSON_TYPE})).json()["files"][0]
    digest = {"sha256": hashlib.sha256(metadata).hexdigest()}
    assert (entry["core-metadata"], entry["dist-info-metadata"]) == (digest, digest)


@pytest.mark.anyio
async def test_always_mode_reads_only_ranges_of_a_wheel_not_held(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """mode always: "true" on the page, then .metadata from a few KB of GitLab's wheel; the
    page then gives its hash."""
    filename, data, metadata = big_wheel(8 * 1024**2)
    wheel, meta = urls(filename, data)
    sent: list[int] = []
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_of(filename, data))
    gitlab_api.get(GITLAB + wheel).mock(side_effect=ranged(data, sent))
    digest = hashlib.sha256(metadata).hexdigest()
    async with serve({"pages.metadata": "always"}) as client:
        first = advertised((await client.get(PAGE)).text)[0]  # the hash: read ahead in time
        assert first in (("data-core-metadata", "true"), ("data-core-metadata", f"sha256={digest}"))
        response = await client.get(meta)
        assert response.content == metadata
        assert response.headers["x-cache"] in ("MISS", "HIT")  # HIT: read ahead in time
        assert advertised((await client.get(PAGE)).text)[0][1] == f"sha256={digest}"
        assert (await client.get(meta)).headers["x-cache"] == "HIT"
    assert 0 < sum(sent) <= 64 * 1024


@pytest.mark.anyio
async def test_always_mode_reads_ahead_the_newest_releases_wheels(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A page from GitLab starts reading the metadata of its newest release's wheels (four
    at most, pure-Python first, none of an older release); the client's .metadata is then
    a HIT that asks GitLab nothing more."""
    tags = ["cp311-cp311-manylinux_2_17_x86_64", "cp312-cp312-win_amd64", "cp311-cp311-win32"]
    tags += ["cp312-cp312-macosx_11_0_arm64", "cp313-cp313-musllinux_1_2_aarch64"]
    releases = [("2.0", tag) for tag in tags] + [("2.0", "py3-none-any"), ("1.0", "py3-none-any")]
    anchors, routes = [], {}
    for version, tag in releases:
        metadata = f"Metadata-Version: 2.1\nName: big-pkg\nVersion: {version}\n\n".encode()
        members = [(f"big_pkg/{tag}.txt", tag.encode())]  # each wheel its own sha256
        data = wheel_of(
            [*members, (f"big_pkg-{version}.dist-info/METADATA", metadata)], stored=True
        )
        filename = f"big_pkg-{version}-{tag}.whl"
        sha = hashlib.sha256(data).hexdigest()
        anchors.append(
            f'<a href="{GITLAB}{API}/files/{sha}/{filename}#sha256={sha}">{filename}</a>'
        )
        wheel, _ = urls(filename, data)
        routes[filename] = gitlab_api.get(GITLAB + wheel).mock(side_effect=ranged(data, []))
    page = gitlab_page("big-pkg", "".join(anchors))
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page)
    pure = "big_pkg-2.0-py3-none-any.whl"

    def read() -> set[str]:
        return {name for name, route in routes.items() if route.called}

    async with serve({"pages.metadata": "always"}) as client:
        await client.get(PAGE)
        with anyio.fail_after(10):  # until the page gives four hashes: four were read
            while (
                sum(v.startswith("sha256=") for _, v in advertised((await client.get(PAGE)).text))
                < 8
            ):
                await anyio.sleep(0.01)
        calls = routes[pure].call_count
        path = next(a.split('"')[1] for a in anchors if f">{pure}<" in a).removeprefix(GITLAB)
        response = await client.get(path.partition("#")[0] + ".metadata")
    assert response.status_code == 200
    assert response.headers["x-cache"] == "HIT"
    assert routes[pure].call_count == calls
    assert len(read()) == 4
    assert pure in read()
    assert "big_pkg-1.0-py3-none-any.whl" not in read()


@pytest.mark.anyio
async def test_metadata_read_from_gitlab_fetches_its_dependencies_pages_ahead(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """.metadata read from GitLab starts fetching the pages of its unconditional
    Requires-Dist (not those behind a marker): the resolver's next requests are HITs."""
    requires = ["tiny", "Other.Lib (>=1.0)", "win-only; sys_platform == 'win32'"]
    metadata = "Metadata-Version: 2.1\nName: big-pkg\nVersion: 1.0\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires) + "\n"
    dist = [("big_pkg-1.0.dist-info/METADATA", metadata.encode())]
    data = wheel_of([("big_pkg/blob.bin", os.urandom(4096)), *dist], stored=True)
    filename = "big_pkg-1.0-py3-none-any.whl"
    wheel, meta = urls(filename, data)
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_of(filename, data))
    gitlab_api.get(GITLAB + wheel).mock(side_effect=ranged(data, []))
    pages = {
        name: gitlab_api.get(f"{GITLAB}{API}/simple/{name}").respond(
            200, content=gitlab_page(name, "")
        )
        for name in ("tiny", "other-lib", "win-only")
    }
    async with serve({"pages.metadata": "always"}) as client:
        await client.get(PAGE)
        assert (await client.get(meta)).status_code == 200
        with anyio.fail_after(10):
            while not (pages["tiny"].called and pages["other-lib"].called):
                await anyio.sleep(0.01)
        # GitLab was asked before any client asked; a request while the fetch is still
        # in flight joins it, and once stored the page is a HIT: never a second fetch.
        for name in ("tiny", "other-lib"):
            with anyio.fail_after(10):
                while (
                    await client.get(f"{API}/simple/{name}/", headers={"accept": JSON_TYPE})
                ).headers["x-cache"] != "HIT":
                    await anyio.sleep(0.01)
            assert pages[name].call_count == 1
    assert not pages["win-only"].called


@pytest.mark.anyio
@pytest.mark.parametrize(("mode", "ahead"), [("cached", True), ("off", False)])
async def test_a_wheel_downloaded_has_its_dependencies_pages_fetched_ahead(
    serve: Serve, gitlab_api: respx.MockRouter, mode: str, ahead: bool
) -> None:
    """Once a wheel a client downloads is held (mode cached too), the pages of its
    unconditional dependencies are fetched from GitLab before the client asks: its next
    page requests are HITs. With core metadata off, nothing is fetched ahead."""
    filename, data = _small_wheel("big-pkg", ["tiny", "win-only; sys_platform == 'win32'"])
    wheel, _ = urls(filename, data)
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_of(filename, data))
    gitlab_api.get(GITLAB + wheel).respond(200, content=data)
    pages = {
        name: gitlab_api.get(f"{GITLAB}{API}/simple/{name}").respond(
            200, content=gitlab_page(name, "")
        )
        for name in ("tiny", "win-only")
    }
    async with serve({"pages.metadata": mode}) as client:
        await client.get(PAGE)
        assert (await client.get(wheel)).content == data
        if ahead:
            with anyio.fail_after(10):  # asked of GitLab before any client asked for it
                while not pages["tiny"].called:
                    await anyio.sleep(0.01)
            with anyio.fail_after(10):  # a request while that fetch is in flight joins it
                while (
                    await client.get(f"{API}/simple/tiny/", headers={"accept": JSON_TYPE})
                ).headers["x-cache"] != "HIT":
                    await anyio.sleep(0.01)
        else:
            await client.get(PAGE)  # a round trip in which a wrong fetch ahead would show
            assert not pages["tiny"].called
    assert pages["tiny"].call_count == (1 if ahead else 0)
    assert not pages["win-only"].called


@pytest.mark.anyio
async def test_a_wheel_read_by_range_fetches_no_dependencies_pages_ahead(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A client probing a wheel with a Range (uv reading its metadata) asks for the
    dependencies' pages itself: the fill its range starts fetches none ahead."""
    filename, data = _small_wheel("big-pkg", ["tiny"])
    wheel, _ = urls(filename, data)
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_of(filename, data))
    gitlab_api.get(GITLAB + wheel).mock(side_effect=ranged(data, []))
    tiny = gitlab_api.get(f"{GITLAB}{API}/simple/tiny").respond(
        200, content=gitlab_page("tiny", "")
    )
    async with serve({"pages.metadata": "cached"}) as client:
        await client.get(PAGE)
        probe = {"range": "bytes=-100"}
        assert (await client.get(wheel, headers=probe)).status_code == 206
        with anyio.fail_after(10):  # until the fill the range started is held
            while (await client.get(wheel, headers=probe)).headers["x-cache"] != "HIT":
                await anyio.sleep(0.01)
        for _ in range(20):  # a client's round trips let a wrong fetch ahead show
            await client.get(wheel, headers=probe)
    assert not tiny.called


def _small_wheel(name: str, requires: list[str]) -> tuple[str, bytes]:
    stem = name.replace("-", "_")
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires) + "\n"
    data = wheel_of(
        [(f"{stem}/__init__.py", b""), (f"{stem}-1.0.dist-info/METADATA", metadata.encode())]
    )
    return f"{stem}-1.0-py3-none-any.whl", data


@pytest.mark.anyio
async def test_a_page_asked_for_has_its_dependencies_pages_fetched_ahead_one_level(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A page a client asks for, in mode always: once its newest wheel's metadata is read
    ahead, its dependencies' pages are fetched, before any .metadata request (the resolver
    asks for them next). Pages fetched ahead do not fetch their own dependencies ahead."""
    files = {"big-pkg": _small_wheel("big-pkg", ["tiny"]), "tiny": _small_wheel("tiny", ["deeper"])}
    routes = {}
    for name, (filename, data) in files.items():
        sha = hashlib.sha256(data).hexdigest()
        href = f"{GITLAB}{API}/files/{sha}/{filename}#sha256={sha}"
        gitlab_api.get(f"{GITLAB}{API}/simple/{name}").respond(
            200, content=gitlab_page(name, f'<a href="{href}">{filename}</a>')
        )
        routes[name] = gitlab_api.get(GITLAB + urls(filename, data)[0])
        routes[name].mock(side_effect=ranged(data, []))
    deeper = gitlab_api.get(f"{GITLAB}{API}/simple/deeper").respond(
        200, content=gitlab_page("deeper", "")
    )
    async with serve({"pages.metadata": "always"}) as client:
        assert (await client.get(PAGE)).status_code == 200
        with anyio.fail_after(10):  # tiny's page, and then its wheel's metadata, read ahead
            while not routes["tiny"].called:
                await anyio.sleep(0.01)
        for _ in range(20):  # a client's round trips let a wrongly chained fetch show
            assert (await client.get(PAGE)).headers["x-cache"] == "HIT"
    assert not deeper.called


@pytest.mark.anyio
async def test_always_mode_advertises_true_for_a_wheel_whose_metadata_is_not_read_yet(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """While the read-ahead still waits for GitLab, the page promises the metadata with
    "true" (its hash unknown); once read, the page gives its hash."""
    filename, data, metadata = big_wheel(1024**2)
    wheel, meta = urls(filename, data)
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_of(filename, data))
    release = anyio.Event()
    answer = ranged(data, [])

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return answer(request)

    gitlab_api.get(GITLAB + wheel).mock(side_effect=slow)
    gitlab_api.get(f"{GITLAB}{API}/simple/tiny").respond(200, content=gitlab_page("tiny", ""))
    async with serve({"pages.metadata": "always"}) as client:
        assert ("data-core-metadata", "true") in advertised((await client.get(PAGE)).text)
        release.set()
        assert (await client.get(meta)).content == metadata
        digest = hashlib.sha256(metadata).hexdigest()
        assert advertised((await client.get(PAGE)).text)[0][1] == f"sha256={digest}"


@pytest.mark.anyio
async def test_a_small_wheel_read_whole_for_its_metadata_is_kept_as_the_cached_file(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Mode always: a wheel smaller than the tail read arrives whole with its metadata; it
    is kept (its sha256 checked), so its download is a HIT and GitLab sends it once."""
    filename, data = _small_wheel("big-pkg", ["tiny"])
    wheel, meta = urls(filename, data)
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_of(filename, data))
    sent: list[int] = []
    route = gitlab_api.get(GITLAB + wheel).mock(side_effect=ranged(data, sent))
    gitlab_api.get(f"{GITLAB}{API}/simple/tiny").respond(200, content=gitlab_page("tiny", ""))
    async with serve({"pages.metadata": "always"}) as client:
        await client.get(PAGE)
        assert (await client.get(meta)).status_code == 200
        response = await client.get(wheel)
        assert response.content == data
        assert response.headers["x-cache"] == "HIT"
    assert route.call_count == 1
    assert sent == [len(data)]


@pytest.mark.anyio
async def test_a_whole_wheel_that_does_not_hash_to_its_sha256_is_not_kept(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A range read that brings a whole wheel with other bytes than its sha256 names: its
    metadata is still read, but the download goes to GitLab (a fill, which checks)."""
    filename, data = _small_wheel("big-pkg", ["tiny"])
    _, other = _small_wheel("big-pkg", ["other"])
    wheel, meta = urls(filename, data)
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_of(filename, data))
    route = gitlab_api.get(GITLAB + wheel).mock(side_effect=ranged(other, []))
    gitlab_api.get(f"{GITLAB}{API}/simple/other").respond(200, content=gitlab_page("other", ""))
    async with serve({"pages.metadata": "always"}) as client:
        await client.get(PAGE)
        assert (await client.get(meta)).status_code == 200
        with pytest.raises(BrokenBody):  # the fill's check: never a clean end on bad bytes
            await client.get(wheel)
    assert route.call_count == 2


@pytest.mark.anyio
async def test_always_mode_falls_back_to_the_whole_wheel_when_gitlab_ignores_range(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A 200 to a Range request: the wheel comes whole through the usual fill, and is kept."""
    filename, data, metadata = big_wheel(300 * 1024)
    wheel, meta = urls(filename, data)
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_of(filename, data))
    route = gitlab_api.get(GITLAB + wheel).respond(200, content=data)
    async with serve({"pages.metadata": "always"}) as client:
        await client.get(PAGE)
        assert (await client.get(meta)).content == metadata
        assert (await client.get(wheel)).headers["x-cache"] == "HIT"
    assert route.call_count == 2  # the refused range, then the fill


@pytest.mark.anyio
async def test_off_advertises_nothing(serve: Serve, gitlab_api: respx.MockRouter) -> None:
    """mode off: a held wheel's page carries no core-metadata attribute."""
    filename, data, _ = big_wheel(1024)
    wheel, _ = urls(filename, data)
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_of(filename, data))
    gitlab_api.get(GITLAB + wheel).respond(200, content=data)
    async with serve({"pages.metadata": "off"}) as client:
        await client.get(wheel)
        assert advertised((await client.get(PAGE)).text) == []


@pytest.mark.anyio
async def test_a_stale_page_promises_only_what_the_cache_holds(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """mode always with GitLab down: a wheel not held gets no "true" (it could not be read)."""
    filename, data, _ = big_wheel(1024)
    page = gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_of(filename, data))
    gitlab_api.get(GITLAB + urls(filename, data)[0]).respond(503)  # not read ahead either
    async with serve({"pages.metadata": "always", "cache.page_ttl": 0}) as client:
        assert advertised((await client.get(PAGE)).text) != []
        page.respond(503)
        response = await client.get(PAGE)
    assert response.headers["x-cache"] == "STALE"
    assert advertised(response.text) == []


@pytest.mark.anyio
async def test_a_wheel_without_metadata_is_a_404_not_its_bytes(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A held wheel with no METADATA: .metadata is a 404 and the page advertises nothing."""
    filename = "big_pkg-1.0-py3-none-any.whl"
    data = wheel_of([("big_pkg-1.0.dist-info/WHEEL", b"")])
    wheel, meta = urls(filename, data)
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_of(filename, data))
    gitlab_api.get(GITLAB + wheel).respond(200, content=data)
    async with serve({"pages.metadata": "always"}) as client:
        await client.get(wheel)
        response = await client.get(meta)
        assert response.status_code == 404
        assert data not in response.content
        assert advertised((await client.get(PAGE)).text) == []


@pytest.mark.anyio
async def test_metadata_needs_the_wheel_bound_to_the_caller(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A .metadata of a wheel GitLab never listed or served through this scope is a 404."""
    filename, data, _ = big_wheel(1024)
    _, meta = urls(filename, data)
    async with serve({"pages.metadata": "always"}) as client:
        assert (await client.get(meta)).status_code == 404


# -- end to end -------------------------------------------------------------------------


@pytest.mark.e2e
def test_pip_dry_run_reads_a_large_wheel_s_metadata_from_a_few_ranges(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """`pip install --dry-run --report` of a 20 MB wheel in mode always: the proxy serves its
    .metadata, GitLab's log shows only ranged reads of a few KB, the dependency resolves."""
    acme(gitlab)
    publish(gitlab, 42, "tiny", "1.0")
    filename, data, _ = big_wheel(20 * 1024**2)
    gitlab.add_file(42, "big-pkg", "1.0", filename, data)
    always = {"GITLAB_PYPI_PROXY_PAGES_METADATA": "always"}
    proxy = scenario.serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE, **always)
    index = f"{proxy.url}{API}/simple"
    report = tmp_path / "report.json"
    result = run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--isolated",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--dry-run",
            "--ignore-installed",
            "--report",
            str(report),
            "--index-url",
            index,
            "big-pkg",
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    installed = {item["metadata"]["name"] for item in json.loads(report.read_text())["install"]}
    assert installed == {"big-pkg", "tiny"}
    fetched = [
        request
        for request in gitlab.requests
        if request.method == "GET" and request.path.endswith("/" + filename)
    ]
    assert fetched
    assert all("range" in request.headers for request in fetched)
    sizes = [byte_range(request.headers["range"], len(data)) for request in fetched]
    sent = sum(end - start for start, end in filter(None, sizes))
    assert sent <= 300 * 1024, f"{sent} bytes in {len(fetched)} requests"
