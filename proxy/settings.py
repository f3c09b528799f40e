"""The settings: one frozen object of frozen sections, with their defaults."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from proxy import values
from proxy.values import AccessMode, ForwardingMode, HttpMode, MetadataMode

GiB = 1024**3
TOKEN_ENV = "GITLAB_PYPI_PROXY_TOKEN"  # noqa: S105 (a variable's name, not a token)


class Secret:
    """A string that never shows itself in repr(), str() or format(); reveal() gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return repr(self)

    def __format__(self, format_spec: str) -> str:
        return repr(self)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the cache lives when cache.dir is empty: $XDG_CACHE_HOME/gitlab-pypi-proxy,
    else ~/.cache/gitlab-pypi-proxy."""
    # XDG Base Directory spec: "If $XDG_CACHE_HOME is either not set or empty, a default
    # equal to $HOME/.cache should be used"; relative paths "should be ignored".
    xdg = (os.environ if env is None else env).get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "gitlab-pypi-proxy"


def default_tokens_file(env: Mapping[str, str] | None = None) -> Path:
    """Where `token add` keeps token hashes and `serve` reads them when access.tokens_file
    is empty: $XDG_CONFIG_HOME/gitlab-pypi-proxy/tokens, else ~/.config/gitlab-pypi-proxy/tokens."""
    # XDG Base Directory spec, as for the cache: $HOME/.config when unset, empty or relative.
    xdg = (os.environ if env is None else env).get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"
    return base / "gitlab-pypi-proxy" / "tokens"


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerSettings:
    """Where the proxy listens and how it names itself to clients."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # "" = from each request's Host header
    trusted_proxies: tuple[str, ...] = ()  # addresses or networks whose X-Forwarded-* count
    max_upload_size: int = 5 * GiB  # bytes
    workers: int = 1
    header_timeout: float = 5.0  # seconds for a whole request head, from connecting or idling
    max_connections: int = 1000  # per process, and within the open-file limit
    send_timeout: float = 60.0  # seconds a response may wait on a client that takes nothing
    http: HttpMode = "auto"  # uvicorn's HTTP/1.1 implementation: httptools if importable, or h11


@dataclass(frozen=True, kw_only=True, slots=True)
class UpstreamSettings:
    """The GitLab instance and the service credentials used to read from it."""

    url: str = "https://gitlab.com"  # no trailing slash; may carry a relative URL root
    username: str = ""
    token: Secret | None = None
    token_env: str = TOKEN_ENV  # the name of the variable holding the token
    token_file: str = ""
    connect_timeout: float = 5.0  # seconds
    read_timeout: float = 60.0  # seconds
    ca_bundle: str = ""  # "" = the system's trust store


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheSettings:
    """Where and how much the proxy keeps, and whether it may ask GitLab at all."""

    dir: Path = field(default_factory=default_cache_dir)
    max_size: int = 20 * GiB  # bytes
    page_ttl: float = 300.0  # seconds a simple page is served without asking GitLab
    # Seconds past page_ttl a page is still served at once while GitLab is asked in the
    # background (X-Cache: STALE); 0 = off: the request waits for GitLab.
    stale_while_revalidate: float = 0.0
    offline: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class AccessSettings:
    """Who may read what the proxy has cached."""

    mode: AccessMode = "auto"
    # "" in the config means default_tokens_file(), which may not exist yet (no tokens).
    tokens_file: str = field(default_factory=lambda: str(default_tokens_file()))
    auth_ttl: float = 300.0  # seconds a credential GitLab accepted is trusted for a scope
    allow_service_upload: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class ForwardingSettings:
    """What to do with GitLab's redirect of a name it does not hold to a public index (3.6)."""

    mode: ForwardingMode = "follow"
    allowed_hosts: tuple[str, ...] = ("pypi.org", "files.pythonhosted.org")  # "host[:port]"
    never: tuple[str, ...] = ()  # fnmatch patterns of names never taken from a public index
    min_age: float = 0.0  # seconds; public files uploaded more recently are left out; 0 = off


@dataclass(frozen=True, kw_only=True, slots=True)
class PagesSettings:
    """What the proxy adds to GitLab's pages."""

    # PEP 658/714 core metadata (design 3.7): "off", "cached" (for wheels the cache
    # holds) or "always" (read from GitLab with Range requests when not held).
    metadata: MetadataMode = "cached"


@dataclass(frozen=True, kw_only=True, slots=True)
class StorageSettings:
    """Where verified files live (design 3.9); pages and access records stay in cache.dir."""

    backend: values.StorageBackend = "local"
    url: str = ""  # s3://bucket/prefix; credentials come the standard AWS way, never here
    endpoint_url: str = ""  # any S3-compatible endpoint; "" = AWS's
    redirect: bool = False  # serve held files by 302 to a short-lived presigned URL


@dataclass(frozen=True, kw_only=True, slots=True)
class CoordinationSettings:
    """How replicas share fills, page invalidations and proxy tokens (design 3.9)."""

    # redis://[:password@]host:port/db, rediss://... or unix://path; empty: this machine only.
    # A Secret: the URL may carry Redis's password.
    redis_url: Secret = field(default_factory=lambda: Secret(""))
    lease_ttl: float = 30.0  # seconds a dead replica's fill blocks a file at most


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Everything the proxy reads at start-up; built once by load()."""

    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    forwarding: ForwardingSettings = field(default_factory=ForwardingSettings)
    pages: PagesSettings = field(default_factory=PagesSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    coordination: CoordinationSettings = field(default_factory=CoordinationSettings)
