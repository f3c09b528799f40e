"""Real pip, uv and twine, isolated from this machine's configuration, and a real proxy process."""

from __future__ import annotations

import itertools
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
# design.md section 6: a pip under test must not see the machine's pip configuration
# (extra index URLs, find-links, PIP_* variables), or it can pass without the proxy.
_LEAKY_PREFIXES = (
    "PIP_",
    "UV_",
    "TWINE_",
    "POETRY_",
    "PDM_",
    "GITLAB_PYPI_PROXY_",
    "PYTHONPATH",
    "PROMETHEUS_",
    "VIRTUAL_ENV",
)
# Polls a URL until its stdin closes, then prints the slowest answer's seconds.
_POLLER = """
import sys, threading, time, urllib.request
closed = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
slowest = 0.0
while not closed.wait(0.01):
    started = time.monotonic()
    with urllib.request.urlopen(sys.argv[1], timeout=60) as response:
        assert response.status == 200
    slowest = max(slowest, time.monotonic() - started)
print(slowest)
"""


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any pip/uv/twine/proxy settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_PREFIXES)}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    env.update(extra)
    return env


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """`clean_env` with HOME and the XDG directories inside `home`: poetry, pdm and uv read
    no configuration (user or system), netrc, cache or data of this machine, and no keyring.
    (uv's --no-config would also hide a project's own `[tool.uv]`.)"""
    dirs = {"HOME": home, "XDG_CONFIG_DIRS": home / "etc"}
    dirs.update({f"XDG_{kind}_HOME": home / kind.lower() for kind in ("CONFIG", "CACHE", "DATA")})
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return clean_env(
        **{name: str(path) for name, path in dirs.items()},
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
        UV_PYTHON_DOWNLOADS="never",
        POETRY_NO_INTERACTION="1",
        POETRY_VIRTUALENVS_IN_PROJECT="true",
        PDM_CHECK_UPDATE="false",
        **extra,
    )


def run(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """Run a client; its output is kept for the assertion message."""
    return subprocess.run(
        args,
        env=env or clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tool(name: str) -> str:
    """A client's console script installed with the test extras (uv, poetry, pdm, twine)."""
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert found, f"{name} is not installed (pip install -e '.[test]')"
    return found


def uv() -> str:
    """The uv binary installed with the test extras."""
    return tool("uv")


def new_venv(path: Path) -> Path:
    """A fresh, empty virtual environment; returns its python."""
    result = run([uv(), "venv", "--no-config", "--python", sys.executable, str(path)])
    assert result.returncode == 0, result.stderr
    return path / "bin" / "python"


def pip_install(
    python: Path, index_url: str, *requirements: str
) -> subprocess.CompletedProcess[str]:
    """`pip install` into the venv of `python`, from `index_url` only, with no pip cache."""
    return run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--isolated",
            "--no-cache-dir",
            "--no-input",
            "--disable-pip-version-check",
            "--index-url",
            index_url,
            *requirements,
        ]
    )


def uv_install(
    python: Path, index_url: str, *requirements: str, cache: Path, target: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`uv pip install` into the venv of `python` (or into the `target` folder, for that
    python), from `index_url` only, with its own cache."""
    into = ["--target", str(target)] if target is not None else []
    return run(
        [
            uv(),
            "pip",
            "install",
            "--no-config",
            "--python",
            str(python),
            "--cache-dir",
            str(cache),
            *into,
            "--index-url",
            index_url,
            *requirements,
        ]
    )


def twine_upload(
    repository_url: str, files: list[Path], *, username: str, password: str
) -> subprocess.CompletedProcess[str]:
    """`twine upload` with credentials on the command line and no ~/.pypirc."""
    empty = files[0].parent / "empty.pypirc"
    empty.write_text("")
    return run(
        [
            str(BIN / "twine"),
            "upload",
            "--non-interactive",
            "--disable-progress-bar",
            "--config-file",
            str(empty),
            "--repository-url",
            repository_url,
            "-u",
            username,
            "-p",
            password,
            *map(str, files),
        ]
    )


def installed_version(python: Path, module: str) -> str:
    """The __version__ of a module as the venv's python imports it."""
    result = run([str(python), "-c", f"import {module}; print({module}.__version__)"])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ProxyProcess:
    """`gitlab-pypi-proxy serve` running as its own process on loopback."""

    args: list[str]
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None
    log: Path | None = None
    file_size_limit: int | None = None
    """RLIMIT_FSIZE for the process: writes past it fail with EFBIG, like a full disk."""
    nofile_limit: int | None = None
    """RLIMIT_NOFILE for the process: descriptors past it fail with EMFILE."""

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, deadline: float = 30.0) -> ProxyProcess:
        """Start it and wait until /-/health answers (or fail with its output)."""
        assert self.log is not None
        command = [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            *self.args,
        ]
        with open(self.log, "a") as out:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                preexec_fn=self._limits if self.file_size_limit or self.nofile_limit else None,
            )
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"proxy exited {self.process.returncode}:\n{self.log.read_text()}"
                )
            try:
                if httpx.get(self.url + "/-/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)  # polling a condition with a deadline, not a fixed wait
        raise AssertionError(f"proxy did not become healthy:\n{self.log.read_text()}")

    def _limits(self) -> None:
        if self.file_size_limit is not None:
            limit = (self.file_size_limit, resource.RLIM_INFINITY)
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        if self.nofile_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile_limit, self.nofile_limit))

    def lift_file_size_limit(self) -> None:
        """Give the running process back an unlimited file size (the disk was freed)."""
        assert self.process is not None
        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE, unlimited)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGKILL too) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.process.kill()
                self.process.wait()
        self.process = None


@contextmanager
def proxies(logs: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """A starter of `gitlab-pypi-proxy serve` processes (flags, then token=...,
    file_size_limit=..., nofile_limit=... or environment variables), their logs in `logs`;
    all are stopped at the end of the block."""
    started: list[ProxyProcess] = []
    numbers = itertools.count()  # next() is atomic: start_fleet starts replicas in threads

    def start(
        *args: str,
        token: str | None = None,
        file_size_limit: int | None = None,
        nofile_limit: int | None = None,
        **env: str,
    ) -> ProxyProcess:
        extra = {"GITLAB_PYPI_PROXY_TOKEN": token} if token else {}
        proxy = ProxyProcess(list(args), clean_env(**extra, **env))
        proxy.file_size_limit = file_size_limit
        proxy.nofile_limit = nofile_limit
        proxy.log = logs / f"proxy-{next(numbers)}.log"
        started.append(proxy)
        return proxy.start()

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()


@contextmanager
def slowest_answer(url: str) -> Iterator[list[float]]:
    """GET `url` over and over during the block, from a process of its own (so that the
    caller's threads cannot slow it); the slowest answer's seconds land in the list."""
    poller = subprocess.Popen(
        [sys.executable, "-c", _POLLER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    slowest: list[float] = []
    try:
        yield slowest
    finally:
        out, _ = poller.communicate(timeout=120)
        assert poller.returncode == 0, poller.returncode
        slowest.append(float(out))
