"""Filler: one upstream download per file, streamed to every reader, committed only if verified."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import respx

from proxy.cache import Store
from proxy.coordination import Coordinator, Lease
from proxy.errors import CacheFull, HashMismatch
from proxy.fillreads import Fill
from proxy.fills import LEASE_WAIT, Filler
from proxy.spool import Spool
from proxy.upstream import GitLab

pytestmark = pytest.mark.anyio
BASE = "https://git.example.com"
CONTENT = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(CONTENT).hexdigest()
PATH = f"/api/v4/projects/1/packages/pypi/files/{SHA}/a-1.0-py3-none-any.whl"


class Gate(httpx.AsyncByteStream):
    """A body that sends its first half, then waits for the test to let the rest go."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.release = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        half = len(self.content) // 2
        yield self.content[:half]
        await self.release.wait()
        yield self.content[half:]


def _filler(
    tmp_path: Path,
    *,
    max_size: int = 10**9,
    store: type[Store] = Store,
    spool: type[Spool] = Spool,
) -> tuple[Filler, Store]:
    held = store(tmp_path / "cache", max_size=max_size)
    upstream = GitLab(url=BASE, connect_timeout=1, read_timeout=5)
    return Filler(held, upstream, spool(tmp_path / "cache")), held


async def _collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


@respx.mock
async def test_concurrent_readers_share_one_download(tmp_path: Path) -> None:
    """Twenty readers of one uncached file cause one GitLab request and all get every byte."""
    gate = Gate(CONTENT)
    route = respx.get(BASE + PATH).mock(
        return_value=httpx.Response(200, headers={"Content-Length": str(len(CONTENT))}, stream=gate)
    )
    filler, store = _filler(tmp_path)
    fills = [
        filler.start(SHA, PATH, authorization=None, origin="o", vetted=False) for _ in range(20)
    ]
    await fills[0].ready.wait()
    readers = [asyncio.create_task(_collect(filler.read(fill))) for fill in fills]
    gate.release.set()
    bodies = await asyncio.gather(*readers)
    assert route.call_count == 1
    assert all(body == CONTENT for body in bodies)
    assert store.has_file(SHA)


@respx.mock
async def test_readers_get_bytes_before_the_download_ends(tmp_path: Path) -> None:
    """A reader receives the first half while GitLab still holds back the second."""
    gate = Gate(CONTENT)
    respx.get(BASE + PATH).mock(
        return_value=httpx.Response(200, headers={"Content-Length": str(len(CONTENT))}, stream=gate)
    )
    filler, _ = _filler(tmp_path)
    fill = filler.start(SHA, PATH, authorization=None, origin="o", vetted=False)
    await fill.ready.wait()
    stream = filler.read(fill)
    first = await asyncio.wait_for(anext(stream), timeout=10)
    assert first
    assert not fill.done
    gate.release.set()
    assert first + await _collect(stream) == CONTENT


@respx.mock
async def test_hash_mismatch_caches_nothing_and_breaks_the_readers(tmp_path: Path) -> None:
    """Wrong bytes are never committed and the reader gets an error, not a clean end."""
    wrong = b"x" + CONTENT[1:]
    respx.get(BASE + PATH).respond(200, content=wrong)
    filler, store = _filler(tmp_path)
    fill = filler.start(SHA, PATH, authorization=None, origin="o", vetted=False)
    await fill.ready.wait()
    received = bytearray()

    async def drain() -> None:
        async for chunk in filler.read(fill):
            received.extend(chunk)

    with pytest.raises(HashMismatch):
        await drain()
    assert len(received) < len(wrong)
    assert not store.has_file(SHA)
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


@respx.mock
async def test_a_range_of_a_fill_that_fails_its_hash_never_ends_cleanly(tmp_path: Path) -> None:
    """A range already in the file still waits for the verdict, and breaks on a mismatch."""
    gate = Gate(b"x" + CONTENT[1:])
    respx.get(BASE + PATH).mock(return_value=httpx.Response(200, stream=gate))
    filler, _ = _filler(tmp_path)
    fill = filler.start(SHA, PATH, authorization=None, origin="o", vetted=False)
    await fill.ready.wait()
    stream = filler.read(fill, 0, 100)
    first = await asyncio.wait_for(anext(stream), timeout=10)
    assert first == b"x" + CONTENT[1:99]  # the range's last byte waits
    gate.release.set()
    with pytest.raises(HashMismatch):
        await _collect(stream)


