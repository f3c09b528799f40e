"""The public index client: pypi.org and its file host, on allowed hosts, never credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from urllib.parse import urljoin

import httpx

from proxy.answers import (
    MAX_PAGE_BYTES,
    MAX_REDIRECTS,
    REDIRECTS,
    Answer,
    Download,
    kept_headers,
    opened,
    read_whole,
    request_builder,
    send_alone,
    url_netloc,
    url_origin,
)
from proxy.errors import UpstreamUnavailable
from proxy.wire import Wire


class PublicIndex:
    """A public package index (pypi.org and its file host), asked only on `allowed_hosts`
    (redirects included) and never with a credential: no GitLab or client header goes there.
    """

    def __init__(
        self,
        *,
        allowed_hosts: Iterable[str],
        connect_timeout: float,
        read_timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._allowed = frozenset(host.lower() for host in allowed_hosts)
        self._transport = transport or Wire()
        self._client = request_builder(
            self._transport, connect_timeout=connect_timeout, read_timeout=read_timeout
        )

    def __repr__(self) -> str:
        return f"PublicIndex(allowed_hosts={sorted(self._allowed)!r})"

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._client.aclose()

    def allows(self, url: str) -> bool:
        """Whether `url` is http(s) on an allowed host: "host" on its scheme's default
        port, or "host:port" exactly."""
        try:
            scheme, host, port = url_origin(url)
        except ValueError:
            return False
        default = port == (443 if scheme == "https" else 80)
        named = {f"{host}:{port}"} | ({host} if default else set())
        return scheme in ("http", "https") and bool(named & self._allowed)

    async def _open(self, url: str, headers: Mapping[str, str]) -> httpx.Response:
        """GET `url`, following redirects while they stay on allowed hosts."""
        for _hop in range(MAX_REDIRECTS + 1):
            if not self.allows(url):
                raise UpstreamUnavailable(f"{url_netloc(url)} is not in forwarding.allowed_hosts")
            try:
                request = self._client.build_request("GET", url, headers=dict(headers))
                response = await send_alone(self._transport, request)
            except (httpx.InvalidURL, ValueError) as exc:
                raise UpstreamUnavailable("the public index gave an unusable URL") from exc
            except httpx.TimeoutException as exc:
                raise UpstreamUnavailable(
                    "the public index did not answer in time", timeout=True
                ) from exc
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable(
                    f"the public index could not be reached ({type(exc).__name__})"
                ) from exc
            if response.status_code not in REDIRECTS or "location" not in response.headers:
                return response
            await response.aclose()
            url = urljoin(url, response.headers["location"])
        raise UpstreamUnavailable("the public index redirected too many times")

    async def _read(self, response: httpx.Response, limit: int) -> bytes:
        return await read_whole(response, limit, "the public index")

    async def get(self, url: str, *, accept: str, etag: str | None = None) -> Answer:
        """GET a page; `url` of the Answer is where it finally came from."""
        headers = {"Accept": accept}
        if etag:
            headers["If-None-Match"] = etag
        response = await self._open(url, headers)
        final = str(response.url)
        body = await self._read(response, MAX_PAGE_BYTES)
        return Answer(response.status_code, kept_headers(response.headers), body, final)

    @asynccontextmanager
    async def download(
        self, url: str, *, extra: Mapping[str, str] | None = None
    ) -> AsyncIterator[Download]:
        """Open a file download (5xx and 429 raise UpstreamStatus); `extra` headers (a
        Range) go with it."""
        headers = {"Accept": "*/*", "Accept-Encoding": "identity", **(extra or {})}
        response = await self._open(url, headers)
        async with opened(response, self._read) as download:
            yield download
