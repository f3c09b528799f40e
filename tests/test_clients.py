"""Every client end to end: pip (today's and the oldest for Python 3.11), uv, poetry, pdm,
twine, uv publish and poetry publish through a real proxy, each isolated from this machine."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clients import (
    ProxyProcess,
    installed_version,
    isolated_env,
    new_venv,
    pip_install,
    run,
    tool,
    twine_upload,
    uv,
    uv_install,
)
from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab
from tests.fakeindex import FakeIndex
from tests.scenario import DEV, SERVICE, Start, acme, serve

pytestmark = pytest.mark.e2e

OLD_PIP = "22.2.1"
"""The first pip whose metadata declares Python 3.11 (22.2 does not): PEP 691 JSON pages,
no PEP 658 core metadata."""
OLD_PIP_WHEELS = Path(sys.prefix) / "old-pip"
"""Where the README's test command puts the old pip's wheel (the tests reach only loopback)."""
# Versions that exist nowhere but in the fake GitLab and the fake public index: installing
# them proves the client went through the proxy.
APP, LIB, DEP, NATIVE = "4.5.6", "7.3.1", "0.0.77", "2.0.9"
MANYLINUX, MACOS = "cp311-cp311-manylinux_2_17_x86_64", "cp311-cp311-macosx_11_0_arm64"


@dataclass(frozen=True)
class Tree:
    """acme-app (project 42) needs acme-lib (project 43, below group 7) and dep-pkg, which
    only the public index holds; acme-native has a Linux and a macOS wheel."""

    gitlab: FakeGitLab
    index: FakeIndex
    proxy: ProxyProcess

    @property
    def simple(self) -> str:
        """The group's index URL on the proxy: every project below group 7."""
        return f"{self.proxy.url}/api/v4/groups/7/-/packages/pypi/simple"

    @property
    def upload(self) -> str:
        """Project 42's upload URL on the proxy."""
        return f"{self.proxy.url}/api/v4/projects/42/packages/pypi"

    def assert_resolved_through_the_proxy(self) -> None:
        """GitLab was asked for the private pages and the public index for dep-pkg's file."""
        paths = [r.path for r in self.gitlab.requests]
        for name in ("acme-app", "acme-lib"):
            assert any(f"/simple/{name}" in path for path in paths), paths
        assert any(path.startswith("/files/dep_pkg") for path in self.index.paths), self.index.paths
        assert all("authorization" not in headers for headers in self.index.headers)


def _publish(gitlab: FakeGitLab, pid: int, name: str, version: str, **options: object) -> None:
    filename, content = make_wheel(name, version, **options)  # type: ignore[arg-type]
    gitlab.add_file(pid, name, version, filename, content)


@pytest.fixture
def index() -> Iterator[FakeIndex]:
    """The fake public index, holding dep-pkg."""
    with FakeIndex() as fake:
        fake.add("dep-pkg", DEP)
        yield fake


@pytest.fixture
def gitlab(index: FakeIndex) -> Iterator[FakeGitLab]:
    """The fake GitLab of the tree, forwarding names it does not hold to `index`."""
    with FakeGitLab(forwarding_url=f"{index.url}/simple/") as fake:
        acme(fake)
        _publish(fake, 42, "acme-app", APP, requires=("acme-lib>=7", "dep-pkg"))
        _publish(fake, 43, "acme-lib", LIB)
        for tag in (MANYLINUX, MACOS):
            _publish(fake, 43, "acme-native", NATIVE, tag=tag)
        yield fake


def _tree(start: Start, gitlab: FakeGitLab, index: FakeIndex, cache: Path, **env: str) -> Tree:
    proxy = serve(
        start,
        gitlab,
        cache,
        token=SERVICE,
        GITLAB_PYPI_PROXY_FORWARDING_ALLOWED_HOSTS=index.host,
        **env,
    )
    return Tree(gitlab, index, proxy)


@pytest.fixture
def tree(gitlab: FakeGitLab, index: FakeIndex, start_proxy: Start, tmp_path: Path) -> Tree:
    """The tree behind a running proxy (open on loopback, with the service token)."""
    return _tree(start_proxy, gitlab, index, tmp_path / "cache")


