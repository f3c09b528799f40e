"""The proxy in process for tests of the HTTP surface: GitLab mocked at its edge with respx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

import httpx
import respx
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.app import create_app
from proxy.config import load

GITLAB = "https://git.example.com/gitlab"
PROXY = "http://proxy.test"
PACKAGE_API = r".*/api/v4/(?:projects|groups)/.+/packages(?:/[0-9]+/package_files)?$"
"""GitLab's package REST API paths (the proxy asks them for upload times)."""


def no_package_api(router: respx.MockRouter) -> respx.Route:
    """Route GitLab's package API to a 404 (no upload times), as routes["package_api"];
    a test may mock that route with its own answers."""
    route: respx.Route = router.get(path__regex=PACKAGE_API, name="package_api")
    return route.respond(404, json={"message": "404 Not Found"})


def gitlab_page(title: str, anchors: str) -> bytes:
    """GitLab's simple-page template byte for byte (gitlab-pypi-api.md 2.2): links on one line."""
    return (
        "<!DOCTYPE html>\n"
        "        <html>\n"
        "          <head>\n"
        f"            <title>Links for {title}</title>\n"
        "          </head>\n"
        "          <body>\n"
        f"            <h1>Links for {title}</h1>\n"
        f"            {anchors}\n"
        "          </body>\n"
        "        </html>\n"
    ).encode()


class BrokenBody(Exception):
    """The proxy ended a response without its final body message: a server breaks the line."""

    def __init__(self, headers: httpx.Headers, received: bytes) -> None:
        super().__init__(f"the response ended after {len(received)} bytes without finishing")
        self.headers = headers
        self.received = received


def finishing(app: ASGIApp) -> ASGIApp:
    """`app`, raising BrokenBody when it returns from a started response it did not finish."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        head: list[tuple[bytes, bytes]] | None = None
        finished = False
        received = bytearray()

        async def watching(message: Message) -> None:
            nonlocal head, finished
            if message["type"] == "http.response.start":
                head = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                received.extend(message.get("body", b""))
                finished = not message.get("more_body", False)
            await send(message)

        await app(scope, receive, watching)
        if head is not None and not finished:
            raise BrokenBody(httpx.Headers(head), bytes(received))

    return guarded


def edge(router: respx.MockRouter) -> httpx.MockTransport:
    """The app's HTTP transport: each request answered by `router` with a fresh response.

    Handing it to create_app spares each app loading a CA bundle it would never use.
    """

    async def answer(request: httpx.Request) -> httpx.Response:
        response = await router.async_handler(request)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(response.content),
        )

    return httpx.MockTransport(answer)


class Serve(Protocol):
    """Starts the proxy in process with extra settings and gives a client for it."""

    def __call__(
        self, overrides: Mapping[str, object] = ..., *, token: str = ...
    ) -> AbstractAsyncContextManager[httpx.AsyncClient]: ...


def in_process(tmp_path: Path, gitlab_api: respx.MockRouter) -> Serve:
    """A factory of in-process proxies in front of GITLAB, caching in tmp_path."""

    @asynccontextmanager
    async def start(
        overrides: Mapping[str, object] = {}, *, token: str = ""
    ) -> AsyncIterator[httpx.AsyncClient]:
        settings = load(
            env={"GITLAB_PYPI_PROXY_TOKEN": token} if token else {},
            overrides={"upstream.url": GITLAB, "cache.dir": str(tmp_path / "cache"), **overrides},
        )
        app = create_app(settings, transport=edge(gitlab_api))
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=finishing(manager.app)), base_url=PROXY
            ) as client,
        ):
            yield client

    return start


async def call_raw(
    app: ASGIApp,
    raw_path: bytes,
    send: Callable[[Message], Awaitable[None]],
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """A GET of `raw_path` as is (curl --path-as-is; httpx would normalize), its messages
    given to `send` as the app sends them."""
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if requested:
            await asyncio.Event().wait()  # the client stays until the response is over
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"proxy.test"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("proxy.test", 80),
    }
    await app(scope, receive, send)


def memory_hits(metrics: str) -> float:
    """gitlab_pypi_proxy_file_memory_hits_total from a /-/metrics page."""
    line = next(
        x for x in metrics.splitlines() if x.startswith("gitlab_pypi_proxy_file_memory_hits")
    )
    return float(line.split()[-1])
