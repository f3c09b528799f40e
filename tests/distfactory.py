"""Real, installable distribution files built in memory for tests."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import re
import tarfile
import zipfile

# Fixed timestamps make the same inputs give the same bytes (and so the same sha256).
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)
_TAR_MTIME = 1577836800


def escaped_name(name: str) -> str:
    """Binary distribution format: "normalise the name (PEP 503) and replace - with _"."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _metadata(
    name: str, version: str, requires_python: str | None, requires: tuple[str, ...] = ()
) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python is not None:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    return "\n".join(lines) + "\n\n"


def _record_hash(data: bytes) -> str:
    # RECORD: "sha256=" + urlsafe base64 of the digest "with trailing = removed".
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def make_wheel(
    name: str, version: str, *, requires_python: str | None = None, requires: tuple[str, ...] = ()
) -> tuple[str, bytes]:
    """Return (filename, bytes) of a pure-python py3-none-any wheel with one package that
    depends on `requires` (PEP 508 requirements)."""
    stem = escaped_name(name)
    wheel_version = version.replace("-", "_")
    dist_info = f"{stem}-{wheel_version}.dist-info"
    members: list[tuple[str, bytes]] = [
        (f"{stem}/__init__.py", f'__version__ = "{version}"\n'.encode()),
        (f"{dist_info}/METADATA", _metadata(name, version, requires_python, requires).encode()),
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: distfactory\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
        ),
    ]
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in members)
    members.append((f"{dist_info}/RECORD", (record + f"{dist_info}/RECORD,,\n").encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, data in members:
            info = zipfile.ZipInfo(path, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return f"{stem}-{wheel_version}-py3-none-any.whl", buffer.getvalue()


def make_sdist(name: str, version: str) -> tuple[str, bytes]:
    """Return (filename, bytes) of a .tar.gz sdist built by setuptools' PEP 517 backend."""
    stem = escaped_name(name)
    base = f"{stem}-{version}"
    pyproject = (
        '[build-system]\nrequires = ["setuptools>=61"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n\n'
        f'[tool.setuptools]\npackages = ["{stem}"]\n'
    )
    members = [
        (f"{base}/PKG-INFO", _metadata(name, version, None).encode()),
        (f"{base}/pyproject.toml", pyproject.encode()),
        (f"{base}/{stem}/__init__.py", f'__version__ = "{version}"\n'.encode()),
    ]
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for path, data in members:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = _TAR_MTIME
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return f"{base}.tar.gz", buffer.getvalue()
