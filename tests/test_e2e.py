"""End to end: real twine, pip and uv through a real proxy process in front of the fake GitLab."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients import (
    ProxyProcess,
    installed_version,
    new_venv,
    pip_install,
    twine_upload,
    uv_install,
)
from tests.distfactory import make_sdist, make_wheel
from tests.fakegitlab import FakeGitLab
from tests.scenario import DEV, SERVICE, Start, acme, publish, serve

pytestmark = pytest.mark.e2e


def _project(proxy: ProxyProcess, pid: int | str = 42) -> str:
    return f"{proxy.url}/api/v4/projects/{pid}/packages/pypi"


def test_twine_uploads_and_pip_installs_through_the_proxy(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """twine uploads wheels and an sdist; pip installs them; a new upload shows up at once."""
    acme(gitlab)
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    files = []
    for make in (make_wheel, make_sdist):
        filename, content = make("demo-pkg", "1.0")
        (tmp_path / filename).write_bytes(content)
        files.append(tmp_path / filename)
    uploaded = twine_upload(_project(proxy), files, username="dev", password=DEV)
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    assert sorted(f.filename for f in gitlab.files(42)) == sorted(f.name for f in files)
    python = new_venv(tmp_path / "venv")
    result = pip_install(python, _project(proxy) + "/simple", "demo-pkg")
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed_version(python, "demo_pkg") == "1.0"
    filename, content = make_wheel("demo-pkg", "2.0")
    (tmp_path / filename).write_bytes(content)
    uploaded = twine_upload(_project(proxy), [tmp_path / filename], username="dev", password=DEV)
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    result = pip_install(python, _project(proxy) + "/simple", "--upgrade", "demo-pkg")
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed_version(python, "demo_pkg") == "2.0"


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_installs_from_the_group_url(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, installer: str
) -> None:
    """pip and uv install a package of a subgroup's project through the group-level URL."""
    acme(gitlab)
    publish(gitlab, 43, "lib-pkg", "3.1")
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    python = new_venv(tmp_path / "venv")
    index = f"{proxy.url}/api/v4/groups/7/-/packages/pypi/simple"
    if installer == "uv":
        result = uv_install(python, index, "lib-pkg", cache=tmp_path / "uv-cache")
    else:
        result = pip_install(python, index, "lib-pkg")
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed_version(python, "lib_pkg") == "3.1"
    # One download of the file; uv's HEAD and metadata ranges go to GitLab as they are.
    files = [r for r in gitlab.requests if r.method == "GET" and "/files/" in r.path]
    assert len([r for r in files if "range" not in r.headers]) == 1


def test_second_install_fetches_nothing_from_gitlab(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """A second install in a fresh venv, by pip and by uv, is served from the proxy's cache."""
    acme(gitlab)
    publish(gitlab, 42, "demo-pkg", "1.0")
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    index = _project(proxy) + "/simple"
    first = pip_install(new_venv(tmp_path / "one"), index, "demo-pkg")
    assert first.returncode == 0, first.stdout + first.stderr
    assert gitlab.counts["file"] == 1
    gitlab.reset_counts()
    python = new_venv(tmp_path / "two")
    second = pip_install(python, index, "demo-pkg")
    assert second.returncode == 0, second.stdout + second.stderr
    third = uv_install(new_venv(tmp_path / "three"), index, "demo-pkg", cache=tmp_path / "uvc")
    assert third.returncode == 0, third.stdout + third.stderr
    assert gitlab.counts["file"] == 0
    assert gitlab.counts["page"] == 0


def test_path_style_project_id(gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path) -> None:
    """A URL-encoded full path (acme%2Ftools) works as the project id, forwarded still encoded."""
    acme(gitlab)
    publish(gitlab, 42, "demo-pkg", "1.0")
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    python = new_venv(tmp_path / "venv")
    result = pip_install(python, _project(proxy, "acme%2Ftools") + "/simple", "demo-pkg")
    assert result.returncode == 0, result.stdout + result.stderr
    assert any("/projects/acme%2Ftools/" in r.path for r in gitlab.requests)


def test_wrong_bytes_are_not_cached_and_the_client_fails(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """A file that does not match its sha256 fails the install and is fetched again next time."""
    acme(gitlab)
    publish(gitlab, 42, "demo-pkg", "1.0")
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    python = new_venv(tmp_path / "venv")
    gitlab.corrupt_files = True
    failed = pip_install(python, _project(proxy) + "/simple", "demo-pkg")
    assert failed.returncode != 0
    gitlab.corrupt_files = False
    fetched = gitlab.counts["file"]  # pip may have retried: each retry was a new fetch
    result = pip_install(python, _project(proxy) + "/simple", "demo-pkg")
    assert result.returncode == 0, result.stdout + result.stderr
    assert gitlab.counts["file"] == fetched + 1


def test_object_storage_never_sees_credentials(start_proxy: Start, tmp_path: Path) -> None:
    """Behind a relative URL root with object-storage redirects, no Authorization leaves GitLab."""
    with FakeGitLab(relative_root="/gitlab", redirect_downloads=True) as gitlab:
        acme(gitlab)
        publish(gitlab, 42, "demo-pkg", "1.0")
        proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
        python = new_venv(tmp_path / "venv")
        result = pip_install(python, _project(proxy) + "/simple", "demo-pkg")
        assert result.returncode == 0, result.stdout + result.stderr
        assert gitlab.counts["object"] == 1
        assert gitlab.object_auth_violations == 0
