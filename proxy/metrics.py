"""Prometheus metrics of one proxy process (the only prometheus_client import)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]
PREFIX = "gitlab_pypi_proxy"


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
        self.hash_mismatches = Counter(
            f"{PREFIX}_hash_mismatches",
            "Downloads whose bytes did not match their sha256.",
            registry=r,
        )
        self.evictions = Counter(
            f"{PREFIX}_evictions", "Files evicted to keep the cache under max_size.", registry=r
        )
        self.cache_bytes = Gauge(
            f"{PREFIX}_cache_bytes", "Bytes of files held by the cache.", registry=r
        )
        self.cache_files = Gauge(f"{PREFIX}_cache_files", "Files held by the cache.", registry=r)

    def watch_cache(self, size: Callable[[], tuple[int, int]]) -> None:
        """Read (files, bytes) from `size` at every scrape."""
        self.cache_files.set_function(lambda: size()[0])
        self.cache_bytes.set_function(lambda: size()[1])

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
