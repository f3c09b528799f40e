"""Starlette endpoints: GitLab's PyPI URL surface, matched on the raw (still encoded) path."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Send

from proxy.access import Gate
from proxy.downloads import Downloads, FileReply
from proxy.errors import BadRequest, ProxyError, TooLarge, Unauthorized
from proxy.fills import Body
from proxy.metrics import CONTENT_TYPE as METRICS_TYPE
from proxy.metrics import Metrics
from proxy.mirror import Mirror
from proxy.models import (
    Reply,
    Scope,
    normalize,
    valid_filename,
    valid_project_name,
    valid_scope_id,
    valid_sha256,
)

log = logging.getLogger("proxy.routes")
_API = re.compile(
    r"^/api/v4/(?:projects/(?P<project>[^/]+)|groups/(?P<group>[^/]+)/-)/packages/pypi(?P<rest>/.*)?$"
)
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")
_RANGE = re.compile(r"^bytes=(?:(\d+)-(\d*)|-(\d+))$")
IMMUTABLE = "public, max-age=31536000, immutable"
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


@dataclass(frozen=True, slots=True)
class Site:
    """What the endpoints need to know about where the proxy is reached."""

    public_url: str = ""
    trusted_proxies: frozenset[str] = frozenset()
    max_upload_size: int = 5 * 1024**3

    def base_url(self, request: Request) -> str:
        """The base URL clients use to reach the proxy, for rewritten links."""
        if self.public_url:
            return self.public_url
        headers = request.headers
        scheme, host = request.url.scheme, headers.get("host", "")
        if request.client is not None and request.client.host in self.trusted_proxies:
            scheme = headers.get("x-forwarded-proto", scheme).split(",")[0].strip()
            host = headers.get("x-forwarded-host", host).split(",")[0].strip()
        if scheme not in ("http", "https") or not _HOST.fullmatch(host):
            raise BadRequest("the Host header is not a host name")
        return f"{scheme}://{host}"


def _mirror(request: Request) -> Mirror:
    mirror: Mirror = request.state.mirror
    return mirror


def _reply(reply: Reply) -> Response:
    return Response(reply.body, reply.status, headers={**reply.headers, "x-cache": reply.cache})


def _not_found(reason: str = "404 Not Found") -> Response:
    return JSONResponse({"message": reason}, 404)


async def pypi(request: Request) -> Response:
    """Every route under .../packages/pypi, dispatched on the raw path."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    path = re.sub(r"/{2,}", "/", raw.split(b"?", 1)[0].decode("latin-1"))
    match = _API.fullmatch(path)
    if match is None:
        return _not_found()
    scope = (
        Scope("projects", match["project"]) if match["project"] else Scope("groups", match["group"])
    )
    if not valid_scope_id(scope.id):
        return _not_found()
    kind = scope.kind
    parts = [p for p in (match["rest"] or "").split("/") if p]
    method = request.method
    if not parts:
        if kind == "projects" and method in ("POST", "PUT"):
            return await upload(request, scope)
        return _not_found()
    is_page = parts[0] == "simple" and len(parts) <= 2
    is_file = parts[0] == "files" and len(parts) == 3
    if not (is_page or is_file):
        return _not_found()
    if method not in ("GET", "HEAD"):
        return PlainTextResponse("405 Method Not Allowed", 405, headers={"allow": "GET, HEAD"})
    site: Site = request.state.site
    mirror = _mirror(request)
    authorization = request.headers.get("authorization")
    gate: Gate = request.state.gate
    if not gate.admits(authorization):
        raise Unauthorized("this proxy needs a proxy token (Basic password or Bearer)")
    if is_page:
        name = unquote(parts[1]) if len(parts) == 2 else None
        if name is not None and not valid_project_name(name):
            return _not_found("404 Package Not Found")
        return _reply(
            await mirror.page(
                scope,
                normalize(name) if name is not None else None,
                accept=request.headers.get("accept", "text/html"),
                authorization=authorization,
                base_url=site.base_url(request),
            )
        )
    sha256, filename = parts[1], unquote(parts[2])
    if not valid_sha256(sha256) or not valid_filename(filename):
        return _not_found("404 Package Not Found")
    downloads: Downloads = request.state.downloads
    answer = await downloads.file(scope, sha256, filename, authorization=authorization)
    if isinstance(answer, Reply):
        return _reply(answer)
    return serve_file(request, answer, filename, sha256.lower())


