"""Packaging: the Dockerfile installs for real; pyproject, README and CI agree; lint is clean."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import shutil
import site
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy import config
from proxy.settings import TOKEN_ENV
from tests.clients import clean_env

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install . && "
    ".venv/bin/gitlab-pypi-proxy serve --upstream https://gitlab.example.com"
)
TEST_COMMAND = "bash scripts/test"
# What the CI venv must hold for the test command alone to lint, type-check and test.
TEST_TOOLS = ("pytest", "respx", "twine", "uv", "poetry", "pdm", "ruff", "mypy")


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case) and its argument text."""

    keyword: str
    args: str


def _instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue  # Docker drops comment lines, even inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole:
            keyword, _, args = whole.partition(" ")
            found.append(Instruction(keyword.upper(), args.strip()))
    return found


def _stages() -> list[list[Instruction]]:
    """The Dockerfile's stages, each from its FROM to the next."""
    stages: list[list[Instruction]] = []
    for instruction in _instructions((ROOT / "Dockerfile").read_text()):
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, f"{instruction.keyword} before the first FROM"
        stages[-1].append(instruction)
    return stages


def _runtime() -> list[Instruction]:
    return _stages()[-1]


def _args(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def _env(stage: list[Instruction]) -> dict[str, str]:
    """The variables a stage's ENV lines set (KEY=value pairs, or the old `ENV KEY value`)."""
    env: dict[str, str] = {}
    for args in _args(stage, "ENV"):
        words = shlex.split(args)
        if "=" not in words[0]:
            env[words[0]] = args.partition(" ")[2].strip()
            continue
        env.update(word.split("=", 1) for word in words)
    return env


def _volumes(stage: list[Instruction]) -> list[str]:
    volumes: list[str] = []
    for args in _args(stage, "VOLUME"):
        volumes += json.loads(args) if args.startswith("[") else args.split()
    return volumes


def _version() -> str:
    """__version__ as proxy/__init__.py spells it."""
    found = re.search(r'^__version__ = "([^"]+)"$', (ROOT / "proxy/__init__.py").read_text(), re.M)
    assert found, "proxy/__init__.py sets no __version__"
    return found[1]


def _pyproject() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)


def _readme() -> str:
    return (ROOT / "README.md").read_text()


# -- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_builds_in_one_stage_and_runs_from_another() -> None:
    """Multi-stage: a named build stage, and a runtime stage that copies only its venv."""
    stages = _stages()
    assert len(stages) == 2, [stage[0].args for stage in stages]
    assert stages[0][0].args.split()[-2:] == ["AS", "build"], stages[0][0].args
    copies = _args(_runtime(), "COPY")
    assert copies == ["--from=build /opt/venv /opt/venv"], copies


def test_runtime_stage_runs_as_a_non_root_user() -> None:
    """The runtime stage switches to a USER that is neither root nor uid 0."""
    users = _args(_runtime(), "USER")
    assert users, "the runtime stage has no USER line"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]


def test_runtime_stage_keeps_the_cache_on_a_volume_the_user_owns() -> None:
    """The VOLUME is the cache dir the ENV configures, created and chowned to the USER."""
    runtime = _runtime()
    cache_dir = _env(runtime)["GITLAB_PYPI_PROXY_CACHE_DIR"]
    assert _volumes(runtime) == [cache_dir]
    user = _args(runtime, "USER")[-1].split(":")[0]
    setup = " ".join(_args(runtime, "RUN"))
    assert re.search(
        rf"\bchown (?:-\S+ )*{re.escape(user)}(?::\S+)? {re.escape(cache_dir)}\b", setup
    )


def test_runtime_environment_loads_as_listening_on_all_addresses() -> None:
    """The runtime ENV, read by config.load, listens on 0.0.0.0:8080 with the volume as cache."""
    runtime = _runtime()
    env = {k: v for k, v in _env(runtime).items() if k.startswith(config.ENV_PREFIX)}
    settings = config.load(env=env)
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 8080)
    assert str(settings.cache.dir) == _volumes(runtime)[0]
    assert _args(runtime, "EXPOSE") == ["8080"]


