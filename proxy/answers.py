"""Upstream answers as read, and the wire-level steps the GitLab and public index clients share."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx

from proxy import __version__
from proxy.errors import UpstreamStatus, UpstreamUnavailable

USER_AGENT = f"gitlab-pypi-proxy/{__version__}"
MAX_PAGE_BYTES = 20 * 1024 * 1024
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
MAX_RETRY_AFTER = 3600.0
"""The longest Retry-After honoured: a longer one is more likely a mistake than a plan."""
_DELTA_SECONDS = re.compile(r"[0-9]+")
# Headers of GitLab's answers a client may see; everything else stays behind the proxy.
PASSED_HEADERS = ("content-type", "www-authenticate", "location", "retry-after", "etag")
# ...and of its answers to file downloads (a range passed through, a 416).
FILE_HEADERS = (*PASSED_HEADERS, "content-range", "accept-ranges", "last-modified")


@dataclass(frozen=True, slots=True)
class Answer:
    """A small, fully read answer from GitLab (a page, an error, an upload result)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str
    """The URL that gave this answer."""


@dataclass(slots=True)
class Download:
    """An open download: status and headers known, body still to be read."""

    status: int
    headers: Mapping[str, str]
    length: int | None
    chunks: AsyncIterator[bytes]
    error_body: bytes = field(default=b"")


@dataclass(frozen=True, slots=True)
class Probe:
    """What GitLab says of a file without sending it (a HEAD)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    """GitLab's short answer when it refuses (status >= 400)."""
    size: int | None
    """The file's real size, when GitLab (or object storage) tells it."""
    ranges: bool
    """Whether a Range gets a 206 there."""


async def send_alone(transport: httpx.AsyncBaseTransport, request: httpx.Request) -> httpx.Response:
    """Send `request` (built by an httpx client) by `transport` itself, not through the
    client: nothing is kept between requests, above all no cookie jar (a cookie set in an
    answer to one caller must never go with another caller's request), and none of the
    client's per-request layers run (auth, redirects and cookies: a tenth of the event
    loop's time on a cold install, py-spy). The response streams: close it."""
    response = await transport.handle_async_request(request)
    response.request = request
    return response


def request_builder(
    transport: httpx.AsyncBaseTransport, *, connect_timeout: float, read_timeout: float
) -> httpx.AsyncClient:
    """An httpx client that only builds requests for `send_alone` (and closes `transport`
    with itself): our User-Agent, these timeouts, no redirect followed, no proxy or
    certificate taken from the environment."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
    )


def url_origin(url: str) -> tuple[str, str, int]:
    """(scheme, lower-case host, port) of `url`, the port its scheme's default if unsaid."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (RFC 9110 10.2.3: delta-seconds or an
    HTTP-date), at most MAX_RETRY_AFTER; None when absent or unreadable."""
    value = (value or "").strip()
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(value[:12]), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # "-0000": UTC, its source unsaid
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


async def read_whole(response: httpx.Response, limit: int, who: str) -> bytes:
    """A small body read whole (at most `limit` bytes); closes the response."""
    body = bytearray()
    try:
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > limit:
                raise UpstreamUnavailable(f"{who}'s answer is larger than {limit} bytes")
    except httpx.TimeoutException as exc:
        raise UpstreamUnavailable(f"{who} stopped sending in time", timeout=True) from exc
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"{who}'s answer broke off ({type(exc).__name__})") from exc
    finally:
        await response.aclose()
    return bytes(body)


def kept_headers(headers: httpx.Headers) -> dict[str, str]:
    """The PASSED_HEADERS of an answer, the only ones a client may see."""
    return {name: headers[name] for name in PASSED_HEADERS if name in headers}


@asynccontextmanager
async def opened(
    response: httpx.Response, read: Callable[[httpx.Response, int], Awaitable[bytes]]
) -> AsyncIterator[Download]:
    """A Download of an open response (5xx and 429 raise UpstreamStatus); closes it after.
    A 200 or 206 is streamed; any other status comes with its short body."""
    try:
        raise_for_failure(response)
        kept = {name: response.headers[name] for name in FILE_HEADERS if name in response.headers}
        if response.status_code not in (200, 206):
            body = await read(response, 64 * 1024)
            yield Download(response.status_code, kept, None, _empty(), body)
            return
        length = response.headers.get("content-length")
        yield Download(
            response.status_code,
            kept,
            int(length) if length and length.isdigit() else None,
            _chunks(response),
        )
    finally:
        await response.aclose()


def raise_for_failure(response: httpx.Response) -> None:
    """GitLab's 5xx or 429 as UpstreamStatus (with its Retry-After)."""
    if response.status_code >= 500 or response.status_code == 429:
        raise UpstreamStatus(
            response.status_code, retry_after=retry_after(response.headers.get("retry-after"))
        )


def url_netloc(url: str) -> str:
    """The host[:port] of `url`, lower-case, without credentials."""
    return urlsplit(url).netloc.rpartition("@")[2].lower()


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover


async def _chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The raw body: no decoding, so the bytes hash to what GitLab stored."""
    try:
        # As the transport read them: a chunk size would cut and join them again (a copy).
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.TimeoutException as exc:
        raise UpstreamUnavailable("GitLab stopped sending in time", timeout=True) from exc
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"the download broke off ({type(exc).__name__})") from exc
