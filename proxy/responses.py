"""File responses: the headers of design 3.2, HEAD, conditional GET, byte ranges, aborts,
and cached files handed to the server to send itself (zero copy)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from email.utils import formatdate, parsedate_to_datetime
from typing import IO

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from proxy.errors import ProxyError
from proxy.filereplies import FileReply, Passed
from proxy.fillreads import Body, Spans
from proxy.metrics import Metrics
from proxy.ranges import byte_range
from proxy.zerocopy import EXTENSION as ZERO_COPY

log = logging.getLogger("proxy.responses")
_ENTITY_TAG = re.compile(r'(?:W/)?"([^"]*)"')
IMMUTABLE = "max-age=31536000, immutable"
# No Content-Encoding ever: a .tar.gz is served as the bytes it is (uv and poetry
# break on proxies that say "gzip" here).
_TYPES = {
    ".whl": "application/zip",
    ".zip": "application/zip",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".bz2": "application/x-bzip2",
    ".metadata": "text/plain",
}


def serve_file(
    request: Request, reply: FileReply, filename: str, sha256: str, *, public: bool
) -> Response:
    """Headers of design 3.2, HEAD, conditional GET and single byte ranges.

    `public`: GitLab serves this file anonymously, so shared caches may keep it too;
    anything fetched with credentials is `private`. A file on disk goes to a server that
    offers the zero-copy send extension whole (it sends it with os.sendfile); anything
    else, or to any other server, is streamed.
    """
    etag = f'"{sha256}"'
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    headers = {
        "content-type": _TYPES.get(suffix, "application/octet-stream"),
        "etag": etag,
        "cache-control": ("public, " if public else "private, ") + IMMUTABLE,
        "x-cache": reply.cache,
    }
    size = reply.size
    if size is not None:
        if reply.ranged:
            headers["accept-ranges"] = "bytes"
        headers["content-length"] = str(size)
    if reply.modified is not None:
        headers["last-modified"] = formatdate(reply.modified, usegmt=True)
    if _not_modified(request, etag, reply.modified):
        reply.release()
        return Response(
            None, 304, headers={k: v for k, v in headers.items() if k != "content-length"}
        )
    start, end, status = 0, size, 200
    wanted = request.headers.get("range") if reply.ranged else None
    if wanted and size is not None and request.headers.get("if-range", etag) == etag:
        parsed = byte_range(wanted, size)
        if parsed is None:
            reply.release()
            return Response(
                None, 416, headers={"content-range": f"bytes */{size}", "x-cache": reply.cache}
            )
        if parsed != (0, size):
            start, end, status = parsed[0], parsed[1], 206
            headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
            headers["content-length"] = str(end - start)
    if request.method == "HEAD":
        reply.release()
        return Response(None, status, headers=headers)
    served: Metrics = request.state.metrics
    counter = served.bytes_served.labels("cache" if reply.cache == "HIT" else "gitlab")
    if reply.data is not None:  # in memory: one write with the head
        body = reply.data if (start, end) == (0, size) else reply.data[start:end]
        counter.inc(len(body))
        return Response(body, status, headers=headers)
    offered = ZERO_COPY in (request.scope.get("extensions") or {})
    if reply.file is not None and size is not None and offered:
        count = (size if end is None else end) - start
        counts = (counter.inc, served.bytes_sendfile.inc)
        return SentFile(reply.file, start, count, counts, reply.release, status, headers)
    if reply.follow is not None and offered:
        counts = (counter.inc, served.bytes_sendfile.inc)
        return FollowedFile(reply.follow(start, end), counts, status, headers)
    return AbortableStream(reply.chunks(start, end), counter.inc, status, headers=headers)


def pass_on(request: Request, passed: Passed) -> Response:
    """GitLab's answer to a ranged request as it gave it (status, Content-Range, length,
    bytes), marked `X-Cache: BYPASS` and for no cache to keep: its bytes are not verified."""
    headers = {**passed.headers, "cache-control": "no-store", "x-cache": "BYPASS"}
    if passed.length is not None:
        headers["content-length"] = str(passed.length)
    served: Metrics = request.state.metrics
    count = served.bytes_served.labels("gitlab").inc
    return AbortableStream(passed.body, count, passed.status, headers=headers)


class AbortableStream(StreamingResponse):
    """A stream that, when its source fails, breaks the connection instead of ending cleanly.

    Design 3.2: on a hash mismatch "the client's response is aborted (a truncated body,
    never a clean end)": the final body message is never sent, so the server closes the
    connection short of Content-Length (or without the last chunk).
    """

    def __init__(
        self, body: Body, count: Callable[[int], None], status: int, headers: dict[str, str]
    ) -> None:
        super().__init__(body, status, headers=headers)
        self._body = body
        self._count = count

    async def stream_response(self, send: Send) -> None:
        """Send the head, then the chunks; on a ProxyError stop without finishing.

        The body is closed however this ends, so a cached file or a fill's reader is
        released even when the client left before the first byte.
        """
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            try:
                async for chunk in self._body:
                    self._count(len(chunk))
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    del chunk  # sent (or copied by the transport): not held for the next read
            except ProxyError as exc:
                log.warning("aborted a download mid-body: %s", exc)
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self._body.aclose()


class SentFile(Response):
    """Bytes of an open file the server sends itself: one ASGI zero-copy send message
    (`file`, `offset`, `count`). `close` runs however it ends."""

    def __init__(
        self,
        file: IO[bytes],
        offset: int,
        count: int,
        counts: tuple[Callable[[int], None], ...],
        close: Callable[[], None],
        status: int,
        headers: dict[str, str],
    ) -> None:
        super().__init__(None, status, headers=headers)
        self._file = file
        self._offset = offset
        self._count = count
        self._counts = counts
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            start = {"type": "http.response.start", "status": self.status_code}
            await send({**start, "headers": self.raw_headers})
            await send(
                {
                    "type": ZERO_COPY,
                    "file": self._file,
                    "offset": self._offset,
                    "count": self._count,
                    "more_body": False,
                }
            )
            for count in self._counts:
                count(self._count)
        finally:
            self._close()


class FollowedFile(Response):
    """A file still being filled, sent by the server from the growing file: one zero-copy
    message (more_body) per newly written span. When the fill fails, the response is left
    unfinished, so the server breaks the connection instead of ending it cleanly."""

    def __init__(
        self,
        spans: Spans,
        counts: tuple[Callable[[int], None], ...],
        status: int,
        headers: dict[str, str],
    ) -> None:
        super().__init__(None, status, headers=headers)
        self._spans = spans
        self._counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            start = {"type": "http.response.start", "status": self.status_code}
            await send({**start, "headers": self.raw_headers})
            try:
                async for offset, count in self._spans:
                    span = {"type": ZERO_COPY, "offset": offset, "count": count}
                    await send({**span, "file": self._spans.file, "more_body": True})
                    for counted in self._counts:
                        counted(count)
            except ProxyError as exc:
                log.warning("aborted a download mid-body: %s", exc)
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self._spans.aclose()


def none_match(header: str | None, etag: str) -> bool:
    """Whether If-None-Match names the representation whose (quoted) ETag is `etag`
    (RFC 9110 13.1.2): `*` names any that exists; else a list of entity tags, compared
    weakly (`W/"x"` matches `"x"`)."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return etag.strip('"') in _ENTITY_TAG.findall(header)


def _not_modified(request: Request, etag: str, modified: float | None) -> bool:
    """Whether the client's copy is current: If-None-Match when sent, else If-Modified-Since
    against `modified` at the one-second resolution of an HTTP-date (RFC 9110 13.1.3, 13.2.2)."""
    headers = request.headers
    if "if-none-match" in headers:
        return none_match(headers["if-none-match"], etag)
    since = headers.get("if-modified-since")
    if since is None or modified is None:
        return False
    try:
        date = parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False  # not an HTTP-date: ignored, as RFC 9110 says
    if date.tzinfo is None:
        return False
    return int(modified) <= date.timestamp()