def test_healthcheck_asks_the_health_endpoint_on_the_exposed_port() -> None:
    """HEALTHCHECK fetches /-/health on the port the image listens on."""
    checks = _args(_runtime(), "HEALTHCHECK")
    assert len(checks) == 1, checks
    assert "http://127.0.0.1:8080/-/health" in checks[0]


def test_entrypoint_is_the_console_script() -> None:
    """The image runs gitlab-pypi-proxy, serve by default, so `docker run IMAGE serve ...` works."""
    runtime = _runtime()
    assert _args(runtime, "ENTRYPOINT") == ['["gitlab-pypi-proxy"]']
    assert _args(runtime, "CMD") == ['["serve"]']
    assert _env(runtime)["PATH"].startswith("/opt/venv/bin:")


# There is no Docker engine here, so the build stage is replayed: the image's / is
# tmp_path/image, WORKDIR and COPY act as Docker's do on the repository's files, and each
# command of the RUN line runs for real, with these stand-ins so that it works offline
# (CI's .ci/run does the networked install of the same project):
# - `python -m venv DIR` runs with this test's interpreter, adding `--without-pip`;
# - `DIR/bin/pip install ARGS` runs as this interpreter's `pip --python DIR/bin/python
#   install ARGS --no-index --no-deps --no-build-isolation`. The test venv already holds
#   every dependency and the build backend (setuptools); a .pth file in DIR makes them
#   visible after DIR's own packages. A venv with its own pip would also get ensurepip's
#   setuptools (65.x on Python 3.11), too old for pyproject.toml, and found first.


def test_build_stage_commands_install_a_working_console_script(tmp_path: Path) -> None:
    """The build stage's commands, replayed, install a script printing __init__'s version."""
    image = tmp_path / "image"
    workdir = "/"
    for instruction in _stages()[0][1:]:
        if instruction.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, instruction.args)
        elif instruction.keyword == "COPY":
            _replay_copy(instruction.args, workdir, image)
        elif instruction.keyword == "RUN":
            for command in instruction.args.split("&&"):
                _replay_run(shlex.split(command), workdir, image)
        else:
            pytest.fail(f"no replay for {instruction.keyword} in the build stage")
    venv = _inside(image, "/opt/venv")
    python, script = venv / "bin" / "python", venv / "bin" / "gitlab-pypi-proxy"
    shown = _run_outside([str(script), "--version"], tmp_path)
    assert shown.stdout.strip() == f"gitlab-pypi-proxy {_version()}"
    where = _run_outside([str(python), "-I", "-c", "import proxy; print(proxy.__file__)"], tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv), "proxy was not imported from the venv"


