"""warm: pip resolves a requirement set through an in-process proxy; what it got is pinned."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

from proxy import lockfiles, server
from proxy.cache import Store
from proxy.errors import ConfigError
from proxy.grants import Grants
from proxy.maintenance import human_size
from proxy.models import Scope, valid_scope_id
from proxy.settings import Settings
from proxy.stores import make_store

_PYTHON_VERSION = re.compile(r"^[0-9]\.[0-9]{1,2}$")
# pip's and PEP 691's choice of representation, as pip asks for a page.
_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1"
# design.md section 6: the resolver must not see this machine's pip or uv configuration.
_LEAKY_PREFIXES = ("PIP_", "UV_")
COMMIT_DEADLINE = 30.0  # seconds for the proxy to publish the files pip has finished reading
LOCK_FETCHES = 4  # files of a lock file fetched at once


@dataclass(frozen=True, slots=True)
class Target:
    """A platform and Python version pip resolves for; None: this machine's."""

    platform: str | None = None
    python_version: str | None = None  # "X.Y"

    @property
    def label(self) -> str:
        version = self.python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"
        return f"cp{version.replace('.', '')} {self.platform or 'native'}"

    def pip_options(self) -> list[str]:
        """pip download's target options: wheels only when the target is not this machine."""
        if self.platform is None and self.python_version is None:
            return []
        options = ["--only-binary=:all:", "--implementation", "cp"]
        if self.platform is not None:
            options += ["--platform", self.platform]
        if self.python_version is not None:
            options += ["--python-version", self.python_version]
        return options


@dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    """What to warm: a scope, requirements (files and strings) and the targets."""

    scope: Scope
    requirement_files: tuple[Path, ...] = ()  # given to pip with -r
    lock_files: tuple[Path, ...] = ()  # uv.lock / pylock.toml: their files, for any target
    requirements: tuple[str, ...] = ()
    targets: tuple[Target, ...] = (Target(),)
    pin: bool = True


@dataclass(slots=True)
class Outcome:
    """What one step (a target, or a lock file) got: sha256 -> size, and why it failed."""

    label: str
    files: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def parse_scope(text: str) -> Scope:
    """`projects/<id>` or `groups/<id>` as written in the URL; ConfigError otherwise."""
    kind, _, ident = text.strip("/").partition("/")
    if kind not in ("projects", "groups") or not valid_scope_id(ident):
        raise ConfigError(
            f"--index: {text!r} is not a scope (expected projects/<id> or groups/<id>, "
            "the id numeric or URL-encoded like acme%2Ftools)"
        )
    return Scope("projects" if kind == "projects" else "groups", ident)


def targets(platforms: Sequence[str], python_versions: Sequence[str]) -> tuple[Target, ...]:
    """Every (platform, Python version) pair asked; a missing one is this machine's."""
    for version in python_versions:
        if not _PYTHON_VERSION.fullmatch(version):
            raise ConfigError(f"--python-version: {version!r} is not X.Y (expected e.g. 3.12)")
    wanted_platforms: Sequence[str | None] = platforms or [None]
    wanted_versions: Sequence[str | None] = python_versions or [None]
    return tuple(Target(p, v) for p in wanted_platforms for v in wanted_versions)


def request(
    scope: str,
    files: Sequence[str],
    requirements: Sequence[str],
    platforms: Sequence[str],
    python_versions: Sequence[str],
    *,
    pin: bool,
) -> Request:
    """The Request the command line asks for; ConfigError for a usage mistake."""
    paths = [Path(name).absolute() for name in files]
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"-r: {path} is not a file")
    if not paths and not requirements:
        raise ConfigError("warm: nothing to warm (expected -r FILE or a REQUIREMENT)")
    return Request(
        scope=parse_scope(scope),
        requirement_files=tuple(p for p in paths if not lockfiles.is_lock_file(p)),
        lock_files=tuple(p for p in paths if lockfiles.is_lock_file(p)),
        requirements=tuple(requirements),
        targets=targets(platforms, python_versions),
        pin=pin,
    )


