"""Loading the settings: flags, environment, a TOML file and defaults, checked once."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import stat
import tomllib
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from proxy import values
from proxy.errors import ConfigError
from proxy.settings import (
    TOKEN_ENV,
    AccessSettings,
    CacheSettings,
    CoordinationSettings,
    ForwardingSettings,
    PagesSettings,
    Secret,
    ServerSettings,
    Settings,
    StorageSettings,
    UpstreamSettings,
    default_cache_dir,
    default_tokens_file,
)

ENV_PREFIX = "GITLAB_PYPI_PROXY_"
CONFIG_ENV = "GITLAB_PYPI_PROXY_CONFIG"
SERVE_ARGS_ENV = "GITLAB_PYPI_PROXY__SERVE_ARGS"


log = logging.getLogger("proxy.config")


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
    cache["dir"] = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(env)
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
