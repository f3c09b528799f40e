"""One upstream download per file, across workers, streamed to every reader while it fills.

A fill is led by the one process that holds the file's lock (`locks/<sha256>.lock`, flock):
it downloads into `tmp/<sha256>.fill`, announces the file in `tmp/<sha256>.json` and
commits the verified file to the Store. A file the disk has no room for (its
Content-Length, or ENOSPC on the way) fails with CacheFull, leaving nothing behind; the
caller then streams it through uncached. Other workers follow the growing file and learn
the outcome when the lock is released. Locks die with their process, so a SIGKILLed
leader never blocks a file, and its leftovers are swept at the next start.
With a Coordinator on Redis, the leader also holds the file's lease across replicas (one
GitLab fetch among them; a dead replica's lease expires) and commits only with a fence
no later lease has overtaken.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

from anyio import to_thread

from proxy.bodywriter import BodyWriter
from proxy.cache import Store
from proxy.cacheio import is_full
from proxy.coordination import Coordinator, Lease
from proxy.errors import (
    CacheError,
    CacheFull,
    HashMismatch,
    IncompleteBody,
    ProxyError,
    UpstreamUnavailable,
)
from proxy.fillreads import Body, Fill, Spans, follow_fill, read_fill
from proxy.models import project_of
from proxy.spool import Spool
from proxy.upstream import GitLab

log = logging.getLogger("proxy.fills")
FOLLOW_POLL = 0.02
"""Seconds between looks at another worker's growing file."""
LEASE_WAIT = 10.0
"""Seconds a fill waits for another replica's fetch of the file before fetching it too: its
client gets no byte meanwhile, and pip gives up after 15 s without one."""
RESERVE = 4 * 1024 * 1024
"""Bytes left free on the cache's disk for SQLite and the records: below it, the cache is full."""