@respx.mock
async def test_fills_leave_no_lock_file_behind(tmp_path: Path) -> None:
    """Each fill's lock file goes when the fill ends, committed or failed."""
    contents = [bytes([i]) * 1000 for i in range(5)]
    for content in contents:
        sha = hashlib.sha256(content).hexdigest()
        respx.get(BASE + PATH.replace(SHA, sha)).respond(200, content=content)
    respx.get(BASE + PATH).respond(200, content=b"wrong")
    filler, store = _filler(tmp_path)
    shas = [hashlib.sha256(content).hexdigest() for content in contents] + [SHA]
    for sha in shas:
        fill = filler.start(
            sha, PATH.replace(SHA, sha), authorization=None, origin="o", vetted=False
        )
        while not fill.done:
            await fill.changed()
    assert [store.has_file(sha) for sha in shas] == [True] * 5 + [False]
    assert list((tmp_path / "cache" / "locks").iterdir()) == []


@respx.mock
async def test_fill_completes_when_every_reader_left(tmp_path: Path) -> None:
    """A reader that stops early (a client that hung up) does not stop the cache fill."""
    gate = Gate(CONTENT)
    respx.get(BASE + PATH).mock(return_value=httpx.Response(200, stream=gate))
    filler, store = _filler(tmp_path)
    fill = filler.start(SHA, PATH, authorization=None, origin="o", vetted=False)
    await fill.ready.wait()
    stream = filler.read(fill)
    await anext(stream)
    await stream.aclose()
    gate.release.set()
    while not fill.done:
        await fill.changed()
    assert fill.ok
    assert store.has_file(SHA)
    await filler.aclose()


@respx.mock
async def test_range_of_a_growing_file(tmp_path: Path) -> None:
    """A byte range is served from the fill as soon as its bytes have arrived."""
    respx.get(BASE + PATH).respond(200, content=CONTENT)
    filler, _ = _filler(tmp_path)
    fill = filler.start(SHA, PATH, authorization=None, origin="o", vetted=False)
    await fill.ready.wait()
    if fill.done:
        pytest.skip("the fill finished before a reader could join")  # pragma: no cover
    assert await _collect(filler.read(fill, 1000, 5000)) == CONTENT[1000:5000]
    await filler.aclose()


@respx.mock
async def test_a_second_worker_follows_the_first_workers_download(tmp_path: Path) -> None:
    """Two Fillers on one cache directory (as two workers are) make one GitLab request;
    the follower streams the leader's growing file and ends with the committed file."""
    gate = Gate(CONTENT)
    route = respx.get(BASE + PATH).mock(
        return_value=httpx.Response(200, headers={"Content-Length": str(len(CONTENT))}, stream=gate)
    )
    leader, store = _filler(tmp_path)
    follower, _ = _filler(tmp_path)
    led = leader.start(SHA, PATH, authorization=None, origin="o", vetted=False)
    await led.ready.wait()
    followed = follower.start(SHA, PATH, authorization=None, origin="o", vetted=False)
    await asyncio.wait_for(followed.ready.wait(), timeout=10)
    assert followed.length == len(CONTENT)
    stream = follower.read(followed)
    first = await asyncio.wait_for(anext(stream), timeout=10)
    assert not followed.done  # bytes before the leader has them all
    gate.release.set()
    assert first + await _collect(stream) == CONTENT
    assert followed.ok
    assert route.call_count == 1
    assert store.has_file(SHA)
    await leader.aclose()
    await follower.aclose()


@pytest.mark.parametrize(("head", "follows"), [(404, False), (200, True)])
@respx.mock
async def test_another_workers_fill_for_another_scope_is_followed_only_if_gitlab_agrees(
    tmp_path: Path, head: int, follows: bool
) -> None:
    """A worker asked for the file through another project first asks GitLab (HEAD) there;
    a refusal is its answer, and it never streams the other project's bytes."""
    gate = Gate(CONTENT)
    respx.get(BASE + PATH).mock(
        return_value=httpx.Response(200, headers={"Content-Length": str(len(CONTENT))}, stream=gate)
    )
    other = PATH.replace("/projects/1/", "/projects/2/")
    check = respx.head(BASE + other).respond(head)
    leader, _ = _filler(tmp_path)
    follower, _ = _filler(tmp_path)
    led = leader.start(SHA, PATH, authorization=None, origin="o", vetted=False)
    await led.ready.wait()
    followed = follower.start(SHA, other, authorization=None, origin="o", vetted=False)
    await asyncio.wait_for(followed.ready.wait(), timeout=10)
    assert check.call_count == 1
    assert (followed.status == 200) is follows
    assert (followed.fd is not None) is follows
    gate.release.set()
    await leader.aclose()
    await follower.aclose()


