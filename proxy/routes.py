"""Starlette endpoints: GitLab's PyPI URL surface, matched on the raw (still encoded) path."""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from proxy.access import Keeper
from proxy.downloads import Downloads
from proxy.errors import BadRequest, TooLarge, Unauthorized
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
from proxy.responses import serve_file

log = logging.getLogger("proxy.routes")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_API = re.compile(
    r"^/api/v4/(?:projects/(?P<project>[^/]+)|groups/(?P<group>[^/]+)/-)/packages/pypi(?P<rest>/.*)?$"
)
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")


@dataclass(frozen=True, slots=True)
class Site:
    """What the endpoints need to know about where the proxy is reached."""

    public_url: str = ""
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_upload_size: int = 5 * 1024**3

    def base_url(self, request: Request) -> str:
        """The base URL clients use to reach the proxy, for rewritten links."""
        if self.public_url:
            return self.public_url
        headers = request.headers
        scheme, host = request.url.scheme, headers.get("host", "")
        if request.client is not None and self._trusted(request.client.host):
            scheme = headers.get("x-forwarded-proto", scheme).split(",")[0].strip()
            host = headers.get("x-forwarded-host", host).split(",")[0].strip()
        if scheme not in ("http", "https") or not _HOST.fullmatch(host):
            raise BadRequest("the Host header is not a host name")
        return f"{scheme}://{host}"

    def _trusted(self, client: str) -> bool:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)


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
    keeper: Keeper = request.state.keeper
    if not keeper.gate.admits(authorization):
        raise Unauthorized("this proxy needs a proxy token (Basic password or Bearer)")
    caller = keeper.caller(scope, authorization)
    if is_page:
        name = unquote(parts[1]) if len(parts) == 2 else None
        if name is not None and not valid_project_name(name):
            return _not_found("404 Package Not Found")
        return _reply(
            await mirror.page(
                caller,
                normalize(name) if name is not None else None,
                accept=request.headers.get("accept", "text/html"),
                base_url=site.base_url(request),
            )
        )
    sha256, filename = parts[1], unquote(parts[2])
    if not valid_sha256(sha256) or not valid_filename(filename):
        return _not_found("404 Package Not Found")
    downloads: Downloads = request.state.downloads
    answer = await downloads.file(caller, sha256, filename)
    if isinstance(answer, Reply):
        return _reply(answer)
    return serve_file(request, answer, filename, sha256.lower())


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