class Filler:
    """Starts fills, lets late readers join them, and commits verified files to the Store."""

    def __init__(
        self,
        store: Store,
        upstream: GitLab,
        spool: Spool,
        *,
        on_mismatch: Callable[[], None] = lambda: None,
        on_evict: Callable[[int], None] = lambda count: None,
        follow_timeout: float = 60.0,
        coordinator: Coordinator | None = None,
    ) -> None:
        self._coordinator = coordinator or Coordinator()
        self._store = store
        self._upstream = upstream
        self._spool = spool
        self._on_mismatch = on_mismatch
        self._on_evict = on_evict
        self._follow_timeout = follow_timeout
        self._active: dict[tuple[str, str], Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def probe_writable(self) -> str:
        """ "writable", or "full (N bytes free)" when new files go uncached; raises OSError
        when the cache cannot be written for another reason (blocking)."""
        try:
            self._spool.probe()
        except OSError as exc:
            if not is_full(exc):
                raise
        free, full = self.disk()
        return f"full ({free} bytes free)" if full else "writable"

    def disk(self) -> tuple[int, bool]:
        """The bytes free on the cache's disk, and whether that is too few for any new file
        (blocking)."""
        free = self._spool.free_bytes()
        return free, free < RESERVE

    def has_room(self, length: int | None) -> bool:
        """Whether a file of `length` bytes (None: unknown) can be filled and committed:
        its part file and the Store's copy of it both fit, leaving RESERVE (blocking)."""
        if length is not None and length > self._store.max_size:
            return False
        return self._spool.free_bytes() - RESERVE >= 2 * (length or 0)

    def start(
        self, sha256: str, path: str, *, authorization: str | None, origin: str, vetted: bool
    ) -> Fill:
        """The running fill of this file for this caller, or a new one (it runs whether or
        not anyone reads).

        `origin` names whom GitLab answers (scope and credentials, hashed): only a fill of the
        same origin and path is joined, so GitLab's answer to one caller never becomes
        another's. A `vetted` caller (GitLab already let it read this file here) also joins
        any fill of the file that has its body, and follows another worker's without asking.
        """
        key = hashlib.sha256(f"{origin}\n{path}".encode()).hexdigest()
        fill = self._active.get((sha256, key))
        if fill is None and vetted:
            fill = next(
                (f for (sha, _), f in self._active.items() if sha == sha256 and f.fd is not None),
                None,
            )
        if fill is not None:
            return fill
        fill = Fill(sha256, key, url=path, vetted=vetted)
        self._active[(sha256, key)] = fill
        task = asyncio.create_task(self._run(fill, path, authorization))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    def running(self) -> tuple[Fill, ...]:
        """The fills of this process still in progress (for the status page)."""
        return tuple(self._active.values())

    async def aclose(self) -> None:
        """Cancel running fills (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _run(self, fill: Fill, path: str, authorization: str | None) -> None:
        try:
            lock = await to_thread.run_sync(self._spool.try_lock, fill.sha256)
            if lock is None:
                lock = await self._follow(fill, path, authorization)
            if lock is not None:
                # Another replica's fill of the file: wait for its lease (its commit, in a
                # shared store, or its death), then lead here; `_lead` asks the Store first.
                wait = min(self._follow_timeout, LEASE_WAIT)
                async with self._coordinator.lead(fill.sha256, wait=wait) as lease:
                    await self._lead(fill, path, authorization, lock, lease)
        except ProxyError as exc:
            log.warning("fill of %s failed: %s", fill.sha256, exc)
            fill.error = exc
        except OSError as exc:
            log.warning("fill of %s failed: %s", fill.sha256, exc)
            kind = CacheFull if is_full(exc) else CacheError
            fill.error = kind(f"cannot write the cache: {exc.strerror}")
        finally:
            self._active.pop((fill.sha256, fill.origin), None)
            fill.finish()

    async def _lead(
        self, fill: Fill, path: str, authorization: str | None, lock: int, lease: Lease | None
    ) -> None:
        writer: int | None = None
        try:
            if await to_thread.run_sync(self._store.has_file, fill.sha256):
                # Another worker committed it while we waited; GitLab still decides
                # whether this caller may have it.
                if fill.vetted or await self._may_follow(fill, path, authorization):
                    fill.status = 200
                return
            token = secrets.token_hex(8)
            async with self._upstream.download(path, authorization=authorization) as download:
                fill.status, fill.headers = download.status, download.headers
                if download.status != 200:
                    fill.error_body = download.error_body
                    return
                fill.length = download.length
                if not await to_thread.run_sync(self.has_room, fill.length):
                    raise CacheFull(f"no room in the cache for {fill.length} bytes")
                out, fill.fd = await to_thread.run_sync(self._spool.create_part, fill.sha256)
                writer = out
                await to_thread.run_sync(
                    partial(
                        self._spool.announce,
                        fill.sha256,
                        token,
                        origin=fill.origin,
                        status=200,
                        length=fill.length,
                    )
                )
                fill.ready.set()
                # A thread writes and hashes while the loop fetches the next bytes.
                async with BodyWriter(out, on_written=fill.wrote) as body:
                    async for chunk in download.chunks:
                        await body.write(chunk)
                    digest = await body.hexdigest()
            if fill.length is not None and fill.written != fill.length:
                raise IncompleteBody(f"got {fill.written} of {fill.length} bytes")
            if digest != fill.sha256:
                self._on_mismatch()
                raise HashMismatch(f"{fill.sha256[:12]}… hashes to {digest[:12]}…")
            fill.verified = True
            if not await self._coordinator.may_commit(lease):
                # A later lease was granted (ours expired): its holder commits, never us.
                log.warning("not committing %s: its lease expired mid-fill", fill.sha256)
                return
            part = self._spool.part(fill.sha256)
            name = project_of(unquote(urlsplit(path).path.rpartition("/")[2]))
            evicted = await to_thread.run_sync(
                partial(self._store.put_file, fill.sha256, part, name=name)
            )
            self._on_evict(evicted)
        finally:
            await to_thread.run_sync(self._end_lead, fill.sha256, writer, lock)

    def _end_lead(self, sha256: str, writer: int | None, lock: int) -> None:
        if writer is not None:
            os.close(writer)
            self._spool.part(sha256).unlink(missing_ok=True)
        self._spool.unlock(sha256, lock)

    async def _follow(self, fill: Fill, path: str, authorization: str | None) -> int | None:
        """Follow another worker's fill; returns a lock if that worker gave up before the body.

        A fill for another scope or other credentials is followed only once GitLab says
        this caller may read the file here (knowing a sha256 is not access).
        """
        deadline = asyncio.get_running_loop().time() + self._follow_timeout
        token = ""
        while True:
            lock = await to_thread.run_sync(self._spool.try_lock, fill.sha256)
            if lock is not None:
                # The leader is gone. With a body, it finished (or died): the Store knows.
                if fill.fd is None:
                    return lock  # it never started a body: lead ourselves
                await to_thread.run_sync(self._spool.unlock, fill.sha256, lock)
                fill.written = (await to_thread.run_sync(os.fstat, fill.fd)).st_size
                if not await to_thread.run_sync(self._store.has_file, fill.sha256):
                    raise UpstreamUnavailable("the worker fetching this file failed")
                return None
            if fill.fd is None:
                notice = await to_thread.run_sync(self._spool.read_notice, fill.sha256)
                if notice and notice.get("token") != token:
                    token = str(notice["token"])
                    foreign = notice.get("origin") != fill.origin and not fill.vetted
                    if foreign and not await self._may_follow(fill, path, authorization):
                        return None
                    fill.fd = await to_thread.run_sync(_open_read, self._spool.part(fill.sha256))
                    if fill.fd is not None:
                        fill.status = 200
                        length = notice.get("length")
                        fill.length = length if isinstance(length, int) else None
                        fill.ready.set()
            else:
                size = (await to_thread.run_sync(os.fstat, fill.fd)).st_size
                if size > fill.written:
                    fill.written = size
                    fill.notify()
                    deadline = asyncio.get_running_loop().time() + self._follow_timeout
            if asyncio.get_running_loop().time() > deadline:
                raise UpstreamUnavailable("the worker fetching this file stalled", timeout=True)
            await asyncio.sleep(FOLLOW_POLL)

    async def _may_follow(self, fill: Fill, path: str, authorization: str | None) -> bool:
        """Ask GitLab (HEAD) whether this caller may read the file; if not, its answer
        becomes this fill's."""
        answer = await self._upstream.check(path, authorization=authorization)
        if answer.status < 400:
            return True
        fill.status, fill.headers = answer.status, answer.headers
        return False

    def read(self, fill: Fill, start: int = 0, end: int | None = None) -> Body:
        """The bytes [start, end) of a fill as they arrive (fillreads.read_fill: its rules)."""
        return read_fill(fill, start, end)

    def follow(self, fill: Fill, start: int = 0, end: int | None = None) -> Spans:
        """Where the bytes [start, end) of a fill are in its file, as they arrive
        (fillreads.follow_fill: its rules)."""
        return follow_fill(fill, start, end)


def _open_read(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