def _run_outside(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run an installed program away from the copied sources, with a clean environment."""
    result = subprocess.run(
        command, cwd=cwd, env=clean_env(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _inside(image: Path, path: str) -> Path:
    """Where an absolute path of the image lies under tmp_path."""
    assert path.startswith("/"), path
    return image / path.lstrip("/")


def _replay_copy(args: str, workdir: str, image: Path) -> None:
    """COPY from the repository, with Docker's rules for files and folders."""
    *sources, target = shlex.split(args)
    assert not any(s.startswith("--") for s in sources), f"COPY flags in the build stage: {args}"
    into = posixpath.join(workdir, target)
    for source in sources:
        found = ROOT / source
        assert found.exists(), f"COPY {source}: no such file in the repository"
        if found.is_dir():  # a folder's contents are copied, not the folder itself
            shutil.copytree(
                found,
                _inside(image, into),
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        else:
            whole = target.endswith("/") or len(sources) > 1
            destination = _inside(image, posixpath.join(into, found.name) if whole else into)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(found, destination)


def _replay_run(argv: list[str], workdir: str, image: Path) -> None:
    """Run one command of a RUN line with its offline stand-in (see above the test)."""
    if argv[:3] == ["python", "-m", "venv"] and len(argv) == 4:
        venv = _inside(image, argv[3])
        command = [sys.executable, "-m", "venv", "--without-pip", str(venv)]
        _run(command, image, workdir)
        (site_packages,) = venv.glob("lib/python3*/site-packages")
        (site_packages / "test-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    elif len(argv) > 2 and argv[0].endswith("/bin/pip") and argv[1] == "install":
        python = _inside(image, argv[0]).parent / "python"
        offline = ["--no-index", "--no-deps", "--no-build-isolation"]
        command = [sys.executable, "-m", "pip", "--isolated", "--python", str(python)]
        hint = (
            "--no-build-isolation builds with the test venv's setuptools: pyproject.toml's "
            'license = "MIT" (PEP 639) needs setuptools>=77 there, from the test extra'
        )
        result = _run([*command, "install", *argv[2:], *offline], image, workdir, hint=hint)
        assert "Successfully installed gitlab-pypi-proxy" in result.stdout, result.stdout
    else:
        pytest.fail(f"no offline stand-in for this RUN command: {shlex.join(argv)}")


def _run(
    command: list[str], image: Path, workdir: str, *, hint: str = ""
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command,
        cwd=_inside(image, workdir),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{shlex.join(command)}\n{result.stdout}{result.stderr}\n{hint}"
    return result


# -- pyproject.toml ------------------------------------------------------------------------


def test_console_script_is_the_cli_main() -> None:
    """`gitlab-pypi-proxy` runs proxy.__main__:main."""
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    assert project["scripts"] == {"gitlab-pypi-proxy": "proxy.__main__:main"}


@pytest.mark.parametrize("tool", TEST_TOOLS)
def test_test_extra_installs_the_tool(tool: str) -> None:
    """The `test` extra brings every tool the test command needs."""
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    names = {
        re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        for requirement in project["optional-dependencies"]["test"]
    }
    assert tool in names


def test_distribution_version_is_the_package_version() -> None:
    """pyproject.toml's version is proxy.__version__, so `--version` tells the truth."""
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    assert project["version"] == _version()


# -- README and CI -------------------------------------------------------------------------


@pytest.mark.parametrize("command", [START_COMMAND, TEST_COMMAND], ids=["start", "test"])
def test_readme_gives_the_command_word_for_word(command: str) -> None:
    """A newcomer's two commands appear in the README exactly as they are run."""
    assert command in _readme()


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run's last command is the README's test command, so the two cannot drift."""
    lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands[-1] == TEST_COMMAND


def test_readme_names_only_flags_that_serve_has() -> None:
    """Every --flag on a README line running `gitlab-pypi-proxy serve` is in serve --help."""
    helped = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--help"],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    known = set(re.findall(r"--[a-z][a-z-]*", helped))
    used = {
        flag
        for line in _readme().splitlines()
        if "gitlab-pypi-proxy serve" in line
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line.partition("serve")[2])
    }
    assert used, "the README shows no serve command"
    assert used <= known, sorted(used - known)


def test_readme_names_only_variables_that_exist() -> None:
    """Every GITLAB_PYPI_PROXY_* variable in the README is read by the proxy."""
    with open(ROOT / "config.example.toml", "rb") as file:
        example = tomllib.load(file)
    known = {config.CONFIG_ENV, TOKEN_ENV} | {
        f"{config.ENV_PREFIX}{section}_{key}".upper()
        for section, table in example.items()
        for key in table
    }
    used = set(re.findall(r"GITLAB_PYPI_PROXY_[A-Z0-9_]*[A-Z0-9]", _readme()))
    assert used <= known, sorted(used - known)


# -- quality -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_code_passes(command: list[str]) -> None:
    """ruff and mypy --strict (configured in pyproject.toml) find nothing."""
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
