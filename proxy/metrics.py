"""Prometheus metrics of the proxy, summed over its workers (the only prometheus_client import)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE", "SHARED_DIR_ENV", "Metrics", "shared_between_workers"]
PREFIX = "gitlab_pypi_proxy"
SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's own variable: where worker processes keep their counters."""


def shared_between_workers(directory: Path) -> dict[str, str]:
    """Before `serve --workers N` starts its workers: the environment under which their
    counters go to files in `directory` (emptied of a previous run's), so that any
    worker's /-/metrics sums all of them."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    return {SHARED_DIR_ENV: str(directory)}


_GAUGES = {
    "cache_files": "Files held by the cache.",
    "cache_bytes": "Bytes of files held by the cache.",
    "cache_free_bytes": "Bytes free on the cache's disk.",
    "cache_full": "1 when the cache's disk has no room for new files (they are streamed through).",
}


class _CacheSize:
    """Files and bytes the cache holds, and its disk's room, read at each scrape (the same
    for every worker)."""

    def __init__(
        self, size: Callable[[], tuple[int, int]], disk: Callable[[], tuple[int, bool]]
    ) -> None:
        self._size = size
        self._disk = disk

    def describe(self) -> Iterator[Metric]:
        for name, documentation in _GAUGES.items():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", documentation)

    def collect(self) -> Iterator[Metric]:
        files, size = self._size()
        free, full = self._disk()
        values = {"cache_files": files, "cache_bytes": size, "cache_free_bytes": free}
        for name, value in {**values, "cache_full": int(full)}.items():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", _GAUGES[name], value=value)


class _Coordination:
    """Whether this replica coordinates through Redis right now, read at each scrape."""

    NAME = f"{PREFIX}_coordination_redis_up"
    HELP = "1 while Redis answers; 0 while this replica coordinates alone (Redis unreachable)."

    def __init__(self, connected: Callable[[], bool]) -> None:
        self._connected = connected

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.NAME, self.HELP)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.NAME, self.HELP, value=int(self._connected()))


class Metrics:
    """The proxy's counters; labels are fixed small sets, never a URL, name or credential."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests answered, by route and cache status.",
            ["route", "cache"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            f"{PREFIX}_upstream_seconds",
            "Time until GitLab's answer headers, by request kind.",
            ["kind"],
            registry=r,
        )
        self.upstream_errors = Counter(
            f"{PREFIX}_upstream_errors", "GitLab failures, by kind.", ["kind"], registry=r
        )
        self.bytes_served = Counter(
            f"{PREFIX}_bytes_served",
            "File bytes sent to clients, by where they came from.",
            ["source"],
            registry=r,
        )
        self.bytes_sendfile = Counter(
            f"{PREFIX}_bytes_sendfile",
            "File bytes the server sent from disk itself (os.sendfile, no copy through Python).",
            registry=r,
        )
        self.hash_mismatches = Counter(
            f"{PREFIX}_hash_mismatches",
            "Downloads whose bytes did not match their sha256.",
            registry=r,
        )
        self.evictions = Counter(
            f"{PREFIX}_evictions", "Files evicted to keep the cache under max_size.", registry=r
        )
        self.streamed_through = Counter(
            f"{PREFIX}_streamed_through",
            "Files sent from GitLab without caching them (the cache had no room).",
            registry=r,
        )
        self.lease_waits = Counter(
            f"{PREFIX}_lease_waits",
            "Fills that waited for another replica's fetch of the same file.",
            registry=r,
        )
        self.page_memory_hits = Counter(
            f"{PREFIX}_page_memory_hits",
            "Cache-hit pages sent as rendered before, from memory (no disk read).",
            registry=r,
        )
        self.file_memory_hits = Counter(
            f"{PREFIX}_file_memory_hits",
            "Cache-hit small files and core metadata sent from memory (no thread hop).",
            registry=r,
        )
        self._cache: _CacheSize | None = None
        self._coordination: _Coordination | None = None

    def watch_cache(
        self,
        size: Callable[[], tuple[int, int]],
        disk: Callable[[], tuple[int, bool]] = lambda: (0, False),
    ) -> None:
        """Read (files, bytes) from `size` and (free bytes, full) from `disk` at every scrape."""
        self._cache = _CacheSize(size, disk)
        self.registry.register(self._cache)

    def watch_coordination(self, shared: Callable[[], bool], connected: Callable[[], bool]) -> None:
        """With Redis configured (`shared()`), report `connected()` at every scrape."""
        if shared():
            self._coordination = _Coordination(connected)
            self.registry.register(self._coordination)

    def render(self) -> bytes:
        """The text exposition format; with workers, every worker's counters summed."""
        shared = os.environ.get(SHARED_DIR_ENV)
        if not shared:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=shared)  # type: ignore[no-untyped-call]
        for collector in (self._cache, self._coordination):
            if collector is not None:
                registry.register(collector)
        return generate_latest(registry)
