"""The proxy's exceptions: one root, translated at each boundary.

ProxyError
 +-- ConfigError             a setting is missing or malformed (stops start-up)
 +-- BadRequest              a path parameter or request the proxy refuses to forward
 +-- Unauthorized            the client must authenticate (a proxy token, or its own GitLab one)
 +-- UpstreamError           GitLab could not give a usable answer
 |    +-- UpstreamUnavailable    connection refused, DNS, timeout
 |    +-- UpstreamStatus         GitLab answered 5xx or 429 (carries status, Retry-After)
 |    +-- IncompleteBody         the body ended before its Content-Length
 |    +-- HashMismatch           the bytes do not hash to the sha256 in the URL
 |    +-- PageError              GitLab sent a page that cannot be parsed
 +-- OfflineMiss             offline mode and the cache does not hold it
 +-- OfflineRefusal          offline mode and the request needs GitLab (an upload)
 +-- TooLarge                a request body above the configured limit
 +-- CacheError              the cache could not store or read (I/O)
      +-- CacheFull              the disk (or max_size) has no room for what was to be stored
 +-- BundleError             a bundle cannot be written or is refused (carries the bad entries)
"""

from __future__ import annotations


class ProxyError(Exception):
    """Root of every error the proxy raises on purpose."""


class ConfigError(ProxyError):
    """A setting is missing or malformed; the message is one line naming the key."""


class BadRequest(ProxyError):
    """The client's request is refused before anything is forwarded."""


class Unauthorized(ProxyError):
    """The client sent no (acceptable) credentials for what it asked."""


class UpstreamError(ProxyError):
    """GitLab could not give a usable answer."""


class UpstreamUnavailable(UpstreamError):
    """GitLab could not be reached, or did not answer in time."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class UpstreamStatus(UpstreamError):
    """GitLab answered with a server error or a rate limit."""

    def __init__(self, status: int, *, retry_after: float | None = None) -> None:
        super().__init__(f"GitLab answered {status}")
        self.status = status
        self.retry_after = retry_after


class IncompleteBody(UpstreamError):
    """GitLab's body ended before the length it announced."""


class HashMismatch(UpstreamError):
    """A downloaded file does not hash to the sha256 named in its URL."""


class PageError(UpstreamError):
    """GitLab sent a page that cannot be parsed (too large, empty, or not HTML/JSON)."""


class OfflineMiss(ProxyError):
    """Offline mode is on and the cache does not hold what was asked for."""


class OfflineRefusal(ProxyError):
    """Offline mode is on and the request can only be answered by GitLab."""


class TooLarge(ProxyError):
    """A request body is larger than the proxy accepts."""


class CacheError(ProxyError):
    """The cache could not store or read an entry."""


class CacheFull(CacheError):
    """The cache's disk (or quota, or max_size) has no room for what was to be stored."""


class BundleError(ProxyError):
    """A bundle could not be exported, or an import was refused; `problems` lists why."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems
