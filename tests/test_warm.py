"""warm: real pip through warm's own proxy fills and pins the cache; an offline proxy serves it."""

from __future__ import annotations

import hashlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy import warming
from proxy.cache import Store
from proxy.errors import ConfigError
from proxy.models import Scope
from tests.clients import clean_env, new_venv, pip_install, run
from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab
from tests.scenario import SERVICE, Start, acme, serve

pytestmark = pytest.mark.e2e

PLATFORMS = ("manylinux_2_17_x86_64", "macosx_11_0_arm64")
PYTHONS = ("3.11", "3.12")
HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    """The fake GitLab with acme; an unknown name is GitLab's 404 (no forwarding to pypi.org,
    which this machine cannot reach)."""
    with FakeGitLab(forwarding_url=None) as fake:
        acme(fake)
        yield fake


def _publish(gitlab: FakeGitLab) -> dict[str, str]:
    """app-pkg (pure) depends on native-lib, built for PLATFORMS x PYTHONS; filename -> sha256."""
    published = {}
    wheels = [make_wheel("app-pkg", "1.0", requires=("native-lib",))]
    for platform in PLATFORMS:
        for python in PYTHONS:
            cp = "cp" + python.replace(".", "")
            wheels.append(make_wheel("native-lib", "2.0", tag=f"{cp}-{cp}-{platform}"))
    for filename, content in wheels:
        name = filename.split("-")[0].replace("_", "-")
        published[filename] = gitlab.add_file(42, name, filename.split("-")[1], filename, content)
    return published


def _warm(gitlab: FakeGitLab, cache: Path, *args: str) -> tuple[int, str]:
    """Run `gitlab-pypi-proxy warm` as its own process; its exit status and stderr."""
    command = [sys.executable, "-m", "proxy", "warm", "--upstream", gitlab.url]
    command += ["--cache-dir", str(cache), "--index", "projects/42", *args]
    result = run(command, env=clean_env(GITLAB_PYPI_PROXY_TOKEN=SERVICE))
    return result.returncode, result.stdout + result.stderr


def _targets() -> list[str]:
    options = [f"--platform={p}" for p in PLATFORMS]
    return options + [f"--python-version={v}" for v in PYTHONS]


def _pinned(cache: Path, shas: list[str]) -> list[bool]:
    store = Store(cache, max_size=10**9)
    try:
        return [store.is_pinned(sha) for sha in shas]
    finally:
        store.close()


def test_warm_pins_every_file_pip_picked_for_each_target(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """Warming for two platforms and two Pythons pins the pure wheel and all four builds."""
    published = _publish(gitlab)
    status, output = _warm(gitlab, tmp_path / "cache", "app-pkg", *_targets())
    assert status == 0, output
    assert "warm: cp312 macosx_11_0_arm64: 2 files" in output
    assert "pinned 5 files" in output
    assert _pinned(tmp_path / "cache", list(published.values())) == [True] * 5


def test_an_offline_proxy_installs_what_warm_pinned(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """After warm, a proxy with --offline on the same cache installs with pip, GitLab stopped."""
    _publish(gitlab)
    status, output = _warm(gitlab, tmp_path / "cache", "app-pkg", *_targets())
    assert status == 0, output
    gitlab.stop()
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", "--offline")
    index = f"{proxy.url}/api/v4/projects/42/packages/pypi/simple"
    python = new_venv(tmp_path / "venv")
    result = pip_install(python, index, "app-pkg")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "native-lib-2.0" in result.stdout
