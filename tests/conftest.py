"""Shared fixtures."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import respx
import respx.mocks

from proxy.wire import Wire
from tests.clients import proxies
from tests.fakegitlab import FakeGitLab
from tests.inproc import Serve, in_process, no_package_api
from tests.scenario import Start
from tests.services import RedisServer


class WireMocker(respx.mocks.HTTPCoreMocker):
    """respx's default mocker (httpcore's transports) that also mocks proxy.wire.Wire, the
    upstream clients' transport when none is injected: `@respx.mock` keeps mocking GitLab."""

    name = "httpcore+wire"
    targets: ClassVar[list[str]] = [*respx.mocks.HTTPCoreMocker.targets, "proxy.wire.Wire"]

    @classmethod
    def to_httpx_request(cls, **kwargs: Any) -> httpx.Request:
        request = kwargs["request"]
        if isinstance(request, httpx.Request):
            return request
        return super().to_httpx_request(**kwargs)  # type: ignore[no-any-return]

    @classmethod
    async def from_async_httpx_response(
        cls, httpx_response: httpx.Response, target: object, **kwargs: Any
    ) -> object:
        if isinstance(target, Wire):  # a fresh response, as a transport gives one
            return httpx.Response(
                httpx_response.status_code,
                headers=httpx_response.headers.raw,
                stream=httpx_response.stream,
                extensions=httpx_response.extensions,
            )
        return await super().from_async_httpx_response(httpx_response, target, **kwargs)


respx.mocks.DEFAULT_MOCKER = WireMocker.name


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """`serve` (run in process by CLI tests) configures the root logger; put it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, the loop uvicorn uses."""
    return "asyncio"


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    """A running fake GitLab with its object storage, on loopback."""
    with FakeGitLab() as fake:
        yield fake


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Start]:
    """Start `gitlab-pypi-proxy serve` processes; all are stopped at the end of the test."""
    with proxies(tmp_path) as start:
        yield start


@pytest.fixture
def gitlab_api() -> Iterator[respx.MockRouter]:
    """GitLab's HTTP edge, mocked; a request that no route expects fails the test. The
    package API (upload times) answers 404 unless a test mocks routes["package_api"]."""
    with respx.mock(assert_all_called=False) as router:
        no_package_api(router)
        yield router


@pytest.fixture
def serve(tmp_path: Path, gitlab_api: respx.MockRouter) -> Serve:
    """A factory of in-process proxies in front of GITLAB, caching in tmp_path."""
    return in_process(tmp_path, gitlab_api)


@pytest.fixture
async def client(serve: Serve) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a proxy with default settings and no service token."""
    async with serve() as started:
        yield started


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on loopback (skipped without one, failed under CI=true)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
