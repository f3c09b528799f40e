"""Settings: one frozen object from flags, environment, a TOML file and defaults."""

from __future__ import annotations

import hmac
import importlib.util
import json
import logging
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from proxy import values
from proxy.errors import ConfigError
from proxy.values import AccessMode, ForwardingMode, HttpMode, MetadataMode

GiB = 1024**3
ENV_PREFIX = "GITLAB_PYPI_PROXY_"
CONFIG_ENV = "GITLAB_PYPI_PROXY_CONFIG"
TOKEN_ENV = "GITLAB_PYPI_PROXY_TOKEN"  # noqa: S105 (a variable's name, not a token)
SERVE_ARGS_ENV = "GITLAB_PYPI_PROXY__SERVE_ARGS"


log = logging.getLogger("proxy.config")


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


def _default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
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

    dir: Path = field(default_factory=_default_cache_dir)
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


# Every key load() accepts, as "section.key"; server.listen sets host and port.
_KEYS: dict[str, values.Converter] = {
    "server.listen": values.listen,
    "server.public_url": partial(values.url, optional=True),
    "server.trusted_proxies": values.addresses,
    "server.max_upload_size": values.size,
    "server.workers": values.workers,
    "server.header_timeout": partial(values.number, above_zero=True),
    "server.max_connections": values.connections,
    "server.send_timeout": partial(values.number, above_zero=True),
    "server.http": values.http_mode,
    "upstream.url": values.url,
    "upstream.username": values.string,
    "upstream.token_env": values.variable_name,
    "upstream.token_file": values.string,
    "upstream.connect_timeout": partial(values.number, above_zero=True),
    "upstream.read_timeout": partial(values.number, above_zero=True),
    "upstream.ca_bundle": values.file,
    "cache.dir": values.string,
    "cache.max_size": values.size,
    "cache.page_ttl": partial(values.number, above_zero=False),
    "cache.stale_while_revalidate": partial(values.number, above_zero=False),
    "cache.offline": values.boolean,
    "access.mode": values.mode,
    "access.tokens_file": values.file,
    "access.auth_ttl": partial(values.number, above_zero=False),
    "access.allow_service_upload": values.boolean,
    "forwarding.mode": values.forwarding_mode,
    "forwarding.allowed_hosts": values.hosts,
    "forwarding.never": values.patterns,
    "forwarding.min_age": values.duration,
    "pages.metadata": values.metadata_mode,
    "storage.backend": values.storage_backend,
    "storage.url": values.bucket_url,
    "storage.endpoint_url": partial(values.url, optional=True),
    "storage.redirect": values.boolean,
    "coordination.redis_url": values.redis_url,
    "coordination.lease_ttl": partial(values.number, above_zero=True),
}
_SECTIONS = tuple(dict.fromkeys(key.partition(".")[0] for key in _KEYS))


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "_").upper()


def _unknown(key: str, where: str) -> ConfigError:
    section = key.partition(".")[0]
    names = [k.partition(".")[2] for k in _KEYS if k.startswith(section + ".")]
    hint = "; the token goes in token_env or token_file" if key == "upstream.token" else ""
    return ConfigError(f"{where}: unknown key {key} (expected one of {', '.join(names)}{hint})")


# A raw value, whether it came as text, and how to name it in an error.
_Raw = tuple[object, bool, str]


def _read_file(path: Path) -> dict[str, _Raw]:
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: is not valid TOML ({exc})") from exc
    found: dict[str, _Raw] = {}
    for section, table in data.items():
        if section not in _SECTIONS:
            expected = f"expected one of {', '.join(_SECTIONS)}"
            raise ConfigError(f"config file {path}: unknown section [{section}] ({expected})")
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: {section} is not a [{section}] table")
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in _KEYS:
                raise _unknown(key, f"config file {path}")
            found[key] = (value, False, key)
    return found


def _read_env(env: Mapping[str, str]) -> dict[str, _Raw]:
    return {
        key: (env[name], True, f"{key} ({name})")
        for key in _KEYS
        if (name := _env_name(key)) in env
    }


def _check_env_names(env: Mapping[str, str], token_env: str) -> None:
    """Refuse GITLAB_PYPI_PROXY_<SECTION>_* variables that name no key (typos)."""
    known = {_env_name(key) for key in _KEYS} | {token_env}
    for name in env:
        for section in _SECTIONS:
            prefix = f"{ENV_PREFIX}{section.upper()}_"
            if name.startswith(prefix) and name not in known:
                key = f"{section}.{name.removeprefix(prefix).lower()}"
                raise _unknown(key, f"environment variable {name}")


def _convert(key: str, value: object, text: bool, where: str) -> Any:
    try:
        return _KEYS[key](value, text)
    except values.Invalid as exc:
        if exc.hide_value:
            raise ConfigError(f"{where}: the value {exc}") from None
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        raise ConfigError(f"{where}: {shown} {exc}") from None


