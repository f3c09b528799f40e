"""warm: real pip through warm's own proxy fills and pins the cache; an offline proxy serves it."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy import warming
from proxy.cache import Store
from proxy.models import Scope
from tests.clients import clean_env, new_venv, pip_install, run
from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab
from tests.scenario import SERVICE, Start, acme, serve

pytestmark = pytest.mark.e2e

PLATFORMS = ("manylinux_2_17_x86_64", "macosx_11_0_arm64")
HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"
PYTHONS = (HERE, "3.12" if HERE != "3.12" else "3.11")  # the running one installs offline


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


def _targets(pythons: tuple[str, ...] = PYTHONS) -> list[str]:
    options = [f"--platform={p}" for p in PLATFORMS]
    return options + [f"--python-version={v}" for v in pythons]


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
    for platform in PLATFORMS:
        for python in PYTHONS:
            assert f"warm: cp{python.replace('.', '')} {platform}: 2 files" in output
    assert "pinned 5 files" in output
    assert _pinned(tmp_path / "cache", list(published.values())) == [True] * 5


def test_an_offline_proxy_serves_what_warm_pinned(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """With GitLab stopped, a proxy with --offline on the warmed cache serves pip install
    here and pip download for the other platform."""
    published = _publish(gitlab)
    status, output = _warm(gitlab, tmp_path / "cache", "app-pkg", *_targets((HERE,)))
    assert status == 0, output
    gitlab.stop()
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", "--offline")
    index = f"{proxy.url}/api/v4/projects/42/packages/pypi/simple"
    python = new_venv(tmp_path / "venv")
    installed = pip_install(python, index, "app-pkg")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "native-lib-2.0" in installed.stdout
    command = warming.pip_download(
        warming.Target("macosx_11_0_arm64", HERE),
        warming.Request(scope=Scope("projects", "42"), requirements=("app-pkg",)),
        index_url=index,
        dest=tmp_path / "mac",
    )
    downloaded = run(command)
    assert downloaded.returncode == 0, downloaded.stdout + downloaded.stderr
    cp = "cp" + HERE.replace(".", "")
    mac = f"native_lib-2.0-{cp}-{cp}-macosx_11_0_arm64.whl"
    assert sorted(p.name for p in (tmp_path / "mac").iterdir()) == sorted(
        ["app_pkg-1.0-py3-none-any.whl", mac]
    )
    assert mac in published


def test_a_missing_requirement_fails_warm_naming_it(gitlab: FakeGitLab, tmp_path: Path) -> None:
    """A requirement GitLab does not hold: exit status 1, pip's error naming it, the target."""
    _publish(gitlab)
    status, output = _warm(gitlab, tmp_path / "cache", "app-pkg", "no-such-pkg")
    assert status == 1, output
    assert "ERROR: No matching distribution found for no-such-pkg" in output
    assert f"warm: failed: cp{HERE.replace('.', '')} native" in output


def test_no_pin_leaves_the_files_unpinned(gitlab: FakeGitLab, tmp_path: Path) -> None:
    """--no-pin fills the cache but pins nothing."""
    published = _publish(gitlab)
    status, output = _warm(gitlab, tmp_path / "cache", "app-pkg", "--no-pin", *_targets((HERE,)))
    assert status == 0, output
    store = Store(tmp_path / "cache", max_size=10**9)
    here = f"cp{HERE.replace('.', '')}-"
    warmed = [sha for name, sha in published.items() if here in name or "none-any" in name]
    assert [(store.has_file(sha), store.is_pinned(sha)) for sha in warmed] == [(True, False)] * 3
    store.close()
    assert "held (not pinned) 3 files" in output


def test_a_requirements_file_with_hashes_is_warmed(gitlab: FakeGitLab, tmp_path: Path) -> None:
    """-r with --hash lines: pip checks the hashes, the file is pinned."""
    filename, content = make_wheel("solo-pkg", "1.0")
    sha = gitlab.add_file(42, "solo-pkg", "1.0", filename, content)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"solo-pkg==1.0 \\\n    --hash=sha256:{sha}\n")
    status, output = _warm(gitlab, tmp_path / "cache", "-r", str(requirements))
    assert status == 0, output
    assert _pinned(tmp_path / "cache", [sha]) == [True]