def _ok(result: object) -> None:
    assert getattr(result, "returncode", 1) == 0, getattr(result, "stdout", "") + getattr(
        result, "stderr", ""
    )


def _assert_tree_installed(python: Path) -> None:
    versions = {m: installed_version(python, m) for m in ("acme_app", "acme_lib", "dep_pkg")}
    assert versions == {"acme_app": APP, "acme_lib": LIB, "dep_pkg": DEP}


def _pip(*args: str, python: Path = Path(sys.executable)) -> list[str]:
    return [str(python), "-m", "pip", *args, "--isolated", "--no-cache-dir", "--no-input"]


# -- pip ------------------------------------------------------------------------------------


def test_pip_installs_the_tree(tree: Tree, tmp_path: Path) -> None:
    """Today's pip installs the app, its private lib and its public dependency."""
    python = new_venv(tmp_path / "venv")
    _ok(pip_install(python, tree.simple, "acme-app"))
    _assert_tree_installed(python)
    tree.assert_resolved_through_the_proxy()


@pytest.fixture(scope="session")
def old_pip_wheels() -> Path:
    """The directory holding the old pip's wheel; without it the test fails under CI and
    is skipped elsewhere (the README's test command downloads it)."""
    if not any(OLD_PIP_WHEELS.glob(f"pip-{OLD_PIP}-*.whl")):
        message = f"pip {OLD_PIP} is not in {OLD_PIP_WHEELS}: run the README's test command"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return OLD_PIP_WHEELS


def test_the_readme_test_command_fetches_the_old_pip() -> None:
    """The README's test command (scripts/test) downloads the very pip this file installs."""
    script = (Path(__file__).parent.parent / "scripts" / "test").read_text()
    assert f" -d .venv/{OLD_PIP_WHEELS.name} pip=={OLD_PIP}\n" in script


def test_the_oldest_pip_for_python_311_installs_the_tree(
    tree: Tree, tmp_path: Path, old_pip_wheels: Path
) -> None:
    """pip 22.2.1, installed offline from its wheel, installs the tree with its own pip."""
    python = new_venv(tmp_path / "venv")
    offline = ["--no-index", "--find-links", str(old_pip_wheels), f"pip=={OLD_PIP}"]
    _ok(run([uv(), "pip", "install", "--no-config", "--python", str(python), *offline]))
    version = run([str(python), "-m", "pip", "--version"])
    assert version.stdout.startswith(f"pip {OLD_PIP} "), version.stdout
    env = isolated_env(tmp_path / "home", PIP_CONFIG_FILE=os.devnull)
    _ok(run(_pip("install", "--index-url", tree.simple, "acme-app", python=python), env=env))
    _assert_tree_installed(python)
    tree.assert_resolved_through_the_proxy()


def _dry_run_report(tree: Tree, tmp_path: Path) -> dict[str, str]:
    report = tmp_path / "report.json"
    command = _pip("install", "--dry-run", "--ignore-installed", "--report", str(report))
    _ok(run([*command, "--index-url", tree.simple, "acme-app"]))
    installs = json.loads(report.read_text())["install"]
    for entry in installs:
        assert entry["download_info"]["url"].startswith(tree.proxy.url + "/"), entry
    return {entry["metadata"]["name"]: entry["metadata"]["version"] for entry in installs}


def test_pip_dry_run_reports_the_tree(tree: Tree, tmp_path: Path) -> None:
    """`pip install --dry-run --report` resolves the tree, every file on the proxy."""
    assert _dry_run_report(tree, tmp_path) == {"acme-app": APP, "acme-lib": LIB, "dep-pkg": DEP}
    tree.assert_resolved_through_the_proxy()


def test_pip_download_for_another_platform_takes_its_wheel(tree: Tree, tmp_path: Path) -> None:
    """`pip download --platform manylinux_2_17_x86_64 --only-binary=:all:` takes the Linux
    wheel of acme-native and leaves the macOS one."""
    target = ["--platform", "manylinux_2_17_x86_64", "--python-version", "3.11"]
    command = _pip("download", *target, "--implementation", "cp", "--only-binary=:all:")
    _ok(run([*command, "-d", str(tmp_path / "dl"), "--index-url", tree.simple, "acme-native"]))
    got = sorted(path.name for path in (tmp_path / "dl").iterdir())
    assert got == [f"acme_native-{NATIVE}-{MANYLINUX}.whl"]
    assert tree.gitlab.counts["file"] == 1


