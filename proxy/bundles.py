"""`export`: a cache's files, pages and bindings as one streamed tar (format in bundleformat)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

from proxy import bundleformat as fmt
from proxy.cache import Store
from proxy.errors import BundleError
from proxy.grants import Grants
from proxy.maintenance import human_size

CHUNK = 1024 * 1024
SHOWN_PROBLEMS = 50
"""At most this many bad entries are listed; the rest are counted."""


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
    to `scope_keys`, or both), the pages and bindings of public owners, and the manifest;
    for files of followed public pages, their sources, their core metadata files and
    whether their bytes were verified as public.

    Personal owners (passthrough's per-credential records) are left out: their keys hash
    credentials with this cache's secret salt. BundleError if a file changes meanwhile.
    """
    owners = _selected(scope_keys)
    bindings = [(o, files) for o, files in grants.bindings() if owners(o)]
    bound = {sha256 for _, files in bindings for sha256, _ in files}
    held = list(store.iter_files())  # least recently used first: keeps diskcache's order
    wanted = {
        file.sha256
        for file in held
        if (file.pinned or not pinned_only) and (not scope_keys or file.sha256 in bound)
    }
    sources = _sources(grants, bindings, wanted)
    # A followed wheel's core metadata travels with it: a file of its own, named by hash.
    wanted |= {sha for s in sources if (sha := fmt.metadata_sha256(s.url)) is not None}
    chosen = [
        fmt.BundledFile(file.sha256, file.size, file.pinned)
        for file in held
        if file.sha256 in wanted
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
        public = [fmt.PublicRecord(sha) for sha in shas if grants.seen_public(sha)]
        listed: list[fmt.SourceRecord | fmt.PublicRecord] = [*sources, *public]
        records = _spooled(fmt.source_to_json(record) for record in listed)
        with records as (lines, _):
            _add(tar, fmt.SOURCES, lines, manifest.created)
    return Exported(len(chosen), manifest.size, count, bound_count)


def _sources(
    grants: Grants,
    bindings: list[tuple[str, frozenset[tuple[str, str]]]],
    shas: set[str],
) -> list[fmt.SourceRecord]:
    """The public sources of the bound pairs of these files (EE forward/ paths stay:
    they are GitLab's, asked with a caller's credentials, and only while online)."""
    pairs = dict.fromkeys(pair for _, files in bindings for pair in files if pair[0] in shas)
    found = ((pair, grants.source(*pair)) for pair in sorted(pairs))
    return [
        fmt.SourceRecord(sha256, filename, url)
        for (sha256, filename), url in found
        if url is not None and url.startswith(("https://", "http://"))
    ]


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
