"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.clients import ProxyProcess, clean_env
from tests.fakegitlab import FakeGitLab


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
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Start `gitlab-pypi-proxy serve` processes; all are stopped at the end of the test."""
    started: list[ProxyProcess] = []

    def start(
        *args: str, token: str | None = None, file_size_limit: int | None = None, **env: str
    ) -> ProxyProcess:
        extra = {"GITLAB_PYPI_PROXY_TOKEN": token} if token else {}
        proxy = ProxyProcess(list(args), clean_env(**extra, **env))
        proxy.file_size_limit = file_size_limit
        proxy.log = tmp_path / f"proxy-{len(started)}.log"
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()