class FullSpool(Spool):
    """A Spool on a disk that refuses the body's file (no space left)."""

    def create_part(self, sha256: str) -> tuple[int, int]:
        raise OSError(errno.ENOSPC, "No space left on device")


class ForgetfulStore(Store):
    """A Store whose disk has no room left for a file's copy."""

    def put_file(
        self, sha256: str, path: Path, *, pinned: bool = False, name: str | None = None
    ) -> int:
        raise CacheFull("the cache's disk is full")


async def _ended(fill: Fill) -> Fill:
    while not fill.done:
        await fill.changed()
    return fill


@respx.mock
async def test_a_file_larger_than_max_size_fails_its_fill_before_its_body(tmp_path: Path) -> None:
    """A Content-Length the cache could never hold ends the fill with CacheFull, no body
    started and nothing written."""
    respx.get(BASE + PATH).respond(200, content=CONTENT)
    filler, _ = _filler(tmp_path, max_size=len(CONTENT) - 1)
    fill = await _ended(filler.start(SHA, PATH, authorization=None, origin="o", vetted=False))
    assert isinstance(fill.error, CacheFull)
    assert fill.fd is None
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


@respx.mock
async def test_no_space_for_the_body_fails_the_fill_with_cache_full(tmp_path: Path) -> None:
    """ENOSPC when the body's file is made is CacheFull (the caller streams it through)."""
    respx.get(BASE + PATH).respond(200, content=CONTENT)
    filler, _ = _filler(tmp_path, spool=FullSpool)
    fill = await _ended(filler.start(SHA, PATH, authorization=None, origin="o", vetted=False))
    assert isinstance(fill.error, CacheFull)
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


@respx.mock
async def test_a_verified_body_is_read_to_its_end_when_the_store_cannot_keep_it(
    tmp_path: Path,
) -> None:
    """A reader of a fill whose file hashed right but could not be committed gets all of it."""
    gate = Gate(CONTENT)
    respx.get(BASE + PATH).mock(return_value=httpx.Response(200, stream=gate))
    filler, _ = _filler(tmp_path, store=ForgetfulStore)
    fill = filler.start(SHA, PATH, authorization=None, origin="o", vetted=False)
    await fill.ready.wait()
    reading = asyncio.create_task(_collect(filler.read(fill)))
    gate.release.set()
    assert await reading == CONTENT
    assert isinstance(fill.error, CacheFull)
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


class Overtaken(Coordinator):
    """A coordinator whose every lease was overtaken by a later one before the commit."""

    @contextlib.asynccontextmanager
    async def lead(self, sha256: str, *, wait: float) -> AsyncIterator[Lease | None]:
        yield Lease(sha256, 1)

    async def may_commit(self, lease: Lease | None) -> bool:
        return False


@respx.mock
async def test_a_fill_whose_lease_was_overtaken_is_read_but_not_committed(tmp_path: Path) -> None:
    """A stale writer (its lease expired and was granted again) serves its verified bytes
    to its readers but never commits them to the Store."""
    respx.get(BASE + PATH).mock(return_value=httpx.Response(200, content=CONTENT))
    held = Store(tmp_path / "cache", max_size=10**9)
    upstream = GitLab(url=BASE, connect_timeout=1, read_timeout=5)
    filler = Filler(held, upstream, Spool(tmp_path / "cache"), coordinator=Overtaken())
    fill = filler.start(SHA, PATH, authorization=None, origin="o", vetted=False)
    await fill.ready.wait()
    assert await _collect(filler.read(fill)) == CONTENT
    assert fill.done
    assert not held.has_file(SHA)


class HeldElsewhere(Coordinator):
    """A coordinator whose leases another replica holds until the test sets `free`."""

    def __init__(self) -> None:
        super().__init__()
        self.free = asyncio.Event()
        self.waits: list[float] = []

    @contextlib.asynccontextmanager
    async def lead(self, sha256: str, *, wait: float) -> AsyncIterator[Lease | None]:
        self.waits.append(wait)
        await self.free.wait()
        yield Lease(sha256, 2)


