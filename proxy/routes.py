"""Starlette endpoints: GitLab's PyPI URL surface, matched on the raw (still encoded) path."""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Scope as ASGIScope

from proxy import codings
from proxy.access import Keeper
from proxy.downloads import Downloads
from proxy.errors import BadRequest, TooLarge, Unauthorized
from proxy.filereplies import Asked, Passed
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
from proxy.responses import none_match, pass_on, serve_file

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
        # The scope's scheme, not request.url: that builds a whole URL on every page hit.
        scheme, host = request.scope.get("scheme", "http"), headers.get("host", "")
        if self.trusted_proxies and request.client and self._trusted(request.client.host):
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


_NOT_MODIFIED = ("etag", "cache-control", "vary", "x-cache")
"""What a 304 repeats of its 200 (RFC 9110 15.4.5); no content-type, -encoding or -length."""


def _page_reply(request: Request, reply: Reply) -> Response:
    """A page, or a 304 when If-None-Match names its ETag (compared weakly, RFC 9110 13.1.2)."""
    etag = reply.headers.get("etag")
    if reply.status == 200 and etag and none_match(request.headers.get("if-none-match"), etag):
        headers = {**reply.headers, "x-cache": reply.cache}
        return Response(None, 304, headers={k: headers[k] for k in _NOT_MODIFIED if k in headers})
    return _reply(reply)


def _not_found(reason: str = "404 Not Found") -> Response:
    return JSONResponse({"message": reason}, 404)


RouteKind = Literal[
    "index", "page", "file", "upload", "health", "ready", "metrics", "status", "other"
]

_OWN: dict[str, RouteKind] = {
    "health": "health",
    "ready": "ready",
    "metrics": "metrics",
    "status.css": "status",
    "status.js": "status",
}


@dataclass(frozen=True, slots=True)
class Target:
    """What a request path names, parsed once from the raw (still encoded) path by
    `target()`: the endpoints dispatch on it and the metrics label it by `kind`."""

    kind: RouteKind
    scope: Scope | None = None
    """The project or group of a PyPI route (index, page, file, upload); else None."""
    name: str = ""
    """A page's project name, unquoted and not yet checked."""
    sha256: str = ""
    """A file's sha256 as the path gives it, not yet checked."""
    filename: str = ""
    """A file's name, unquoted and not yet checked."""


def raw_path(scope: ASGIScope) -> bytes:
    """The path as the client sent it: `%2F` in a project path is still `%2F` here."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    return raw.split(b"?", 1)[0]


def target(raw: bytes) -> Target:
    """The one parser of request paths (GitLab's PyPI surface and the proxy's own)."""
    path = re.sub(r"/{2,}", "/", raw.decode("latin-1"))
    if path == "/":
        return Target("status")
    if path.startswith("/-/"):
        return Target(_OWN.get(path[3:].strip("/"), "other"))
    match = _API.fullmatch(path)
    if match is None:
        return Target("other")
    scope = (
        Scope("projects", match["project"]) if match["project"] else Scope("groups", match["group"])
    )
    if not valid_scope_id(scope.id):
        return Target("other")
    parts = [p for p in (match["rest"] or "").split("/") if p]
    if not parts:
        return Target("upload", scope) if scope.kind == "projects" else Target("other")
    if parts[0] == "simple" and len(parts) == 1:
        return Target("index", scope)
    if parts[0] == "simple" and len(parts) == 2:
        return Target("page", scope, name=unquote(parts[1]))
    if parts[0] == "files" and len(parts) == 3:
        return Target("file", scope, sha256=parts[1], filename=unquote(parts[2]))
    return Target("other")


async def pypi(request: Request) -> Response:
    """Every route under .../packages/pypi, dispatched on the raw path."""
    wanted = target(raw_path(request.scope))
    scope, method = wanted.scope, request.method
    if scope is None:
        return _not_found()
    if wanted.kind == "upload":
        if method in ("POST", "PUT"):
            return await upload(request, scope)
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
    if wanted.kind in ("index", "page"):
        name = wanted.name if wanted.kind == "page" else None
        if name is not None and not valid_project_name(name):
            return _not_found("404 Package Not Found")
        reply = await mirror.page(
            caller,
            normalize(name) if name is not None else None,
            accept=request.headers.get("accept", "text/html"),
            base_url=site.base_url(request),
            coding=codings.choose(request.headers.get("accept-encoding")),
        )
        return _page_reply(request, reply)
    sha256, filename = wanted.sha256, wanted.filename
    if not valid_sha256(sha256) or not valid_filename(filename):
        return _not_found("404 Package Not Found")
    downloads: Downloads = request.state.downloads
    headers = request.headers
    asked = Asked(
        head=method == "HEAD",
        range=headers.get("range", ""),
        if_range=headers.get("if-range", ""),
    )
    answer = await downloads.file(caller, sha256, filename, asked)
    if isinstance(answer, Reply):
        return _reply(answer)
    if isinstance(answer, Passed):
        return pass_on(request, answer)
    etag = answer.sha256 or sha256.lower()  # core metadata: its own sha256
    return serve_file(request, answer, filename, etag, public=keeper.shareable(caller))


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
    """Readiness: 200 when the cache is writable; says whether GitLab answers and how the
    replicas coordinate ("redis", "local", "local (redis unreachable)": still ready)."""
    can_serve, parts = await _mirror(request).readiness()
    parts["coordination"] = request.state.coordinator.state
    return JSONResponse({"ready": can_serve, **parts}, 200 if can_serve else 503)


async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this process's metrics."""
    registry: Metrics = request.state.metrics
    body = await to_thread.run_sync(registry.render)
    return Response(body, headers={"content-type": METRICS_TYPE})


def routes() -> list[BaseRoute]:
    """The proxy's routes; everything not listed is a 404 that never reaches GitLab."""
    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    return [
        Route("/-/health", health, methods=["GET", "HEAD"]),
        Route("/-/ready", ready, methods=["GET", "HEAD"]),
        Route("/-/metrics", metrics, methods=["GET"]),
        Route("/api/v4/{rest:path}", pypi, methods=methods),
    ]
