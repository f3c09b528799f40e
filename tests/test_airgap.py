"""The air-gap round trip, each step a real CLI run: warm online, export, import, serve offline."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.cache import Store
from proxy.grants import Grants
from tests.clients import clean_env, installed_version, new_venv, pip_install, run, uv_install
from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab
from tests.fakeindex import JSON_TYPE, FakeIndex
from tests.scenario import SERVICE, Start, acme, serve

pytestmark = pytest.mark.e2e

PLATFORMS = ("manylinux_2_17_x86_64", "macosx_11_0_arm64")
HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"
PYTHONS = tuple(sorted({HERE, "3.11", "3.12"}))  # the running one installs offline
GROUP = "/api/v4/groups/7/-/packages/pypi/simple"


@pytest.fixture
def index() -> Iterator[FakeIndex]:
    """The public index with pub-lib 1.0 as platform wheels for PLATFORMS x PYTHONS."""
    with FakeIndex() as fake:
        for platform in PLATFORMS:
            for python in PYTHONS:
                cp = "cp" + python.replace(".", "")
                fake.add("pub-lib", "1.0", tag=f"{cp}-{cp}-{platform}")
        yield fake


@pytest.fixture
def forwarding_gitlab(index: FakeIndex) -> Iterator[FakeGitLab]:
    """GitLab holding app-pkg (pure, needing pub-lib) in acme/tools, forwarding unknown
    names to `index`."""
    with FakeGitLab(forwarding_url=f"{index.url}/simple/") as gitlab:
        acme(gitlab)
        filename, content = make_wheel("app-pkg", "1.0", requires=("pub-lib",))
        gitlab.add_file(42, "app-pkg", "1.0", filename, content)
        yield gitlab


def _cli(*args: str, **env: str) -> str:
    """Run `gitlab-pypi-proxy ARGS` as its own process; its output (it must succeed)."""
    result = run([sys.executable, "-m", "proxy", *args], env=clean_env(**env))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _requests(gitlab: FakeGitLab, index: FakeIndex) -> tuple[int, int]:
    return len(gitlab.requests), len(index.paths)


def _install(installer: str, url: str, venv: Path) -> None:
    """Install app-pkg from `url` with pip or uv into a fresh venv; pub-lib comes along."""
    python = new_venv(venv)
    if installer == "uv":
        result = uv_install(python, url, "app-pkg", cache=venv.with_name(f"{venv.name}-cache"))
    else:
        result = pip_install(python, url, "app-pkg")
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed_version(python, "pub_lib") == "1.0"


def _metadata_served(url: str) -> int:
    """How many pub-lib wheels the page advertises core metadata for, each served and
    hashing to what the page says."""
    page = httpx.get(f"{url}/pub-lib/", headers={"accept": JSON_TYPE})
    assert page.status_code == 200, page.text
    served = 0
    for entry in page.json()["files"]:
        metadata = entry.get("core-metadata")
        if metadata:
            response = httpx.get(entry["url"].partition("#")[0] + ".metadata")
            assert response.status_code == 200, response.text
            assert hashlib.sha256(response.content).hexdigest() == metadata["sha256"]
            served += 1
    return served


def test_a_warmed_export_installs_offline_with_pip_and_uv_and_asks_no_upstream(
    forwarding_gitlab: FakeGitLab, index: FakeIndex, start_proxy: Start, tmp_path: Path
) -> None:
    """Warmed for two platforms and two Pythons through GitLab's forwarding, exported and
    imported into an empty cache: `serve --offline` installs app-pkg and its public
    dependency with pip and with uv (core metadata included), and neither GitLab nor the
    public index hears of it; nor once they are stopped."""
    allowed = {"GITLAB_PYPI_PROXY_FORWARDING_ALLOWED_HOSTS": index.host}
    targets = [f"--platform={p}" for p in PLATFORMS] + [f"--python-version={v}" for v in PYTHONS]
    warmed = _cli(
        "warm",
        "--upstream",
        forwarding_gitlab.url,
        "--cache-dir",
        str(tmp_path / "online"),
        "--index",
        "groups/7",
        "app-pkg",
        *targets,
        GITLAB_PYPI_PROXY_TOKEN=SERVICE,
        **allowed,
    )
    assert f"pinned {1 + len(PLATFORMS) * len(PYTHONS)} files" in warmed
    assert any(path.endswith(".whl.metadata") for path in index.paths)  # pip used PEP 658
    held = Store(tmp_path / "online", max_size=10**9)
    grants = Grants(held.access)
    metadata = [sha for file in held.iter_files() for sha in grants.core_metadata(file.sha256)]
    assert len(metadata) == len(PLATFORMS) * len(PYTHONS)
    assert all(held.is_pinned(sha) for sha in metadata)  # kept with their wheels
    held.close()
    bundle = tmp_path / "bundle.tar"
    online = ("--cache-dir", str(tmp_path / "online"))
    _cli("export", str(bundle), "--pinned", "--index", "groups/7", *online)
    before = _requests(forwarding_gitlab, index)
    _cli("import", str(bundle), "--cache-dir", str(tmp_path / "laptop"))
    proxy = serve(start_proxy, forwarding_gitlab, tmp_path / "laptop", "--offline", **allowed)
    url = proxy.url + GROUP
    assert _metadata_served(url) == len(PLATFORMS) * len(PYTHONS)
    for installer in ("pip", "uv"):
        _install(installer, url, tmp_path / installer)
    assert _requests(forwarding_gitlab, index) == before
    forwarding_gitlab.stop()
    index.stop()
    _install("pip", url, tmp_path / "stopped")


# A corrupted bundle (a flipped byte, a missing file, a manifest lying about a size) is
# refused with the cache unchanged: tests/test_bundles.py,
# test_a_bad_bundle_is_refused_with_its_bad_entry_and_the_cache_is_unchanged.
