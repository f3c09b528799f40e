"""The index files a uv.lock or pylock.toml lists: project, file name and sha256 of each."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from proxy.errors import ConfigError
from proxy.models import NormalizedName, normalize, valid_filename, valid_sha256


@dataclass(frozen=True, slots=True)
class LockedFile:
    """One distribution file a lock file pins, as the index serves it."""

    project: NormalizedName
    filename: str
    sha256: str  # lower-case hex


def is_lock_file(path: Path) -> bool:
    """True for uv.lock and PEP 751 lock files ("pylock.toml" or "pylock.<name>.toml")."""
    name = path.name
    return name == "uv.lock" or (name.startswith("pylock.") and name.endswith(".toml"))


def locked_files(path: Path) -> list[LockedFile]:
    """Every wheel and sdist with a URL that the lock file lists, for any platform.

    Entries without a URL (the project itself, local paths, VCS checkouts) are not
    index files and are left out. A file that cannot be read, or a listed file without
    a sha256, is a ConfigError naming the lock file.
    """
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: is not valid TOML ({exc})") from exc
    # uv.lock: [[package]] with name, sdist = {url, hash = "sha256:..."}, wheels = [{...}].
    # PEP 751: [[packages]] with name, sdist = {url, name, hashes = {sha256 = ...}},
    # wheels = [{url, name, hashes}]; "archive", "vcs" and "directory" are no index files.
    entries = _entries(data.get("package" if path.name == "uv.lock" else "packages"))
    found: dict[str, LockedFile] = {}
    for project, entry in entries:
        url = entry.get("url")
        if not isinstance(url, str):
            continue
        filename = entry.get("name") or unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        sha256 = _sha256(entry)
        if not isinstance(filename, str) or not valid_filename(filename):
            raise ConfigError(f"{path}: {url} does not end in a distribution file name")
        if sha256 is None:
            raise ConfigError(f"{path}: {filename} has no sha256 hash")
        found.setdefault(sha256, LockedFile(normalize(project), filename, sha256))
    return list(found.values())


def _entries(packages: object) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if not isinstance(packages, list):
        return
    for package in packages:
        if not isinstance(package, dict) or not isinstance(package.get("name"), str):
            continue
        files = [package.get("sdist"), *(package.get("wheels") or [])]
        for entry in files:
            if isinstance(entry, dict):
                yield package["name"], entry


def _sha256(entry: Mapping[str, Any]) -> str | None:
    hashes = entry.get("hashes")
    if isinstance(hashes, dict):  # PEP 751
        value = hashes.get("sha256")
    else:  # uv.lock: "sha256:<hex>"
        algorithm, _, value = str(entry.get("hash", "")).partition(":")
        value = value if algorithm == "sha256" else None
    return value.lower() if isinstance(value, str) and valid_sha256(value) else None