def test_a_requirements_file_with_a_wrong_hash_fails(gitlab: FakeGitLab, tmp_path: Path) -> None:
    """-r with a --hash the file does not have: pip refuses it and warm exits 1."""
    filename, content = make_wheel("solo-pkg", "1.0")
    gitlab.add_file(42, "solo-pkg", "1.0", filename, content)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"solo-pkg==1.0 --hash=sha256:{'0' * 64}\n")
    status, output = _warm(gitlab, tmp_path / "cache", "-r", str(requirements))
    assert status == 1, output
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in output


def test_a_pylock_file_has_all_its_files_fetched_and_pinned(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """A pylock.toml given with -r: every wheel it lists, for any platform, is pinned."""
    published = _publish(gitlab)
    wheels = [
        f'{{ url = "https://gitlab.example.com/files/{name}", name = "{name}", '
        f'hashes = {{ sha256 = "{sha}" }} }}'
        for name, sha in published.items()
        if name.startswith("native_lib")
    ]
    lock = tmp_path / "pylock.toml"
    listed = "".join(f"  {wheel},\n" for wheel in wheels)
    lock.write_text(
        'lock-version = "1.0"\ncreated-by = "hand"\n\n[[packages]]\nname = "native-lib"\n'
        f'version = "2.0"\nwheels = [\n{listed}]\n'
    )
    status, output = _warm(gitlab, tmp_path / "cache", "-r", str(lock))
    assert status == 0, output
    assert "warm: pylock.toml: 4 files" in output
    shas = [sha for name, sha in published.items() if name.startswith("native_lib")]
    assert _pinned(tmp_path / "cache", shas) == [True] * 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--index", "users/1", "x"], "is not a scope"),
        (["--index", "projects/42"], "nothing to warm"),
        (["--index", "projects/42", "x", "--python-version", "3"], "is not X.Y"),
        (["--index", "projects/42", "-r", "missing.txt"], "is not a file"),
    ],
)
def test_a_usage_mistake_is_exit_status_2_with_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """A bad scope, no requirement, a bad Python version, a missing file: one line, status 2."""
    command = [sys.executable, "-m", "proxy", "warm", "--cache-dir", str(tmp_path), *args]
    result = run(command)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_targets_are_every_platform_and_python_pair() -> None:
    """--platform and --python-version multiply; none asked is this machine's target."""
    assert warming.targets(["a", "b"], ["3.11", "3.12"]) == (
        warming.Target("a", "3.11"),
        warming.Target("a", "3.12"),
        warming.Target("b", "3.11"),
        warming.Target("b", "3.12"),
    )
    assert warming.targets([], []) == (warming.Target(),)


def test_pip_runs_isolated_from_this_machines_configuration() -> None:
    """pip gets --isolated, --no-cache-dir, no PIP_*/UV_* variables and no config file."""
    request = warming.Request(scope=Scope("projects", "42"), requirements=("x",))
    command = warming.pip_download(
        warming.Target(), request, index_url="http://i/simple", dest=Path("d")
    )
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--isolated", "--no-cache-dir"} <= set(command)
    assert "--only-binary=:all:" not in command  # this machine's target: sdists allowed
    env = warming.isolated_environment({"PIP_INDEX_URL": "x", "UV_INDEX": "y", "HOME": "/h"})
    assert env == {"HOME": "/h", "PIP_CONFIG_FILE": os.devnull}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_a_status_line_on_a_terminal_only() -> None:
    """On a terminal, updates rewrite one line; elsewhere only the steps' lines are written."""
    terminal, plain = _Terminal(), io.StringIO()
    for out in (terminal, plain):
        progress = warming.Progress(out)
        progress.update("collecting x")
        progress.line("warm: cp311 native: 1 files")
    assert terminal.getvalue() == "\r\x1b[Kcollecting x\r\x1b[Kwarm: cp311 native: 1 files\n"
    assert plain.getvalue() == "warm: cp311 native: 1 files\n"