def _read_token(
    env: Mapping[str, str], token_env: str, token_file: str, where: str
) -> Secret | None:
    if value := env.get(token_env, "").strip():
        return Secret(value)
    if not token_file:
        return None
    path = Path(token_file).expanduser()
    shown = json.dumps(token_file)
    try:
        mode = path.stat().st_mode
        value = path.read_bytes().decode().strip()
    except OSError as exc:
        raise ConfigError(f"{where}: {shown} cannot be read ({exc.strerror})") from exc
    except UnicodeDecodeError:  # its message would quote the token's bytes
        raise ConfigError(f"{where}: {shown} is not UTF-8 text (expected the token)") from None
    if mode & 0o077:
        log.warning(
            "%s is readable by group or others (mode %o); chmod 600 it",
            token_file,
            stat.S_IMODE(mode),
        )
    if not value:
        raise ConfigError(f"{where}: {shown} is empty (expected a file holding the token)")
    return Secret(value)


def load(
    *,
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Settings from overrides ("section.key" -> flag value) > env > config file > defaults.

    The config file is `config_file`, else $GITLAB_PYPI_PROXY_CONFIG, else none; `env`
    defaults to os.environ. A bad value raises ConfigError with one line naming the key,
    the value (never a secret) and what was expected.
    """
    env = os.environ if env is None else env
    raw: dict[str, _Raw] = {}
    path = config_file or env.get(CONFIG_ENV)
    if path:
        raw.update(_read_file(Path(path)))
    raw.update(_read_env(env))
    for key, value in (overrides or {}).items():
        if key not in _KEYS:
            raise _unknown(key, "command line")
        if value is not None:
            raw[key] = (value, True, key)
    values = {key: _convert(key, *item) for key, item in raw.items()}

    def section(name: str) -> dict[str, Any]:
        return {k.partition(".")[2]: v for k, v in values.items() if k.startswith(name + ".")}

    server, upstream, cache = section("server"), section("upstream"), section("cache")
    if "listen" in server:
        server["host"], server["port"] = server.pop("listen")
    token_env = upstream.get("token_env", TOKEN_ENV)
    _check_env_names(env, token_env)
    where = raw.get("upstream.token_file", (None, False, "upstream.token_file"))[2]
    upstream["token"] = _read_token(env, token_env, upstream.get("token_file", ""), where)
    cache_dir = cache.get("dir", "")
    cache["dir"] = Path(cache_dir).expanduser() if cache_dir else _default_cache_dir(env)
    access = section("access")
    tokens_file = access.get("tokens_file", "")
    access["tokens_file"] = (
        str(Path(tokens_file).expanduser()) if tokens_file else str(default_tokens_file(env))
    )
    storage = StorageSettings(**section("storage"))
    if storage.backend == "s3" and not storage.url:
        raise ConfigError(
            'storage.url: "" is not an S3 URL (expected "s3://bucket/prefix" with backend s3)'
        )
    if storage.backend == "s3" and importlib.util.find_spec("boto3") is None:
        raise ConfigError(
            'storage.backend: "s3" needs boto3 '
            "(expected the s3 extra: pip install 'gitlab-pypi-proxy[s3]')"
        )
    if storage.redirect and storage.backend != "s3":
        raise ConfigError(
            'storage.redirect: true (expected storage.backend = "s3": local files have no URL)'
        )
    coordination = section("coordination")
    coordination["redis_url"] = Secret(coordination.get("redis_url", ""))
    return Settings(
        server=ServerSettings(**server),
        upstream=UpstreamSettings(**upstream),
        cache=CacheSettings(**cache),
        access=AccessSettings(**access),
        forwarding=ForwardingSettings(**section("forwarding")),
        pages=PagesSettings(**section("pages")),
        storage=storage,
        coordination=CoordinationSettings(**coordination),
    )


def to_overrides_env(overrides: Mapping[str, object]) -> str:
    """The parsed flags as JSON for SERVE_ARGS_ENV, so worker processes load alike."""
    return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()})


def from_overrides_env(text: str) -> dict[str, object]:
    """The flags that to_overrides_env() wrote; ConfigError if they are not a JSON object."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{SERVE_ARGS_ENV}: is not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{SERVE_ARGS_ENV}: is not a JSON object")
    return data


def load_for_workers(env: Mapping[str, str] | None = None) -> Settings:
    """Settings in a worker process: the serving command's flags, then env, file, defaults."""
    env = os.environ if env is None else env
    overrides = from_overrides_env(env.get(SERVE_ARGS_ENV, "{}"))
    config_file = overrides.pop("config_file", None)
    if config_file is not None and not isinstance(config_file, str):
        raise ConfigError(f"{SERVE_ARGS_ENV}: config_file is not a string")
    return load(config_file=config_file, env=env, overrides=overrides)