def isolated_environment(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """`environ` without pip's and uv's variables, and with no pip configuration file."""
    env = {k: v for k, v in environ.items() if not k.startswith(_LEAKY_PREFIXES)}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def pip_download(target: Target, request: Request, *, index_url: str, dest: Path) -> list[str]:
    """The `pip download` command for one target, isolated from this machine's pip setup."""
    command = [sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir"]
    command += ["--no-input", "--disable-pip-version-check", "--progress-bar", "off"]
    command += ["--dest", str(dest), "--index-url", index_url, *target.pip_options()]
    for path in request.requirement_files:
        command += ["-r", str(path)]
    return [*command, *request.requirements]


def warm(settings: Settings, request: Request, out: TextIO) -> int:
    """Warm the cache of `settings` for `request`, reporting on `out`; the exit status.

    The proxy runs in this process on a free loopback port, online and open to loopback
    only, so pip's every page and file passes through its cache.
    """
    resolving = bool(request.requirement_files or request.requirements)
    if resolving and not find_spec("pip"):
        raise ConfigError(f"warm: {sys.executable} has no pip (warm runs its pip download)")
    from proxy.app import create_app  # only warm and serve need the app

    store = make_store(settings)
    progress = Progress(out)
    outcomes: list[Outcome] = []
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            base = f"http://127.0.0.1:{port}{request.scope.api_path}"
            # Every step while the proxy runs: stopping it cancels fills not yet committed.
            with server.in_thread(create_app(_for_warming(settings, port)), sock):
                for target in request.targets if resolving else ():
                    outcomes.append(_resolve(target, request, base, progress))
                    _keep(store, outcomes[-1], pin=request.pin, progress=progress)
                for path in request.lock_files:
                    outcomes.append(_fetch_locked(path, base, progress))
                    _keep(store, outcomes[-1], pin=request.pin, progress=progress)
    finally:
        store.close()
    return _report(outcomes, request.pin, progress)


def _for_warming(settings: Settings, port: int) -> Settings:
    """The settings of warm's own proxy: on loopback, open, online, links to itself."""
    return dataclasses.replace(
        settings,
        server=dataclasses.replace(settings.server, host="127.0.0.1", port=port, public_url=""),
        cache=dataclasses.replace(settings.cache, offline=False),
        access=dataclasses.replace(settings.access, mode="open"),
    )


def _resolve(target: Target, request: Request, base: str, progress: Progress) -> Outcome:
    """Run pip download for one target; the files it saved, or pip's error lines."""
    outcome = Outcome(target.label)
    with tempfile.TemporaryDirectory(prefix="warm-") as dest:
        command = pip_download(target, request, index_url=f"{base}/simple", dest=Path(dest))
        lines: list[str] = []
        with subprocess.Popen(  # noqa: S603 (this interpreter's pip, our arguments)
            command,
            env=isolated_environment(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as pip:
            assert pip.stdout is not None
            for line in pip.stdout:
                lines.append(line.rstrip())
                if line.startswith("Collecting "):
                    progress.update(f"{outcome.label}: {line.strip().lower()}")
        for path in sorted(Path(dest).iterdir()):
            outcome.files[_hash_file(path)] = path.stat().st_size
        if pip.returncode != 0:
            errors = [line for line in lines if line.startswith("ERROR:")]
            outcome.errors = errors or lines[-5:] or [f"pip exited {pip.returncode}"]
    return outcome


def _fetch_locked(path: Path, base: str, progress: Progress) -> Outcome:
    """Fetch every file the lock file lists through the scope's files route (and each
    project's page, so that offline installs by name find them)."""
    outcome = Outcome(path.name)
    locked = lockfiles.locked_files(path)
    for project in dict.fromkeys(file.project for file in locked):
        progress.update(f"{outcome.label}: page of {project}")
        _get(f"{base}/simple/{project}/", lambda chunk: None)

    def fetch(file: lockfiles.LockedFile) -> tuple[lockfiles.LockedFile, str | None, int]:
        digest, sizes = hashlib.sha256(), [0]

        def sink(chunk: bytes) -> None:
            digest.update(chunk)
            sizes[0] += len(chunk)

        problem = _get(f"{base}/files/{file.sha256}/{quote(file.filename, safe='+')}", sink)
        if problem is None and digest.hexdigest() != file.sha256:
            problem = f"hashes to {digest.hexdigest()}"
        return file, problem, sizes[0]

    with ThreadPoolExecutor(LOCK_FETCHES) as pool:
        for file, problem, size in pool.map(fetch, locked):
            progress.update(f"{outcome.label}: {file.filename}")
            if problem is None:
                outcome.files[file.sha256] = size
            else:
                outcome.errors.append(f"{file.filename}: {problem}")
    return outcome


def _get(url: str, sink: Callable[[bytes], object]) -> str | None:
    """GET `url` from warm's own proxy into `sink`; None, or why it failed."""
    try:
        ask = urllib.request.Request(url, headers={"Accept": _ACCEPT})  # noqa: S310 (loopback)
        with urllib.request.urlopen(ask, timeout=300) as response:  # noqa: S310
            while chunk := response.read(1024 * 1024):
                sink(chunk)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except OSError as exc:
        return str(exc)
    return None


def _keep(store: Store, outcome: Outcome, *, pin: bool, progress: Progress) -> None:
    """Wait for the proxy to publish the step's files and pin them (unless `pin` is
    False); a file the cache does not hold becomes an error. Reports the step."""
    end = time.monotonic() + COMMIT_DEADLINE
    grants = Grants(store.access)
    for sha in list(outcome.files):
        if not _committed(store, sha, end) or (pin and not store.pin(sha)):
            outcome.errors.append(f"{sha}: downloaded, but the cache does not hold it")
            del outcome.files[sha]
        elif pin:
            # The core metadata the resolver read instead of the wheel: offline, pages
            # advertise it only while it is held, so it is kept with its wheel.
            for metadata in grants.core_metadata(sha):
                store.pin(metadata)
    progress.line(f"warm: {outcome.label}: {len(outcome.files)} files")
    for line in outcome.errors:
        progress.line(f"  {line}")


def _report(outcomes: list[Outcome], pin: bool, progress: Progress) -> int:
    """The total and the failed steps; the exit status."""
    got = {sha: size for outcome in outcomes for sha, size in outcome.files.items()}
    what = "pinned" if pin else "held (not pinned)"
    progress.line(f"{what} {len(got)} files, {human_size(sum(got.values()))}")
    failed = [outcome.label for outcome in outcomes if outcome.errors]
    if failed:
        progress.line(f"warm: failed: {', '.join(failed)}")
        return 1
    return 0


def _committed(store: Store, sha256: str, end: float) -> bool:
    """Whether the proxy published the file: its fill commits just after the last byte
    went out, so give it until `end` (time.monotonic()). A file pip took from elsewhere
    (an index URL in a requirements file) never comes."""
    while not store.has_file(sha256):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class Progress:
    """One line per step; on a terminal, also a status line rewritten in place."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()

    def update(self, text: str) -> None:
        """Show what is going on now (a terminal only)."""
        if self._tty:
            self._out.write(f"\r\x1b[K{text[:150]}")
            self._out.flush()

    def line(self, text: str) -> None:
        """A line that stays."""
        self._out.write(f"\r\x1b[K{text}\n" if self._tty else f"{text}\n")
        self._out.flush()
