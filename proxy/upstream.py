"""The GitLab client (httpx's home with `answers`; transport `wire`)."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import httpx

from proxy.answers import (
    MAX_PAGE_BYTES,
    MAX_REDIRECTS,
    REDIRECTS,
    Answer,
    Download,
    Probe,
    kept_headers,
    opened,
    raise_for_failure,
    read_whole,
    request_builder,
    retry_after,
    send_alone,
    url_netloc,
    url_origin,
)
from proxy.errors import BadRequest, UpstreamStatus, UpstreamUnavailable
from proxy.metrics import Metrics
from proxy.reachability import Reachability
from proxy.wire import Wire


class PublicFiles(Protocol):
    """What the GitLab client asks of the public index (publicindex.PublicIndex)."""

    def allows(self, url: str) -> bool:
        """Whether `url` is http(s) on an allowed host."""
        ...

    def download(
        self, url: str, *, extra: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[Download]:
        """Open a file download (5xx and 429 raise UpstreamStatus); `extra` headers go with it."""
        ...


def basic_authorization(username: str, password: str) -> str:
    """The value of an `Authorization: Basic` header."""
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _rest_credentials(authorization: str | None) -> dict[str, str]:
    """The header GitLab's REST API reads for the token in an Authorization value."""
    scheme, _, credential = (authorization or "").partition(" ")
    if scheme.lower() == "bearer":
        return {"Authorization": authorization or ""}
    if scheme.lower() != "basic":
        return {}
    try:
        username, _, password = base64.b64decode(credential, validate=True).decode().partition(":")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return {}
    if not password:
        return {}
    return {"JOB-TOKEN" if username == "gitlab-ci-token" else "PRIVATE-TOKEN": password}