def serve_file(request: Request, reply: FileReply, filename: str, sha256: str) -> Response:
    """Headers of design 3.2, HEAD, conditional GET and single byte ranges."""
    etag = f'"{sha256}"'
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    headers = {
        "content-type": _TYPES.get(suffix, "application/octet-stream"),
        "etag": etag,
        "cache-control": IMMUTABLE,
        "x-cache": reply.cache,
    }
    size = reply.size
    if size is not None:
        headers["accept-ranges"] = "bytes"
        headers["content-length"] = str(size)
    if etag in request.headers.get("if-none-match", ""):
        reply.release()
        return Response(
            None, 304, headers={k: v for k, v in headers.items() if k != "content-length"}
        )
    start, end, status = 0, size, 200
    wanted = request.headers.get("range")
    if wanted and size is not None and request.headers.get("if-range", etag) == etag:
        parsed = _byte_range(wanted, size)
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
    return AbortableStream(reply.chunks(start, end), counter.inc, status, headers=headers)


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
            except ProxyError as exc:
                log.warning("aborted a download mid-body: %s", exc)
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self._body.aclose()


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """[start, end) of one `bytes=` range; None if unsatisfiable; all of it if unparsable."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return (0, size)  # several ranges or another unit: RFC 9110 lets us send it all
    first, last, suffix = match.groups()
    if suffix is not None:
        length = int(suffix)
        return (max(0, size - length), size) if length > 0 and size > 0 else None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        return None
    return (start, end)


async def upload(request: Request, scope: Scope) -> Response:
    """Stream a twine upload to GitLab (always as POST) with the client's own credentials."""
    site: Site = request.state.site
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > site.max_upload_size):
        raise TooLarge(f"uploads are limited to {site.max_upload_size} bytes")
    headers = {"content-type": request.headers.get("content-type", "application/octet-stream")}
    if length is not None:
        headers["content-length"] = length
    if "authorization" in request.headers:
        headers["authorization"] = request.headers["authorization"]

    async def body() -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > site.max_upload_size:
                raise TooLarge(f"uploads are limited to {site.max_upload_size} bytes")
            yield chunk

    return _reply(await _mirror(request).upload(scope, headers=headers, body=body()))


async def health(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """Readiness: 200 when the cache is writable; says whether GitLab answers."""
    can_serve, parts = await _mirror(request).readiness()
    return JSONResponse({"ready": can_serve, **parts}, 200 if can_serve else 503)


async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this process's metrics."""
    registry: Metrics = request.state.metrics
    body = await to_thread.run_sync(registry.render)
    return Response(body, headers={"content-type": METRICS_TYPE})


def route_kind(path: str) -> str:
    """A small fixed label for a request path (metrics never carry the path itself)."""
    if path.startswith("/-/"):
        return (
            path[3:].strip("/")
            if path[3:].strip("/") in ("health", "ready", "metrics")
            else "other"
        )
    match = _API.fullmatch(re.sub(r"/{2,}", "/", path))
    if match is None:
        return "other"
    parts = [p for p in (match["rest"] or "").split("/") if p]
    if not parts:
        return "upload"
    return {"simple": "index" if len(parts) == 1 else "page", "files": "file"}.get(
        parts[0], "other"
    )


def routes() -> list[BaseRoute]:
    """The proxy's routes; everything not listed is a 404 that never reaches GitLab."""
    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    return [
        Route("/-/health", health, methods=["GET", "HEAD"]),
        Route("/-/ready", ready, methods=["GET", "HEAD"]),
        Route("/-/metrics", metrics, methods=["GET"]),
        Route("/api/v4/{rest:path}", pypi, methods=methods),
    ]