# -- uv -------------------------------------------------------------------------------------


def test_uv_pip_installs_the_tree(tree: Tree, tmp_path: Path) -> None:
    """`uv pip install` installs the tree."""
    python = new_venv(tmp_path / "venv")
    _ok(uv_install(python, tree.simple, "acme-app", cache=tmp_path / "uv-cache"))
    _assert_tree_installed(python)
    tree.assert_resolved_through_the_proxy()


def test_uv_pip_compile_pins_the_tree(tree: Tree, tmp_path: Path) -> None:
    """`uv pip compile` pins the versions only the fake GitLab and index hold."""
    (tmp_path / "requirements.in").write_text("acme-app\n")
    command = [uv(), "pip", "compile", "--no-config", "--cache-dir", str(tmp_path / "uvc")]
    result = run([*command, "--index-url", tree.simple, str(tmp_path / "requirements.in")])
    _ok(result)
    pins = {line for line in result.stdout.splitlines() if "==" in line}
    assert pins == {f"acme-app=={APP}", f"acme-lib=={LIB}", f"dep-pkg=={DEP}"}
    assert any("/simple/acme-lib" in r.path for r in tree.gitlab.requests)


def _project(path: Path, tool_section: str) -> Path:
    path.mkdir()
    (path / "pyproject.toml").write_text(
        '[project]\nname = "consumer"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["acme-app"]\n\n' + tool_section
    )
    return path


def test_uv_lock_and_sync_with_a_tool_uv_index(tree: Tree, tmp_path: Path) -> None:
    """`uv lock` + `uv sync` with the proxy as the project's `[[tool.uv.index]]`."""
    project = _project(
        tmp_path / "project",
        f'[tool.uv]\npackage = false\n\n[[tool.uv.index]]\nname = "gitlab"\n'
        f'url = "{tree.simple}"\ndefault = true\n',
    )
    env = isolated_env(tmp_path / "home")
    common = ["--cache-dir", str(tmp_path / "uvc"), "--python", sys.executable]
    _ok(run([uv(), "lock", *common], env=env, cwd=project))
    assert f'registry = "{tree.simple}"' in (project / "uv.lock").read_text()
    _ok(run([uv(), "sync", *common], env=env, cwd=project))
    _assert_tree_installed(project / ".venv" / "bin" / "python")
    tree.assert_resolved_through_the_proxy()


# -- poetry and pdm -------------------------------------------------------------------------


@pytest.mark.slow
def test_poetry_lock_and_install_with_a_source(tree: Tree, tmp_path: Path) -> None:
    """`poetry lock` + `poetry install` with the proxy as the project's primary source."""
    project = _project(
        tmp_path / "project",
        f'[tool.poetry]\npackage-mode = false\n\n[[tool.poetry.source]]\nname = "gitlab"\n'
        f'url = "{tree.simple}"\npriority = "primary"\n',
    )
    env = isolated_env(tmp_path / "home")
    _ok(run([tool("poetry"), "lock"], env=env, cwd=project))
    _ok(run([tool("poetry"), "install"], env=env, cwd=project))
    _assert_tree_installed(project / ".venv" / "bin" / "python")
    tree.assert_resolved_through_the_proxy()


@pytest.mark.slow
def test_pdm_lock_and_install_with_a_source(tree: Tree, tmp_path: Path) -> None:
    """`pdm lock` + `pdm install` with the proxy as the project's only source."""
    project = _project(
        tmp_path / "project",
        f'[tool.pdm]\ndistribution = false\n\n[[tool.pdm.source]]\nname = "pypi"\n'
        f'url = "{tree.simple}"\n',
    )
    # pdm installs into the interpreter's own venv: the project's, never this one.
    env = isolated_env(tmp_path / "home", PDM_PYTHON=str(new_venv(project / ".venv")))
    _ok(run([tool("pdm"), "lock"], env=env, cwd=project))
    _ok(run([tool("pdm"), "install"], env=env, cwd=project))
    _assert_tree_installed(project / ".venv" / "bin" / "python")
    tree.assert_resolved_through_the_proxy()


