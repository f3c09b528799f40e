"""File requests and their answers: what was asked, a file to send, GitLab's ranged answer."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import IO

from proxy.errors import CacheError
from proxy.fillreads import Body, Spans
from proxy.models import CacheStatus, Reply
from proxy.storage import Opened

SMALL = 64 * 1024
"""Bytes up to which a cached file is read in the thread that opens it and sent from memory:
less CPU than the kernel's sendfile with the event loop's waits around it."""
_NOT_FOUND = b'{"message":"404 Package Not Found"}'


@dataclass(slots=True)
class FileReply:
    """A file to stream: its size (when known) and a way to read any byte range."""

    size: int | None
    cache: CacheStatus
    chunks: Callable[[int, int | None], Body]
    """chunks(start, end): the bytes [start, end); end None means to the end."""
    release: Callable[[], None] = field(default=lambda: None)
    """Frees what `chunks` would have used, for a HEAD that reads nothing."""
    ranged: bool = True
    """False: only the whole body can be read (chunks(0, None)); Range is not offered."""
    sha256: str | None = None
    """The sha256 of these bytes when it is not the URL's (core metadata): the ETag."""
    modified: float | None = None
    """When the cache committed the file (its mtime): Last-Modified; None while filling."""
    file: IO[bytes] | None = None
    """The open file on disk that `chunks` reads (a committed file), for a server that
    sends files itself; `release` closes it. None for anything else."""
    follow: Callable[[int, int | None], Spans] | None = None
    """follow(start, end): a fill in progress as spans of its growing file, for a server
    that sends files itself (what `chunks` reads, by zero copy). None for anything else."""
    data: bytes | None = None
    """All of the bytes, when they are few and already read (a small cached file, core
    metadata): sent with the response's head in one write."""


@dataclass(frozen=True, slots=True)
class Asked:
    """What a file request asks for besides the file itself."""

    head: bool = False
    """A HEAD: headers only; a file not held is not fetched for it."""
    range: str = ""
    """The Range header as sent ("" when absent)."""
    if_range: str = ""
    """The If-Range header as sent ("" when absent)."""


@dataclass(slots=True)
class Passed:
    """GitLab's own answer to a ranged request, passed on as a direct client would get it:
    its status (206), Content-Range, length and bytes; never cached (X-Cache BYPASS)."""

    status: int
    headers: Mapping[str, str]
    length: int | None
    body: Body


@dataclass(frozen=True, slots=True)
class Small:
    """A cached file small enough to be read whole where it was opened (Downloads._known's
    thread): sent from memory with its head, in one write, instead of by the kernel."""

    data: bytes
    modified: float


def read_small(opened: Opened | None) -> Opened | Small | None:
    """(Blocking) `opened` read whole and closed when it is a local file of at most SMALL
    bytes; else `opened` as it is."""
    if opened is None or opened.file is None or opened.size > SMALL:
        return opened
    try:
        data = os.pread(opened.file.fileno(), opened.size, 0)
    finally:
        opened.close()
    if len(data) != opened.size:
        raise CacheError(f"a cached file is {len(data)} bytes, not {opened.size}")
    return Small(data, opened.modified)


def in_memory(
    data: bytes, cache: CacheStatus, *, sha256: str, modified: float | None = None
) -> FileReply:
    """A reply of bytes held in memory (a small cached file, core metadata); `sha256`
    names them (the ETag)."""

    async def chunks(start: int, end: int | None) -> AsyncGenerator[bytes, None]:
        yield data[start:end]

    return FileReply(
        len(data),
        cache,
        lambda start, end: Body(chunks(start, end), lambda: None),
        sha256=sha256,
        modified=modified,
        data=data,
    )


def cached_reply(opened: Opened | Small, key: str) -> FileReply:
    """The HIT reply of a cached file: from memory when it was read whole, else from its
    open file (by zero copy where the server offers it); `key` is its sha256."""
    if isinstance(opened, Small):
        return in_memory(opened.data, "HIT", sha256=key, modified=opened.modified)
    return FileReply(
        opened.size,
        "HIT",
        lambda start, end: Body(opened.read(start, end), opened.close),
        opened.close,
        sha256=key,
        modified=opened.modified,
        file=opened.file,
    )


def not_found() -> Reply:
    """GitLab's 404 for a file it does not hold under that name, worded as GitLab does."""
    return Reply(404, _NOT_FOUND, {"content-type": "application/json"}, "BYPASS")


def unread(start: int, end: int | None) -> Body:
    """No body: a HEAD's reply reads nothing."""
    return Body(_nothing(), lambda: None)


async def _nothing() -> AsyncGenerator[bytes, None]:
    return
    yield b""  # pragma: no cover
