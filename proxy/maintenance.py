"""The operator commands behind `gitlab-pypi-proxy cache stats | verify | prune`."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TextIO

from proxy.cache import Store
from proxy.errors import ConfigError
from proxy.grants import Grants
from proxy.retention import StoredFile
from proxy.settings import Settings
from proxy.stores import make_store
from proxy.tally import Counts

DAY = 86_400.0  # seconds
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def open_store(settings: Settings) -> Store:
    """The Store in cache.dir, its files where settings.storage says; ConfigError when
    cache.dir is not a directory (none is created)."""
    if not settings.cache.dir.is_dir():
        shown = json.dumps(str(settings.cache.dir))
        raise ConfigError(f"cache.dir: {shown} is not a directory (expected the proxy's cache)")
    return make_store(settings)


def stats(store: Store, out: TextIO, *, max_size: int, served: Counts) -> int:
    """Print what the cache holds and what the proxies using it `served`, one fact a
    line; returns 0."""
    held = store.stats()
    print(f"files: {held.files}", file=out)
    print(f"pinned files: {held.pinned}", file=out)
    print(f"pages: {held.pages}", file=out)
    print(f"bytes: {held.bytes} ({human_size(held.bytes)})", file=out)
    print(f"page bytes: {held.page_bytes} ({human_size(held.page_bytes)})", file=out)
    print(f"access records: {held.access_records} ({human_size(held.access_bytes)})", file=out)
    print(f"total bytes: {held.total_bytes} ({human_size(held.total_bytes)})", file=out)
    print(
        f"max size: {max_size} ({human_size(max_size)}, for files, pages and access records;"
        " pinned files not counted)",
        file=out,
    )
    print(f"hit ratio: {hit_ratio(served)}", file=out)
    from_cache, from_gitlab = served.bytes_from_cache, served.bytes_from_gitlab
    print(
        f"file bytes served: {human_size(from_cache)} from the cache, "
        f"{human_size(from_gitlab)} from GitLab",
        file=out,
    )
    return 0


def verify(store: Store, out: TextIO) -> int:
    """Re-hash every file, print and drop the corrupt ones; returns 1 if there were any, else 0."""
    checked = corrupt = 0
    for file in store.iter_files():  # least recently used first, as Store.check asks
        checked += 1
        problem = store.check(file.sha256)
        if problem is not None:
            corrupt += 1
            print(f"corrupt: {file.sha256}: {problem} (dropped)", file=out)
    print(f"verified {checked} files: {checked - corrupt} intact, {corrupt} corrupt", file=out)
    return 1 if corrupt else 0


def prune(store: Store, out: TextIO, *, older_than_days: float | None, to_size: int | None) -> int:
    """Remove pages, access records and unpinned files unused for `older_than_days`, then
    the least recently used files down to `to_size` bytes (everything counted); print each
    file removed and a total. Returns 0.
    """

    def report(file: StoredFile) -> None:
        used = datetime.fromtimestamp(file.last_used, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"removed: {file.sha256} ({human_size(file.size)}, last used {used})", file=out)

    older_than = None if older_than_days is None else older_than_days * DAY
    files, size = store.prune(older_than, to_size, on_remove=report)
    if older_than is not None:
        records = Grants(store.access).prune(accepted_before=time.time() - older_than)
        if records:
            print(f"pruned {records} access records", file=out)
    print(f"pruned {files} files, {size} bytes ({human_size(size)})", file=out)
    return 0


def hit_ratio(served: Counts) -> str:
    """For people: "87.5% of 1,234 file requests (pages: 92.0% of 456)", or "unknown (...)"."""
    if not served.file_requests and not served.page_requests:
        return "unknown (no requests yet)"
    files = _share(served.file_hits, served.file_requests, " file requests")
    return f"{files} (pages: {_share(served.page_hits, served.page_requests, '')})"


def _share(hits: int, requests: int, what: str) -> str:
    if not requests:
        return f"no{what or ' requests'} yet"
    return f"{100 * hits / requests:.1f}% of {requests:,}{what}"


def human_size(size: int) -> str:
    """A size in binary units for people: "512 B", "1.5 GiB"."""
    exponent = 0
    while exponent < len(_UNITS) - 1 and size >= 1024 ** (exponent + 1):
        exponent += 1
    if exponent == 0:
        return f"{size} B"
    return f"{size / 1024**exponent:.1f} {_UNITS[exponent]}"
