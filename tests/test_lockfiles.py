"""lockfiles: the index files of uv.lock and PEP 751 pylock.toml, with their sha256."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.lockfiles import LockedFile, is_lock_file, locked_files

A = "a" * 64
B = "b" * 64
UV_LOCK = f"""
version = 1
requires-python = ">=3.11"

[[package]]
name = "app"
version = "0.1.0"
source = {{ editable = "." }}
dependencies = [{{ name = "Demo.Pkg" }}]

[[package]]
name = "Demo.Pkg"
version = "1.0"
source = {{ registry = "https://gitlab.example.com/api/v4/projects/42/packages/pypi/simple" }}
sdist = {{ url = "https://h/files/{A}/demo_pkg-1.0.tar.gz", hash = "sha256:{A}" }}
wheels = [
    {{ url = "https://h/files/{B}/demo_pkg-1.0-py3-none-any.whl", hash = "sha256:{B.upper()}" }},
]
"""


def test_uv_lock_lists_every_sdist_and_wheel_of_an_index(tmp_path: Path) -> None:
    """uv.lock: the registry package's sdist and wheel; the editable project itself is left out."""
    path = tmp_path / "uv.lock"
    path.write_text(UV_LOCK)
    assert locked_files(path) == [
        LockedFile("demo-pkg", "demo_pkg-1.0.tar.gz", A),  # type: ignore[arg-type]
        LockedFile("demo-pkg", "demo_pkg-1.0-py3-none-any.whl", B),  # type: ignore[arg-type]
    ]


def test_pylock_takes_the_file_name_from_its_name_key(tmp_path: Path) -> None:
    """pylock.toml: a wheel's `name` is its file name, whatever its URL ends with."""
    path = tmp_path / "pylock.toml"
    path.write_text(
        'lock-version = "1.0"\ncreated-by = "hand"\n[[packages]]\nname = "x"\nversion = "1"\n'
        f'wheels = [{{ url = "https://h/download?id=1", name = "x-1-py3-none-any.whl", '
        f'hashes = {{ sha256 = "{A}" }} }}]\n'
        '[[packages]]\nname = "local"\ndirectory = { path = "." }\n'
    )
    assert locked_files(path) == [LockedFile("x", "x-1-py3-none-any.whl", A)]  # type: ignore[arg-type]


def test_a_listed_file_without_sha256_is_refused(tmp_path: Path) -> None:
    """A file the lock lists with no sha256 cannot be verified: ConfigError naming it."""
    path = tmp_path / "pylock.toml"
    path.write_text(
        '[[packages]]\nname = "x"\n'
        'sdist = { url = "https://h/x-1.tar.gz", hashes = { md5 = "0" } }\n'
    )
    with pytest.raises(ConfigError, match=r"x-1\.tar\.gz has no sha256"):
        locked_files(path)


@pytest.mark.parametrize(
    ("name", "lock"),
    [
        ("uv.lock", True),
        ("pylock.toml", True),
        ("pylock.dev.toml", True),
        ("requirements.txt", False),
    ],
)
def test_lock_files_are_known_by_name(name: str, lock: bool) -> None:
    """uv.lock and pylock[.<name>].toml are lock files; anything else is a requirements file."""
    assert is_lock_file(Path(name)) is lock
