"""`export` and `import`: a cache's files, pages and bindings as one streamed, verified tar."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO

from proxy import bundleformat as fmt
from proxy.cache import Store
from proxy.errors import BundleError, CacheError
from proxy.grants import Grants
from proxy.maintenance import human_size

CHUNK = 1024 * 1024
SHOWN_PROBLEMS = 50
"""At most this many bad entries are listed; the rest are counted."""
STAGING_PREFIX = "import-"
_STALE_STAGING = 600.0  # seconds: a staging folder without its lock file is left this long


class Progress:
    """Where export and import say how far they are: on a terminal one line redrawn as
    bytes go by; otherwise one line per step."""

    def __init__(self, out: TextIO, *, verb: str, tty: bool | None = None) -> None:
        self._out, self._verb = out, verb
        self._tty = out.isatty() if tty is None else tty
        self._total = self._done = 0
        self._shown = -1

    def step(self, message: str) -> None:
        """A step begins (or ends): one line."""
        if self._tty and self._shown >= 0:
            self._out.write("\n")
            self._shown = -1
        self._out.write(f"{self._verb}: {message}\n")
        self._out.flush()

    def start(self, total: int) -> None:
        """Bytes to go through from now on."""
        self._total, self._done, self._shown = total, 0, -1

    def advance(self, size: int) -> None:
        """`size` more bytes went through (redraws the bar on a terminal, at each percent)."""
        self._done += size
        percent = 100 * self._done // self._total if self._total else 100
        if self._tty and percent != self._shown:
            self._shown = percent
            bar = "#" * (percent // 4)
            done, total = human_size(self._done), human_size(self._total)
            self._out.write(f"\r{self._verb}: [{bar:<25}] {percent:3d}% {done} of {total}")
            self._out.flush()


@dataclass(frozen=True, slots=True)
class Exported:
    """What an export wrote."""

    files: int
    bytes: int
    pages: int
    bindings: int


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


def export_bundle(
    store: Store,
    grants: Grants,
    out: IO[bytes],
    *,
    pinned_only: bool = False,
    scope_keys: tuple[str, ...] = (),
    progress: Progress,
    clock: Callable[[], float] = time.time,
) -> Exported:
    """Write a bundle of the cache to `out`: every file (or the pinned ones, or those bound
    to `scope_keys`, or both), the pages and bindings of public owners, and the manifest.

    Personal owners (passthrough's per-credential records) are left out: their keys hash
    credentials with this cache's secret salt. BundleError if a file changes meanwhile.
    """
    owners = _selected(scope_keys)
    bindings = [(o, files) for o, files in grants.bindings() if owners(o)]
    bound = {sha256 for _, files in bindings for sha256, _ in files}
    chosen = [
        fmt.BundledFile(file.sha256, file.size, file.pinned)
        for file in store.iter_files()  # least recently used first: keeps diskcache's order
        if (file.pinned or not pinned_only) and (not scope_keys or file.sha256 in bound)
    ]
    manifest = fmt.Manifest(created=clock(), files=tuple(chosen))
    shas = frozenset(file.sha256 for file in chosen)
    progress.step(f"{len(chosen)} files, {human_size(manifest.size)}")
    # copybufsize (TarFile's own, missing from typeshed): copy files in 1 MiB reads.
    open_tar: Any = tarfile.open
    with open_tar(fileobj=out, mode="w|", bufsize=CHUNK, copybufsize=CHUNK) as tar:
        _add(tar, fmt.MANIFEST, io.BytesIO(fmt.manifest_to_json(manifest)), manifest.created)
        progress.start(manifest.size)
        for file in chosen:
            _add_file(tar, store, file, manifest.created, progress)
        pages = _spooled(
            fmt.page_to_json(key, stored)
            for key, stored in store.iter_pages()
            if owners(key.split("|", 1)[0])
        )
        with pages as (lines, count):
            progress.step(f"{count} pages")
            _add(tar, fmt.PAGES, lines, manifest.created)
        kept = (
            (o, [(s, n) for s, n in files if s in shas], grants.accepted(o))
            for o, files in bindings
        )
        records = _spooled(fmt.binding_to_json(o, fs, when) for o, fs, when in kept if fs)
        with records as (lines, bound_count):
            progress.step(f"{bound_count} bindings")
            _add(tar, fmt.BINDINGS, lines, manifest.created)
    return Exported(len(chosen), manifest.size, count, bound_count)


def _selected(scope_keys: tuple[str, ...]) -> Callable[[str], bool]:
    def selected(owner: str) -> bool:
        public = fmt.is_public_owner(owner)
        return public and (not scope_keys or fmt.in_scopes(owner, scope_keys))

    return selected


@contextlib.contextmanager
def _spooled(lines: Iterable[bytes]) -> Iterator[tuple[IO[bytes], int]]:
    """The lines in a temporary file (a tar member needs its size first), and their count."""
    with tempfile.SpooledTemporaryFile(max_size=CHUNK) as spool:
        count = 0
        for line in lines:
            spool.write(line)
            count += 1
        spool.seek(0)
        yield spool, count


def _add(tar: tarfile.TarFile, name: str, data: IO[bytes], mtime: float) -> None:
    data.seek(0, os.SEEK_END)
    info = _info(name, data.tell(), mtime)
    data.seek(0)
    tar.addfile(info, data)


def _info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    return info


class _Hashing(io.RawIOBase):
    """A file read through once, hashed on the way, counted in the progress."""

    def __init__(self, handle: IO[bytes], progress: Progress) -> None:
        self._handle, self._progress = handle, progress
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self.digest.update(chunk)
        self._progress.advance(len(chunk))
        return chunk


def _add_file(
    tar: tarfile.TarFile, store: Store, file: fmt.BundledFile, mtime: float, progress: Progress
) -> None:
    handle = store.open_file(file.sha256, use=False)
    if handle is None:
        raise BundleError(f"{file.sha256} left the cache during the export; export again")
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size != file.size:
            raise BundleError(f"{file.sha256} changed size during the export; export again")
        reader = _Hashing(handle, progress)
        tar.addfile(_info(fmt.FILES + file.sha256, size, mtime), reader)
    if reader.digest.hexdigest() != file.sha256:
        raise BundleError(f"{file.sha256} is corrupt in the cache; run `cache verify`")


# -- import ------------------------------------------------------------------------------


def export_to(target: str, export: Callable[[IO[bytes]], Exported]) -> Exported:
    """Run `export` into the file `target` ("-": standard output), written as target.tmp
    and renamed when complete (removed on failure)."""
    if target == "-":
        return export(sys.stdout.buffer)
    partial = Path(target + ".tmp")
    try:
        with open(partial, "wb") as out:
            exported = export(out)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return exported


def import_bundle(
    store: Store, grants: Grants, source: BinaryIO, *, progress: Progress
) -> Imported:
    """Verify a whole bundle from `source`, then merge it into the cache.

    Files are staged under the cache's tmp folder while hashed; nothing becomes visible
    unless every file matches the manifest, every member is expected and every page and
    binding checks out (else BundleError with the bad entries, and the staging is removed).
    Then files are committed one by one (pinned as the manifest says), then pages (the
    newer of two kept), then bindings: an interruption leaves nothing that points to a
    missing file.
    """
    _sweep_staging(store.tmp)
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
                problem = _unexpected(member, seen, expected)
                if problem is not None:
                    problems.append(problem)
                    continue
                seen.add(member.name)
                if member.name in (fmt.PAGES, fmt.BINDINGS):
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
    for name in (fmt.PAGES, fmt.BINDINGS):
        if name not in meta:
            problems.append(f"{name}: missing from the bundle")
        else:
            problems += _check_lines(meta[name], name, frozenset(expected))
    if problems:
        raise BundleError("the bundle was refused; the cache is unchanged", tuple(problems))
    return _Checked(manifest, staged, meta[fmt.PAGES], meta[fmt.BINDINGS])


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
    member: tarfile.TarInfo, seen: set[str], expected: dict[str, fmt.BundledFile]
) -> str | None:
    """Why a member has no place in a bundle, or None. Only regular files of known names:
    no links, folders, devices, or paths that lead anywhere else."""
    name = member.name
    known = name in (fmt.PAGES, fmt.BINDINGS) or (
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


def _check_lines(path: Path, name: str, held: frozenset[str]) -> list[str]:
    problems = []
    try:
        for number, line in enumerate(_lines(path), 1):
            try:
                if name == fmt.PAGES:
                    fmt.page_from_json(line)
                else:
                    fmt.binding_from_json(line, held)
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
    held = frozenset(file.sha256 for file in checked.manifest.files)
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


def _sweep_staging(tmp: Path) -> None:
    """Remove staging folders of imports that died (their lock is free)."""
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
