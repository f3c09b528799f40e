"""Cache hits and misses counted per proxy process, kept in <cache dir>/stats for `cache stats`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

log = logging.getLogger("proxy.tally")
DIRECTORY = "stats"
"""Under the cache directory: one file per running process, and totals.json."""
TOTALS = "totals.json"
HITS = frozenset({"HIT", "STALE", "REVALIDATED"})
"""X-Cache values whose body came from the cache (STALE and REVALIDATED: pages only)."""
PAGE_ROUTES = frozenset({"page", "index"})
_OWN = (".json", ".lock")  # a process's counts, and the lock it holds while it runs


@dataclass(frozen=True, kw_only=True)
class Counts:
    """Answered file and page requests (2xx and 3xx; a refusal or an error is neither a
    hit nor a miss), and the file bytes sent."""

    file_requests: int = 0
    file_hits: int = 0
    page_requests: int = 0
    page_hits: int = 0
    bytes_from_cache: int = 0
    bytes_from_gitlab: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in _FIELDS})

    @classmethod
    def from_json(cls, data: object) -> Counts:
        """Counts from a stats file's object; fields it lacks (or garbles) count 0."""
        if not isinstance(data, dict):
            return cls()
        found = {f.name: data.get(f.name) for f in _FIELDS}
        return cls(**{k: v for k, v in found.items() if isinstance(v, int) and v >= 0})


_FIELDS = fields(Counts)


class Tally:
    """This process's counters, bumped by the event loop for each response it sends."""

    def __init__(self) -> None:
        self._values = dict.fromkeys((f.name for f in _FIELDS), 0)

    def response(self, route: str, status: int, cache: str) -> Callable[[int], None]:
        """Count a response of `route` kind; returns what to call with each body chunk's size."""
        if status >= 400 or (route != "file" and route not in PAGE_ROUTES):
            return _ignore
        hit = cache in HITS
        kind = "file" if route == "file" else "page"
        self._values[f"{kind}_requests"] += 1
        self._values[f"{kind}_hits"] += hit
        if kind == "page":
            return _ignore
        source = "bytes_from_cache" if hit else "bytes_from_gitlab"

        def count(size: int) -> None:
            self._values[source] += size

        return count

    def counts(self) -> Counts:
        """What was counted so far."""
        return Counts(**self._values)


def _ignore(size: int) -> None:
    pass


class Ledger:
    """Writes a Tally to this process's file in the stats directory every `interval`
    seconds (from a thread of its own) and, at close(), folds it into the totals.

    While it runs, the Ledger holds a lock on a `.lock` file beside its own; the kernel
    drops that lock when the process dies, however it dies, so start() can tell the
    files that killed processes left and fold them. Failing to write is logged, never
    raised: counting is not serving.
    """

    def __init__(self, tally: Tally, cache_dir: Path, *, interval: float = 5.0) -> None:
        self._tally = tally
        self._directory = cache_dir / DIRECTORY
        self._interval = interval
        self._host = socket.gethostname()
        name = f"{self._host}-{os.getpid()}-{secrets.token_hex(4)}"
        self._file = self._directory / f"{name}.json"
        self._held: int | None = None  # the descriptor holding the lock on `name`.lock
        self._written = Counts()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tally", daemon=True)

    def __repr__(self) -> str:
        return f"Ledger({str(self._file)!r})"

    def start(self) -> None:
        """Fold the files of dead processes, then write every `interval` seconds."""
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            with _locked(self._directory, exclusive=True):
                left = {p.stem for p in self._directory.glob("*-*-*.*") if p.suffix in _OWN}
                for name in left:
                    if _ended(self._directory / f"{name}.json"):
                        _fold(self._directory, self._directory / f"{name}.json")
                # Under the directory's lock, so that no other start() finds it unlocked.
                self._held = _hold(self._file.with_suffix(".lock"))
        except OSError as exc:
            log.warning("cannot keep request counts in %s: %s", self._directory, exc)
            return
        self._thread.start()

    def close(self) -> None:
        """Stop writing, add this process's counts to the totals and remove its file."""
        if self._held is None:
            return
        self._stop.set()
        self._thread.join()
        try:
            _write(self._file, self._host, self._tally.counts())
            with _locked(self._directory, exclusive=True):
                _fold(self._directory, self._file)
        except OSError as exc:
            log.warning("cannot keep request counts in %s: %s", self._directory, exc)
        finally:
            os.close(self._held)
            self._held = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            counts = self._tally.counts()
            if counts == self._written:
                continue
            try:
                _write(self._file, self._host, counts)
            except OSError as exc:
                log.warning("cannot keep request counts in %s: %s", self._directory, exc)
            else:
                self._written = counts


def _hold(path: Path) -> int:
    """A descriptor of `path` (created) holding an exclusive lock on it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _ended(path: Path) -> bool:
    """Whether the process that writes `path` is gone: nobody holds its lock (a lock held
    by another Ledger of this same process counts too: flock locks belong to open files)."""
    try:
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def recorded(cache_dir: Path) -> Counts:
    """Everything counted in `cache_dir`: the totals plus every running process's file.
    Nothing is created where there is no stats directory yet."""
    directory = cache_dir / DIRECTORY
    if not directory.is_dir():
        return Counts()
    with _locked(directory, exclusive=False):
        total = Counts.from_json(_load(directory / TOTALS))
        for path in directory.glob("*-*-*.json"):
            total += Counts.from_json(_load(path))
    return total


@contextlib.contextmanager
def _locked(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """Readers share, folders exclude: a sum never sees a file counted twice or not at all.

    A reader opens the lock read-only, and reads without it where it may not (`cache
    stats` run by another user) or before any proxy has made it.
    """
    path = directory / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if exclusive else os.open(path, 0)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _fold(directory: Path, path: Path) -> None:
    """Add a process's file to the totals, then remove it and its lock file (under the
    directory's exclusive lock)."""
    data = _load(path)
    if data is not None:
        total = Counts.from_json(_load(directory / TOTALS)) + Counts.from_json(data)
        _replace(directory / TOTALS, asdict(total))
    path.unlink(missing_ok=True)
    path.with_suffix(".lock").unlink(missing_ok=True)


def _write(path: Path, host: str, counts: Counts) -> None:
    _replace(path, {"host": host, "pid": os.getpid(), **asdict(counts)})


def _load(path: Path) -> object:
    """A stats file's JSON, or None when it is gone or not JSON."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _replace(path: Path, data: dict[str, object]) -> None:
    """Write to a temp file beside `path`, then rename it over `path`."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".stats-")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
            os.fchmod(out.fileno(), 0o644)  # counts only: `cache stats` may run as anyone
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