# -- publishing -----------------------------------------------------------------------------


def _wheel(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    filename, content = make_wheel(name, "1.0")
    (directory / filename).write_bytes(content)
    return directory / filename


def _assert_uploaded_with_the_developers_token(tree: Tree, filename: str) -> None:
    assert filename in [f.filename for f in tree.gitlab.files(42)]
    uploads = [r for r in tree.gitlab.requests if r.method == "POST"]
    assert uploads
    assert all(SERVICE not in str(r.headers) for r in uploads)


def test_twine_uploads_through_the_proxy(tree: Tree, tmp_path: Path) -> None:
    """twine uploads to the project URL with a developer's token; pip then installs it."""
    wheel = _wheel(tmp_path / "dist", "twine-made")
    _ok(twine_upload(tree.upload, [wheel], username="dev", password=DEV))
    _assert_uploaded_with_the_developers_token(tree, wheel.name)
    python = new_venv(tmp_path / "venv")
    _ok(pip_install(python, tree.simple, "twine-made"))


def test_uv_publish_uploads_through_the_proxy(tree: Tree, tmp_path: Path) -> None:
    """`uv publish --publish-url` uploads to the project URL with a developer's token."""
    wheel = _wheel(tmp_path / "dist", "uv-made")
    command = [uv(), "publish", "--publish-url", tree.upload, "-u", "dev", "-p", DEV]
    _ok(run([*command, str(wheel)], env=isolated_env(tmp_path / "home")))
    _assert_uploaded_with_the_developers_token(tree, wheel.name)


def test_poetry_publish_uploads_through_the_proxy(tree: Tree, tmp_path: Path) -> None:
    """`poetry publish -r gitlab` with the repository URL and credentials from POETRY_*."""
    project = tmp_path / "poetry-made"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "poetry-made"\nversion = "1.0"\n')
    wheel = _wheel(project / "dist", "poetry-made")
    env = isolated_env(
        tmp_path / "home",
        POETRY_REPOSITORIES_GITLAB_URL=tree.upload,
        POETRY_HTTP_BASIC_GITLAB_USERNAME="dev",
        POETRY_HTTP_BASIC_GITLAB_PASSWORD=DEV,
    )
    _ok(run([tool("poetry"), "publish", "--repository", "gitlab"], env=env, cwd=project))
    _assert_uploaded_with_the_developers_token(tree, wheel.name)


# -- core metadata (PEP 658): resolving without wheel bodies ---------------------------------


@pytest.mark.parametrize("client", ["pip", "uv"])
def test_a_dry_run_reads_metadata_and_no_wheel(
    gitlab: FakeGitLab, index: FakeIndex, start_proxy: Start, tmp_path: Path, client: str
) -> None:
    """With pages.metadata = always, pip's dry run and `uv pip compile` are answered
    `.metadata` files by the proxy, and no wheel's body is fetched from GitLab or served."""
    tree = _tree(
        start_proxy, gitlab, index, tmp_path / "cache", GITLAB_PYPI_PROXY_PAGES_METADATA="always"
    )
    if client == "pip":
        _dry_run_report(tree, tmp_path)
    else:
        (tmp_path / "requirements.in").write_text("acme-app\n")
        command = [uv(), "pip", "compile", "--no-config", "--cache-dir", str(tmp_path / "uvc")]
        _ok(run([*command, "--index-url", tree.simple, str(tmp_path / "requirements.in")]))
    assert tree.proxy.log is not None
    answered = [line for line in tree.proxy.log.read_text().splitlines() if '" 200 ' in line]
    for name in ("acme_app", "acme_lib", "dep_pkg"):
        assert any(f"/{name}-" in line and '.whl.metadata" 200' in line for line in answered)
    assert not [line for line in answered if '.whl" 200' in line]
    whole = [r for r in gitlab.requests if "/files/" in r.path and "range" not in r.headers]
    assert whole == []
    assert not [path for path in index.paths if path.endswith(".whl")]