@respx.mock
@pytest.mark.parametrize(
    ("vetted", "head", "status", "heads"),
    [
        (True, 200, 200, 0),  # GitLab let this caller read it here: served at once
        (False, 200, 200, 1),  # anyone else: GitLab is asked (HEAD) first
        (False, 403, 403, 1),  # and its refusal is the answer, never the bytes
    ],
)
async def test_a_fill_that_waited_for_another_replicas_lease_takes_its_commit(
    tmp_path: Path, vetted: bool, head: int, status: int, heads: int
) -> None:
    """A replica that waited for another's lease finds the file committed to the shared
    store and never downloads it again; it serves it under its caller's own access."""
    download = respx.get(BASE + PATH).respond(200, content=CONTENT)
    other = PATH.replace("/projects/1/", "/projects/2/")
    check = respx.head(BASE + other).respond(head)
    shared = Store(tmp_path / "bucket", max_size=10**9)
    upstream = GitLab(url=BASE, connect_timeout=1, read_timeout=5)
    elsewhere = HeldElsewhere()
    one = Filler(shared, upstream, Spool(tmp_path / "one"))
    two = Filler(shared, upstream, Spool(tmp_path / "two"), coordinator=elsewhere)
    waiting = two.start(SHA, other, authorization=None, origin="b", vetted=vetted)
    led = await _ended(one.start(SHA, PATH, authorization=None, origin="a", vetted=False))
    assert led.ok
    assert shared.has_file(SHA)
    elsewhere.free.set()
    waited = await asyncio.wait_for(_ended(waiting), timeout=10)
    assert (waited.ok, waited.status, waited.fd) == (True, status, None)
    assert (download.call_count, check.call_count) == (1, heads)


@respx.mock
@pytest.mark.parametrize(("follow_timeout", "wait"), [(60.0, LEASE_WAIT), (3.0, 3.0)])
async def test_another_replicas_lease_is_waited_for_at_most_the_lease_wait(
    tmp_path: Path, follow_timeout: float, wait: float
) -> None:
    """A fill waits for another replica's lease at most LEASE_WAIT seconds (its client gets
    no byte meanwhile), or the follow timeout when that is shorter."""
    respx.get(BASE + PATH).respond(200, content=CONTENT)
    elsewhere = HeldElsewhere()
    elsewhere.free.set()
    filler = Filler(
        Store(tmp_path / "cache", max_size=10**9),
        GitLab(url=BASE, connect_timeout=1, read_timeout=5),
        Spool(tmp_path / "cache"),
        follow_timeout=follow_timeout,
        coordinator=elsewhere,
    )
    await _ended(filler.start(SHA, PATH, authorization=None, origin="o", vetted=False))
    assert elsewhere.waits == [wait]


async def _gated(tmp_path: Path, gate: Gate) -> tuple[Filler, Fill]:
    """A fill of PATH whose body GitLab (mocked) sends through `gate`, started."""
    respx.get(BASE + PATH).mock(return_value=httpx.Response(200, stream=gate))
    filler, _ = _filler(tmp_path)
    fill = filler.start(SHA, PATH, authorization=None, origin="o", vetted=False)
    await fill.ready.wait()
    return filler, fill


@respx.mock
async def test_followers_get_spans_of_the_growing_file_as_they_are_written(
    tmp_path: Path,
) -> None:
    """follow() names where the written bytes are in the fill's file, span after span,
    the last byte only once the file is verified."""
    gate = Gate(CONTENT)
    filler, fill = await _gated(tmp_path, gate)
    spans = filler.follow(fill)
    at, count = await asyncio.wait_for(anext(spans), timeout=10)
    got = [(at, os.pread(spans.file.fileno(), count, at))]
    assert not fill.done
    gate.release.set()
    got += [(at, os.pread(spans.file.fileno(), count, at)) async for at, count in spans]
    assert [at for at, _ in got] == [0, *itertools.accumulate(len(b) for _, b in got[:-1])]
    assert b"".join(data for _, data in got) == CONTENT
    assert spans.file.closed


@respx.mock
async def test_a_follower_of_a_fill_that_fails_its_hash_gets_the_error_not_the_end(
    tmp_path: Path,
) -> None:
    """A fill with wrong bytes raises in its followers before the last byte's span."""
    gate = Gate(b"x" + CONTENT[1:])
    filler, fill = await _gated(tmp_path, gate)
    spans = filler.follow(fill)
    seen = [await asyncio.wait_for(anext(spans), timeout=10)]
    gate.release.set()
    with pytest.raises(HashMismatch):
        seen.extend([span async for span in spans])
    assert sum(count for _, count in seen) < len(CONTENT)


@respx.mock
async def test_a_follower_that_never_starts_lets_the_fill_close_its_file(tmp_path: Path) -> None:
    """A follow() dropped unread still releases the fill's descriptor when the fill ends."""
    gate = Gate(CONTENT)
    filler, fill = await _gated(tmp_path, gate)
    await filler.follow(fill).aclose()
    gate.release.set()
    async with asyncio.timeout(10):
        while not fill.done:
            await fill.changed()
    assert fill.fd is None