class GitLab:
    """Talks to one GitLab instance; paths given to it start with /api/v4/."""

    def __init__(
        self,
        *,
        url: str,
        connect_timeout: float,
        read_timeout: float,
        ca_bundle: str = "",
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
        public: PublicFiles | None = None,
        heard: Reachability | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._heard = heard or Reachability()
        self._public = public
        self._metrics = metrics or Metrics()
        self._connect_timeout = connect_timeout
        self._quiet_until = 0.0
        self._origin = url_origin(self.url)
        self._transport = transport or Wire(ca_bundle=ca_bundle)
        self._client = request_builder(
            self._transport, connect_timeout=connect_timeout, read_timeout=read_timeout
        )

    def __repr__(self) -> str:
        return f"GitLab(url={self.url!r})"

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._client.aclose()

    def _same_origin(self, url: str) -> bool:
        return url_origin(url) == self._origin

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: AsyncIterator[bytes] | None = None,
        *,
        kind: str,
        budget: float | None = None,
    ) -> httpx.Response:
        """Send one request; httpx's failures become UpstreamUnavailable here."""
        try:
            request = self._client.build_request(
                method,
                url,
                headers=dict(headers),
                content=content,
                timeout=httpx.USE_CLIENT_DEFAULT if budget is None else budget,
            )
        except (httpx.InvalidURL, ValueError) as exc:
            raise BadRequest("the request cannot be made into a URL for GitLab") from exc
        errors = self._metrics.upstream_errors
        started = time.monotonic()
        if started < self._quiet_until:
            # GitLab said 429 with Retry-After: don't ask again before it.
            raise UpstreamStatus(429, retry_after=self._quiet_until - started)
        try:
            response = await send_alone(self._transport, request)
        except httpx.TimeoutException as exc:
            errors.labels("timeout").inc()
            self._heard.failed(f"no answer in time ({type(exc).__name__})")
            raise UpstreamUnavailable(
                f"GitLab did not answer in time ({type(exc).__name__})", timeout=True
            ) from exc
        except httpx.HTTPError as exc:
            errors.labels("unreachable").inc()
            self._heard.failed(f"could not be reached ({type(exc).__name__})")
            raise UpstreamUnavailable(
                f"GitLab could not be reached ({type(exc).__name__})"
            ) from exc
        self._metrics.upstream_seconds.labels(kind).observe(time.monotonic() - started)
        self._heard.answered(response.status_code)
        if response.status_code >= 500:
            errors.labels("status_5xx").inc()
        elif response.status_code == 429:
            errors.labels("rate_limited").inc()
            retry = retry_after(response.headers.get("retry-after"))
            if retry:
                self._quiet_until = time.monotonic() + retry
        return response

    async def _read(self, response: httpx.Response, limit: int) -> bytes:
        return await read_whole(response, limit, "GitLab")

    async def get(
        self,
        path: str,
        *,
        accept: str,
        authorization: str | None,
        etag: str | None = None,
        quick: bool = False,
    ) -> Answer:
        """GET a page (or anything small) without following redirects; body read whole.

        quick: the whole exchange gets only connect_timeout, for when a stale copy is
        waiting to be served if GitLab is slow.
        """
        headers = {"Accept": accept}
        if authorization:
            headers["Authorization"] = authorization
        if etag:
            headers["If-None-Match"] = etag
        url = self.url + path
        budget = self._connect_timeout if quick else None
        response = await self._send("GET", url, headers, kind="page", budget=budget)
        body = await self._read(response, MAX_PAGE_BYTES)
        return Answer(response.status_code, kept_headers(response.headers), body, url)

    async def _follow(
        self, method: str, path: str, *, authorization: str | None, extra: Mapping[str, str]
    ) -> httpx.Response:
        """Send `method` to a file's path, following GitLab's redirects (to object storage,
        or from EE's forward/ route to the public index's allowed hosts).

        Credentials go only to GitLab's own origin: a redirect elsewhere (a presigned
        object-storage URL) is followed without Authorization. `extra` headers go to every hop.
        """
        url = self.url + path
        # GitLab EE's forward/ route 302s to the public index (after its firewall check).
        forward = "/packages/pypi/forward/" in path
        for _hop in range(MAX_REDIRECTS + 1):
            headers = {"Accept": "*/*", "Accept-Encoding": "identity", **extra}
            if authorization and self._same_origin(url):
                headers["Authorization"] = authorization
            elif forward and (self._public is None or not self._public.allows(url)):
                raise UpstreamUnavailable(f"{url_netloc(url)} is not in forwarding.allowed_hosts")
            response = await self._send(method, url, headers, kind="file")
            if response.status_code not in REDIRECTS or "location" not in response.headers:
                return response
            await response.aclose()
            url = urljoin(url, response.headers["location"])
            if urlsplit(url).scheme not in ("http", "https"):
                raise UpstreamUnavailable("GitLab redirected to a non-HTTP location")
        raise UpstreamUnavailable("GitLab redirected too many times")

    async def api(self, path: str, *, authorization: str | None, budget: float) -> Answer:
        """GET GitLab's REST API (a small JSON answer) within `budget` seconds in all.

        The REST API takes no Basic credentials: a Basic password goes as PRIVATE-TOKEN
        (a personal, project or group access token), or as JOB-TOKEN for the username
        gitlab-ci-token; a Bearer token goes as it is.
        """
        headers = {"Accept": "application/json", **_rest_credentials(authorization)}
        response = await self._send("GET", self.url + path, headers, kind="api", budget=budget)
        body = await self._read(response, MAX_PAGE_BYTES)
        return Answer(response.status_code, kept_headers(response.headers), body, self.url + path)

    @asynccontextmanager
    async def download(
        self, path: str, *, authorization: str | None, byte_range: str | None = None
    ) -> AsyncIterator[Download]:
        """Open a file download, following GitLab's redirect to object storage.

        Credentials go only to GitLab's own origin: a redirect elsewhere (a presigned
        object-storage URL) is followed without Authorization. An absolute URL is a file
        of the public index, fetched through it (never with credentials); a redirect of
        GitLab EE's forward/ route is followed only to the public index's allowed hosts.
        A 5xx or 429 raises UpstreamStatus; other statuses come back with a short body.
        `byte_range`: a Range header sent at every hop; a 206 comes back streamed like a 200.
        """
        async with self.ranged(
            path, byte_range=byte_range or "", authorization=authorization
        ) as download:
            yield download

    @asynccontextmanager
    async def ranged(
        self,
        path: str,
        *,
        byte_range: str,
        authorization: str | None,
        if_range: str | None = None,
    ) -> AsyncIterator[Download]:
        """Open a download of `byte_range` (a Range value, sent as it is; "" for the whole
        file) the way `download` opens one: a 206 (with its Content-Range in `headers`) or
        a 200 is streamed, any other status comes back with a short body."""
        extra = {"Range": byte_range} if byte_range else {}
        if byte_range and if_range:
            extra["If-Range"] = if_range
        if path.startswith(("https://", "http://")):
            if self._public is None:
                raise UpstreamUnavailable("no public index is configured")
            async with self._public.download(path, extra=extra) as download:
                yield download
            return
        response = await self._follow("GET", path, authorization=authorization, extra=extra)
        async with opened(response, self._read) as download:
            yield download

    async def head(self, path: str, *, authorization: str | None) -> Probe:
        """What a file is without downloading it: a HEAD through GitLab's redirect (object
        storage without credentials), else, when object storage refuses a HEAD (an URL
        presigned for GET) or gives no length, a GET of `bytes=0-0`.
        GitLab's own refusal (401, 404) comes back as it is; 5xx and 429 raise UpstreamStatus.
        """
        if not path.startswith(("https://", "http://")):
            response = await self._follow("HEAD", path, authorization=authorization, extra={})
            await response.aclose()
            raise_for_failure(response)
            length = response.headers.get("content-length", "")
            if response.status_code == 200 and length.isdigit():
                ranges = response.headers.get("accept-ranges", "").strip().lower() == "bytes"
                return Probe(200, kept_headers(response.headers), b"", int(length), ranges)
            if response.status_code >= 400 and self._same_origin(str(response.url)):
                return Probe(response.status_code, kept_headers(response.headers), b"", None, False)
        async with self.ranged(
            path, byte_range="bytes=0-0", authorization=authorization
        ) as download:
            total = download.headers.get("content-range", "").rpartition("/")[2]
            if download.status == 206 and total.isdigit():
                return Probe(200, download.headers, b"", int(total), True)
            if download.status == 200:
                return Probe(200, download.headers, b"", download.length, False)
            return Probe(download.status, download.headers, download.error_body, None, False)

    async def check(self, path: str, *, authorization: str | None) -> Answer:
        """HEAD a file without following its redirect: may this caller read it?"""
        headers = {"Authorization": authorization} if authorization else {}
        response = await self._send("HEAD", self.url + path, headers, kind="check")
        await response.aclose()
        raise_for_failure(response)
        return Answer(response.status_code, kept_headers(response.headers), b"", self.url + path)

    async def reachable(self) -> str:
        """'reachable' when GitLab answers HTTP at all within connect_timeout, else why not."""
        request = self._client.build_request("HEAD", self.url + "/", timeout=self._connect_timeout)
        try:
            response = await send_alone(self._transport, request)
        except httpx.HTTPError as exc:
            self._heard.failed(f"could not be reached ({type(exc).__name__})")
            return f"unreachable ({type(exc).__name__})"
        await response.aclose()
        self._heard.answered(response.status_code)
        return "reachable"

    async def upload(
        self, path: str, *, headers: Mapping[str, str], body: AsyncIterator[bytes]
    ) -> Answer:
        """POST an upload, streaming the client's body; GitLab's answer is read whole."""
        response = await self._send("POST", self.url + path, headers, content=body, kind="upload")
        answer = await self._read(response, 1024 * 1024)
        return Answer(
            response.status_code, kept_headers(response.headers), answer, str(response.url)
        )
