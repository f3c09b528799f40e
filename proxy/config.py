"""Settings: one frozen object from flags, environment, a TOML file and defaults."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, Literal, cast, get_args
from urllib.parse import urlsplit

from proxy.errors import ConfigError

GiB = 1024**3
ENV_PREFIX = "GITLAB_PYPI_PROXY_"
CONFIG_ENV = "GITLAB_PYPI_PROXY_CONFIG"
TOKEN_ENV = "GITLAB_PYPI_PROXY_TOKEN"  # noqa: S105 (a variable's name, not a token)
SERVE_ARGS_ENV = "GITLAB_PYPI_PROXY__SERVE_ARGS"

AccessMode = Literal["auto", "open", "tokens", "passthrough"]

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


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerSettings:
    """Where the proxy listens and how it names itself to clients."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # "" = from each request's Host header
    trusted_proxies: tuple[str, ...] = ()  # IP addresses whose X-Forwarded-* are believed
    max_upload_size: int = 5 * GiB  # bytes
    workers: int = 1


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
    offline: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class AccessSettings:
    """Who may read what the proxy has cached."""

    mode: AccessMode = "auto"
    tokens_file: str = ""
    auth_ttl: float = 300.0  # seconds a credential GitLab accepted is trusted for a scope
    allow_service_upload: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Everything the proxy reads at start-up; built once by load()."""

    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    access: AccessSettings = field(default_factory=AccessSettings)


class _Invalid(Exception):
    """A value was refused; the message says what it is not and what was expected."""

    def __init__(self, message: str, *, hide_value: bool = False) -> None:
        super().__init__(message)
        self.hide_value = hide_value


# Each converter takes the raw value and whether it came as text (environment, flags),
# where "8" may stand for 8 and "yes" for true; TOML values must have the right type.
_Converter = Callable[[object, bool], Any]


def _string(value: object, text: bool) -> str:
    if not isinstance(value, str):
        raise _Invalid("is not a string (expected text in quotes)")
    return value


def _file(value: object, text: bool) -> str:
    path = _string(value, text)
    if path and not Path(path).expanduser().is_file():
        raise _Invalid("is not a file (expected the path of an existing file, or empty)")
    return path


def _boolean(value: object, text: bool) -> bool:
    if text and isinstance(value, str):
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        value = words.get(value.strip().lower(), value)
    if not isinstance(value, bool):
        raise _Invalid("is not a boolean (expected true or false)")
    return value


def _number(value: object, text: bool, *, above_zero: bool) -> float:
    if text and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    if not math.isfinite(number) or number < 0 or (above_zero and number == 0):
        bound = "above 0" if above_zero else "0 or more"
        raise _Invalid(f"is not a number of seconds (expected a number {bound}, e.g. 60)")
    return number


def _workers(value: object, text: bool) -> int:
    if text and isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _Invalid("is not a number of processes (expected a whole number, 1 or more)")
    return value


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _size(value: object, text: bool) -> int:
    size = 0
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(Decimal(match[1]) * _UNITS[(match[2] or "").lower()])
    if size <= 0:
        raise _Invalid('is not a size (expected e.g. "20GiB", "500MB" or a number of bytes)')
    return size


def parse_size(value: str, *, where: str) -> int:
    """Bytes in a size such as "20GiB", "500MB" or "1048576"; ConfigError naming `where`."""
    try:
        return _size(value, True)
    except _Invalid as exc:
        raise ConfigError(f"{where}: {json.dumps(value)} {exc}") from None


_LISTEN = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]+)):([0-9]{1,5})")


def _listen(value: object, text: bool) -> tuple[str, int]:
    match = _LISTEN.fullmatch(value) if isinstance(value, str) else None
    try:
        host = str(ipaddress.IPv6Address(match[1])) if match and match[1] else ""
    except ValueError:
        match = None
    if not match or int(match[3]) > 65535:
        raise _Invalid('is not HOST:PORT (expected e.g. "127.0.0.1:8080" or "[::1]:8080")')
    return host or match[2], int(match[3])


def _url(value: object, text: bool, *, optional: bool = False) -> str:
    expected = 'is not an http(s) URL with a host (expected e.g. "https://gitlab.example.com")'
    url = _string(value, text).strip()
    if optional and not url:
        return ""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        ok = False
    if not ok or any(c.isspace() for c in url):
        raise _Invalid(expected)
    if "@" in parts.netloc:
        raise _Invalid(
            "holds credentials (expected them in upstream.token_env or token_file)",
            hide_value=True,
        )
    if parts.query or parts.fragment:
        raise _Invalid('is not a base URL (expected no "?query" or "#fragment")')
    return url.rstrip("/")


def _addresses(value: object, text: bool) -> tuple[str, ...]:
    if text and isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    example = '(expected e.g. ["10.0.0.1", "::1"])'
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _Invalid(f"is not a list of IP addresses {example}")
    try:  # canonical, since the app compares them with the client's address as text
        return tuple(str(ipaddress.ip_address(item)) for item in value)
    except ValueError:
        raise _Invalid(f"holds something that is not an IP address {example}") from None


def _mode(value: object, text: bool) -> AccessMode:
    modes = get_args(AccessMode)
    if value not in modes:
        raise _Invalid(f"is not an access mode (expected one of {', '.join(modes)})")
    return cast(AccessMode, value)


def _variable_name(value: object, text: bool) -> str:
    # Never echoed: a token pasted here by mistake must not reach the terminal.
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", value):
        raise _Invalid(
            'is not a variable name (expected e.g. "GITLAB_PYPI_PROXY_TOKEN", '
            "the name of the variable holding the token, not the token)",
            hide_value=True,
        )
    return value


# Every key load() accepts, as "section.key"; server.listen sets host and port.
_KEYS: dict[str, _Converter] = {
    "server.listen": _listen,
    "server.public_url": partial(_url, optional=True),
    "server.trusted_proxies": _addresses,
    "server.max_upload_size": _size,
    "server.workers": _workers,
    "upstream.url": _url,
    "upstream.username": _string,
    "upstream.token_env": _variable_name,
    "upstream.token_file": _string,
    "upstream.connect_timeout": partial(_number, above_zero=True),
    "upstream.read_timeout": partial(_number, above_zero=True),
    "upstream.ca_bundle": _file,
    "cache.dir": _string,
    "cache.max_size": _size,
    "cache.page_ttl": partial(_number, above_zero=False),
    "cache.offline": _boolean,
    "access.mode": _mode,
    "access.tokens_file": _file,
    "access.auth_ttl": partial(_number, above_zero=False),
    "access.allow_service_upload": _boolean,
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
    except _Invalid as exc:
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
    return Settings(
        server=ServerSettings(**server),
        upstream=UpstreamSettings(**upstream),
        cache=CacheSettings(**cache),
        access=AccessSettings(**section("access")),
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
