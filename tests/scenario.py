"""The GitLab the end-to-end tests start from: groups, projects, users and their tokens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.clients import ProxyProcess
from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab

Start = Callable[..., ProxyProcess]
"""The start_proxy fixture: starts `gitlab-pypi-proxy serve` with these flags."""

SERVICE = "svc-token-0123456789"
"""The proxy's own read token (user bot, reporter in acme)."""
DEV = "dev-token-0123456789"
"""A developer's token (user dev, developer in acme)."""


def acme(gitlab: FakeGitLab) -> None:
    """Groups acme (7) and acme/sub (8); private projects acme/tools (42), acme/sub/lib (43)."""
    gitlab.add_group(7, "acme", name="Acme")
    gitlab.add_group(8, "sub", name="Sub", parent=7)
    gitlab.add_project(42, "tools", name="Tools", group=7)
    gitlab.add_project(43, "lib", name="Lib", group=8)
    for user, token, role in (("bot", SERVICE, "reporter"), ("dev", DEV, "developer")):
        gitlab.add_user(user)
        gitlab.add_token(token, user=user)
        gitlab.add_member(user, group=7, role=role)


def publish(gitlab: FakeGitLab, pid: int, name: str, version: str) -> tuple[str, str]:
    """Put a real wheel into project `pid`; returns its (filename, sha256)."""
    filename, content = make_wheel(name, version)
    return filename, gitlab.add_file(pid, name, version, filename, content)


def serve(
    start: Start, gitlab: FakeGitLab, cache: Path, *args: str, **options: object
) -> ProxyProcess:
    """A proxy in front of `gitlab` caching in `cache`; keyword options go to start_proxy
    (token=..., file_size_limit=..., nofile_limit=..., or environment variables)."""
    return start("--upstream", gitlab.url, "--cache-dir", str(cache), *args, **options)
