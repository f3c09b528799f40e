"""`import`: a bundle verified whole while staged, then merged into the cache."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from proxy import bundleformat as fmt
from proxy.bundles import CHUNK, Progress
from proxy.cache import Store
from proxy.errors import BundleError, CacheError
from proxy.grants import Grants
from proxy.maintenance import human_size

STAGING_PREFIX = "import-"
_STALE_STAGING = 600.0  # seconds: a staging folder without its lock file is left this long


@dataclass(frozen=True, slots=True)
class Imported:
    """What an import brought in."""

    files: int
    bytes: int
    new_files: int
    pages: int
    bindings: int
    evicted: int = 0


# -- export ------------------------------------------------------------------------------


def import_bundle(
    store: Store, grants: Grants, source: BinaryIO, *, progress: Progress
) -> Imported:
    """Verify a whole bundle from `source`, then merge it into the cache.

    Files are staged under the cache's tmp folder while hashed; nothing becomes visible
    unless every file matches the manifest, every member is expected and every page and
    binding checks out (else BundleError with the bad entries, and the staging is removed).
    Then files are committed one by one (pinned as the manifest says), then the sources
    of followed public files, then pages (the newer of two kept), then bindings: an
    interruption leaves nothing that points to a missing file.
    """
    sweep_staging(store.tmp)
    with _staging(store.tmp) as staging:
        checked = _check(store, source, staging, progress)
        return _commit(store, grants, checked, progress)


@dataclass(frozen=True, slots=True)
class _Checked:
    manifest: fmt.Manifest
    staged: dict[str, Path]
    """sha256 -> staged bytes, for files the cache lacks (or holds unpinned, pinned here)."""
    pages: Path
    bindings: Path
    sources: Path | None
    """None: a bundle of format 1, which has no sources member."""
    bound: frozenset[tuple[str, str]]
    """Every (sha256, filename) pair the bundle binds."""


def _check(store: Store, source: BinaryIO, staging: Path, progress: Progress) -> _Checked:
    problems: list[str] = []
    staged: dict[str, Path] = {}
    seen: set[str] = set()
    meta: dict[str, Path] = {}
    try:
        tar = tarfile.open(fileobj=source, mode="r|", bufsize=CHUNK)  # noqa: SIM115 - closed below
        members = iter(tar)
        manifest = _manifest(tar, next(members, None))
    except tarfile.TarError as exc:
        raise BundleError(f"not a bundle: {exc}") from exc
    expected = {file.sha256: file for file in manifest.files}
    progress.step(f"{len(manifest.files)} files, {human_size(manifest.size)} to verify")
    progress.start(manifest.size)
    try:
        with tar:
            for member in members:
                problem = _unexpected(member, seen, expected, manifest.members)
                if problem is not None:
                    problems.append(problem)
                    continue
                seen.add(member.name)
                if member.name in manifest.members:
                    meta[member.name] = _stage(tar, member, staging, progress=None)[0]
                    continue
                file = expected[member.name.removeprefix(fmt.FILES)]
                if member.size != file.size:
                    problems.append(
                        f"{member.name}: {member.size} bytes, the manifest says {file.size}"
                    )
                    progress.advance(file.size)
                    continue
                keep = not store.has_file(file.sha256) or (
                    file.pinned and not store.is_pinned(file.sha256)
                )
                path, digest = _stage(tar, member, staging if keep else None, progress=progress)
                if digest != file.sha256:
                    problems.append(f"{member.name}: its bytes hash to {digest}")
                elif keep:
                    staged[file.sha256] = path
    except tarfile.TarError as exc:
        problems.append(f"the bundle breaks off or is damaged: {exc}")
    except OSError as exc:
        raise BundleError(f"cannot stage the bundle in {staging}: {exc.strerror}") from exc
    for sha256 in expected.keys() - {name.removeprefix(fmt.FILES) for name in seen}:
        problems.append(f"{fmt.FILES}{sha256}: missing from the bundle")
    held, bound = frozenset(expected), set[tuple[str, str]]()
    for name in manifest.members:
        if name not in meta:
            problems.append(f"{name}: missing from the bundle")
        else:
            problems += _check_lines(meta[name], name, held, bound)
    if problems:
        raise BundleError("the bundle was refused; the cache is unchanged", tuple(problems))
    pages, bindings = meta[fmt.PAGES], meta[fmt.BINDINGS]
    sources = meta.get(fmt.SOURCES)
    return _Checked(manifest, staged, pages, bindings, sources, frozenset(bound))


def _manifest(tar: tarfile.TarFile, member: tarfile.TarInfo | None) -> fmt.Manifest:
    if member is None or member.name != fmt.MANIFEST or not _regular(member):
        raise BundleError(f"not a bundle: its first member is not {fmt.MANIFEST}")
    if member.size > fmt.MAX_MANIFEST_BYTES:
        raise BundleError(f"{fmt.MANIFEST} is larger than {fmt.MAX_MANIFEST_BYTES} bytes")
    reader = tar.extractfile(member)
    assert reader is not None  # a regular file
    try:
        return fmt.manifest_from_json(reader.read())
    except fmt.Invalid as exc:
        raise BundleError("the bundle was refused; the cache is unchanged", (str(exc),)) from exc


def _regular(member: tarfile.TarInfo) -> bool:
    return member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not member.sparse


def _unexpected(
    member: tarfile.TarInfo,
    seen: set[str],
    expected: dict[str, fmt.BundledFile],
    records: tuple[str, ...],
) -> str | None:
    """Why a member has no place in a bundle, or None. Only regular files of known names:
    no links, folders, devices, or paths that lead anywhere else."""
    name = member.name
    known = name in records or (
        name.startswith(fmt.FILES) and name.removeprefix(fmt.FILES) in expected
    )
    if not known:
        return f"{name!r}: not a member of a bundle (or a file the manifest does not list)"
    if not _regular(member):
        return f"{name}: not a regular file"
    if name in seen:
        return f"{name}: appears twice"
    return None


def _stage(
    tar: tarfile.TarFile, member: tarfile.TarInfo, folder: Path | None, *, progress: Progress | None
) -> tuple[Path, str]:
    """Copy a member into a new file in `folder` while hashing it (only hash when None)."""
    reader = tar.extractfile(member)
    assert reader is not None  # a regular file
    digest = hashlib.sha256()
    path = Path(os.devnull)
    out: IO[bytes]
    if folder is None:
        out = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    else:
        fd, name = tempfile.mkstemp(dir=folder)
        out, path = os.fdopen(fd, "wb"), Path(name)
    with out, reader:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            if progress is not None:
                progress.advance(len(chunk))
    return path, digest.hexdigest()


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as lines:
        while line := lines.readline(fmt.MAX_LINE_BYTES + 1):
            if len(line) > fmt.MAX_LINE_BYTES:
                raise fmt.Invalid(f"a record is larger than {fmt.MAX_LINE_BYTES} bytes")
            yield line


def _check_lines(
    path: Path, name: str, held: frozenset[str], bound: set[tuple[str, str]]
) -> list[str]:
    """The problems of one record member; the bindings member adds its pairs to `bound`
    (checked before the sources member, whose records may name only those)."""
    problems = []
    try:
        for number, line in enumerate(_lines(path), 1):
            try:
                if name == fmt.PAGES:
                    fmt.page_from_json(line)
                elif name == fmt.BINDINGS:
                    bound.update(fmt.binding_from_json(line, held)[1])
                else:
                    fmt.source_from_json(line, held, bound)
            except fmt.Invalid as exc:
                problems.append(f"{name} line {number}: {exc}")
    except fmt.Invalid as exc:
        problems.append(f"{name}: {exc}")
    return problems


def _commit(store: Store, grants: Grants, checked: _Checked, progress: Progress) -> Imported:
    progress.step(f"verified; adding {len(checked.staged)} new files to the cache")
    progress.start(sum(f.size for f in checked.manifest.files if f.sha256 in checked.staged))
    evicted = added = 0
    try:
        for file in checked.manifest.files:
            path = checked.staged.get(file.sha256)
            if path is None:
                continue
            evicted += store.put_file(file.sha256, path, pinned=file.pinned)
            path.unlink()
            added += 1
            progress.advance(file.size)
    except CacheError as exc:
        raise BundleError(
            f"stopped after {added} of {len(checked.staged)} new files, before any page or "
            f"binding ({exc}); the cache holds only verified files; import again"
        ) from exc
    # Before pages and bindings: a followed file's core metadata is never advertised
    # (its file is held) without the record that lets it be served.
    sources = 0
    held = frozenset(file.sha256 for file in checked.manifest.files)
    for line in _lines(checked.sources) if checked.sources is not None else ():
        record = fmt.source_from_json(line, held, checked.bound)
        if isinstance(record, fmt.PublicRecord):
            grants.see_public(record.sha256)
        else:
            grants.add_sources({(record.sha256, record.filename): record.url})
            sources += 1
    progress.step(f"{sources} sources of public files")
    pages = 0
    for line in _lines(checked.pages):
        key, name, stored = fmt.page_from_json(line)
        owner, rest = key.split("|", 1)
        # What GitLab gives anyone may be served to every caller of open and tokens modes.
        for target in dict.fromkeys((key, f"{fmt.plain_owner(owner)}|{rest}")):
            known = store.get_page(target)
            if known is None or known.fetched_at < stored.fetched_at:
                store.put_page(target, stored, name=name)
        pages += 1
    progress.step(f"{pages} pages")
    bindings = 0
    for line in _lines(checked.bindings):
        owner, files, accepted = fmt.binding_from_json(line, held)
        for target in dict.fromkeys((owner, fmt.plain_owner(owner))):
            grants.bind(target, files)
        before = grants.accepted(owner) if owner.endswith(fmt.ANYONE) else None
        if accepted is not None and owner.endswith(fmt.ANYONE) and (before or 0.0) < accepted:
            grants.accept(owner, accepted)
        bindings += 1
    progress.step(f"{bindings} bindings")
    return Imported(
        files=len(checked.manifest.files),
        bytes=checked.manifest.size,
        new_files=added,
        pages=pages,
        bindings=bindings,
        evicted=evicted,
    )


@contextlib.contextmanager
def _staging(tmp: Path) -> Iterator[Path]:
    """A folder of its own under the cache's tmp, locked while in use, always removed."""
    folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=tmp))
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def sweep_staging(tmp: Path) -> None:
    """Remove staging folders of imports that died (their lock is free); run at `serve` start."""
    for folder in tmp.glob(STAGING_PREFIX + "*"):
        try:
            fd = os.open(folder / ".lock", os.O_RDWR)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - folder.stat().st_mtime > _STALE_STAGING:
                    shutil.rmtree(folder, ignore_errors=True)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live import
        else:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
