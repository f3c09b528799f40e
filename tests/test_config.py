"""Loading settings: precedence, parsing, validation messages, the token and the example file."""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from pathlib import Path

import pytest

from proxy.config import (
    CONFIG_ENV,
    SERVE_ARGS_ENV,
    from_overrides_env,
    load,
    load_for_workers,
    to_overrides_env,
)
from proxy.errors import ConfigError
from proxy.settings import GiB, Secret, Settings, StorageSettings

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"
TOKEN = "glpat-s3cr3t-t0k3n-value"


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Default cache dirs point into tmp_path, in Settings() and in load(env=...) alike."""
    home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    # Settings() reads os.environ, load(env=...) its env: the same default tokens file.
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


def write(tmp_path: Path, text: str, name: str = "proxy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(*, env: dict[str, str] | None = None, **kwargs: object) -> str:
    """The message of the ConfigError that load() raises for this input."""
    with pytest.raises(ConfigError) as info:
        load(env=env or {}, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def accepted_keys() -> set[str]:
    """Every "section.key" a config file may hold, derived from the Settings dataclasses."""
    defaults = Settings()
    keys = set()
    for section in dataclasses.fields(defaults):
        for option in dataclasses.fields(getattr(defaults, section.name)):
            keys.add(f"{section.name}.{option.name}")
    # listen = "HOST:PORT" sets both; the token itself is never a key (token_env/token_file).
    return keys - {"server.host", "server.port", "upstream.token"} | {"server.listen"}


def test_defaults_need_no_file(cache_home: Path) -> None:
    """With no file, environment or flags, load() gives the dataclass defaults."""
    settings = load(env={"XDG_CACHE_HOME": str(cache_home)})
    assert settings == Settings()
    assert settings.upstream.url == "https://gitlab.com"
    assert settings.cache.dir == cache_home / "gitlab-pypi-proxy"


def test_cache_dir_defaults_to_home_cache_without_xdg() -> None:
    """Without XDG_CACHE_HOME the cache lives in ~/.cache/gitlab-pypi-proxy."""
    assert load(env={}).cache.dir == Path.home() / ".cache" / "gitlab-pypi-proxy"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_CONFIG_HOME": "/xdg"}, Path("/xdg/gitlab-pypi-proxy/tokens")),
        ({}, Path.home() / ".config" / "gitlab-pypi-proxy" / "tokens"),
        ({"XDG_CONFIG_HOME": "relative"}, Path.home() / ".config" / "gitlab-pypi-proxy" / "tokens"),
        (
            {"GITLAB_PYPI_PROXY_ACCESS_TOKENS_FILE": ""},
            Path.home() / ".config/gitlab-pypi-proxy/tokens",
        ),
    ],
)
def test_tokens_file_defaults_to_the_config_home(env: dict[str, str], expected: Path) -> None:
    """An empty access.tokens_file is $XDG_CONFIG_HOME (else ~/.config)/gitlab-pypi-proxy/tokens."""
    assert load(env=env).access.tokens_file == str(expected)


def test_tokens_file_may_start_with_a_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """access.tokens_file = "~/tokens" is the tokens file in the home directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "tokens").touch()
    settings = load(env={"GITLAB_PYPI_PROXY_ACCESS_TOKENS_FILE": "~/tokens"})
    assert settings.access.tokens_file == str(tmp_path / "tokens")


SOURCES = {
    "file": "https://file.example",
    "env": "https://env.example",
    "flag": "https://flag.example",
}


@pytest.mark.parametrize(
    ("given", "winner"),
    [
        ((), None),
        (("file",), "file"),
        (("env",), "env"),
        (("flag",), "flag"),
        (("file", "env"), "env"),
        (("file", "flag"), "flag"),
        (("env", "flag"), "flag"),
        (("file", "env", "flag"), "flag"),
    ],
)
def test_precedence_is_flag_env_file_default(
    tmp_path: Path, given: tuple[str, ...], winner: str | None
) -> None:
    """A flag beats the environment, which beats the file, which beats the default."""
    config = write(tmp_path, f'[upstream]\nurl = "{SOURCES["file"]}"\n')
    settings = load(
        config_file=config if "file" in given else None,
        env={"GITLAB_PYPI_PROXY_UPSTREAM_URL": SOURCES["env"]} if "env" in given else {},
        overrides={"upstream.url": SOURCES["flag"]} if "flag" in given else {},
    )
    assert settings.upstream.url == (SOURCES[winner] if winner else "https://gitlab.com")


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    """Without config_file, the file named in $GITLAB_PYPI_PROXY_CONFIG is read."""
    config = write(tmp_path, "[cache]\noffline = true\n")
    assert load(env={CONFIG_ENV: str(config)}).cache.offline is True


def test_explicit_config_file_beats_environment(tmp_path: Path) -> None:
    """config_file (the --config flag) wins over $GITLAB_PYPI_PROXY_CONFIG."""
    flagged = write(tmp_path, "[server]\nworkers = 3\n", "flagged.toml")
    named = write(tmp_path, "[server]\nworkers = 5\n", "named.toml")
    settings = load(config_file=flagged, env={CONFIG_ENV: str(named)})
    assert settings.server.workers == 3


def test_none_overrides_are_ignored() -> None:
    """An override whose value is None (a flag not given) leaves the setting alone."""
    assert load(env={}, overrides={"upstream.url": None}).upstream.url == "https://gitlab.com"


@pytest.mark.parametrize(
    ("name", "text", "attribute", "expected"),
    [
        ("GITLAB_PYPI_PROXY_SERVER_LISTEN", "0.0.0.0:9000", "server.host", "0.0.0.0"),
        ("GITLAB_PYPI_PROXY_SERVER_LISTEN", "[::1]:9000", "server.port", 9000),
        ("GITLAB_PYPI_PROXY_SERVER_PUBLIC_URL", "https://p.example/", "server.public_url",
         "https://p.example"),
        ("GITLAB_PYPI_PROXY_SERVER_TRUSTED_PROXIES", "10.0.0.1, ::1", "server.trusted_proxies",
         ("10.0.0.1", "::1")),
        ("GITLAB_PYPI_PROXY_SERVER_TRUSTED_PROXIES", "10.42.3.4/16, fd00::/8",
         "server.trusted_proxies", ("10.42.0.0/16", "fd00::/8")),
        ("GITLAB_PYPI_PROXY_SERVER_MAX_UPLOAD_SIZE", "200MB", "server.max_upload_size",
         200_000_000),
        ("GITLAB_PYPI_PROXY_SERVER_WORKERS", "4", "server.workers", 4),
        ("GITLAB_PYPI_PROXY_SERVER_HEADER_TIMEOUT", "1.5", "server.header_timeout", 1.5),
        ("GITLAB_PYPI_PROXY_SERVER_MAX_CONNECTIONS", "200", "server.max_connections", 200),
        ("GITLAB_PYPI_PROXY_SERVER_SEND_TIMEOUT", "2.5", "server.send_timeout", 2.5),
        ("GITLAB_PYPI_PROXY_SERVER_HTTP", "h11", "server.http", "h11"),
        ("GITLAB_PYPI_PROXY_UPSTREAM_USERNAME", "gitlab-ci-token", "upstream.username",
         "gitlab-ci-token"),
        ("GITLAB_PYPI_PROXY_UPSTREAM_CONNECT_TIMEOUT", "2.5", "upstream.connect_timeout", 2.5),
        ("GITLAB_PYPI_PROXY_CACHE_DIR", "/srv/cache", "cache.dir", Path("/srv/cache")),
        ("GITLAB_PYPI_PROXY_CACHE_PAGE_TTL", "0", "cache.page_ttl", 0.0),
        ("GITLAB_PYPI_PROXY_CACHE_OFFLINE", "true", "cache.offline", True),
        ("GITLAB_PYPI_PROXY_CACHE_OFFLINE", "1", "cache.offline", True),
        ("GITLAB_PYPI_PROXY_CACHE_OFFLINE", "yes", "cache.offline", True),
        ("GITLAB_PYPI_PROXY_CACHE_OFFLINE", "no", "cache.offline", False),
        ("GITLAB_PYPI_PROXY_CACHE_OFFLINE", "0", "cache.offline", False),
        ("GITLAB_PYPI_PROXY_ACCESS_MODE", "passthrough", "access.mode", "passthrough"),
        ("GITLAB_PYPI_PROXY_ACCESS_ALLOW_SERVICE_UPLOAD", "false",
         "access.allow_service_upload", False),
    ],
)  # fmt: skip
def test_environment_text_is_parsed(name: str, text: str, attribute: str, expected: object) -> None:
    """Each GITLAB_PYPI_PROXY_<SECTION>_<KEY> variable is parsed from text into its type."""
    section, key = attribute.split(".")
    settings = load(env={name: text})
    assert getattr(getattr(settings, section), key) == expected


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ('"5GiB"', 5 * GiB),
        ('"200MB"', 200 * 1000**2),
        ('"512KiB"', 512 * 1024),
        ('"1.5 GiB"', 3 * GiB // 2),
        ('"20gib"', 20 * GiB),
        ('"1024"', 1024),
        ("1048576", 1024**2),
    ],
)
def test_sizes(tmp_path: Path, text: str, size: int) -> None:
    """Sizes take binary and decimal units, optional spaces, or a number of bytes."""
    config = write(tmp_path, f"[cache]\nmax_size = {text}\n")
    assert load(config_file=config, env={}).cache.max_size == size


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("0.0.0.0:9000", "0.0.0.0", 9000),
        ("localhost:80", "localhost", 80),
        ("[::1]:8080", "::1", 8080),
        ("[::]:0", "::", 0),
    ],
)
def test_listen_splits_host_and_port(listen: str, host: str, port: int) -> None:
    """listen = "HOST:PORT" (IPv6 in brackets) sets server.host and server.port."""
    server = load(env={}, overrides={"server.listen": listen}).server
    assert (server.host, server.port) == (host, port)


@pytest.mark.parametrize(
    "url",
    ["https://example.com/gitlab", "https://example.com/gitlab/", "http://h:8929/a/b//"],
)
def test_relative_url_root_is_kept_without_trailing_slash(url: str) -> None:
    """upstream.url keeps its path (GitLab's relative URL root) and loses trailing slashes."""
    assert load(env={}, overrides={"upstream.url": url}).upstream.url == url.rstrip("/")


BAD_VALUES = [
    ("server", "listen", '"8080"'),
    ("server", "listen", '"[::1]8080"'),
    ("server", "listen", '"host:99999"'),
    ("server", "listen", '"[nonsense]:80"'),
    ("server", "public_url", '"proxy.example"'),
    ("server", "trusted_proxies", '"10.0.0.1"'),
    ("server", "trusted_proxies", '["proxy.example"]'),
    ("server", "max_upload_size", "0"),
    ("server", "workers", "0"),
    ("server", "workers", "true"),
    ("server", "workers", '"2"'),
    ("server", "header_timeout", "0"),
    ("server", "header_timeout", '"slow"'),
    ("server", "max_connections", "0"),
    ("server", "max_connections", "1.5"),
    ("server", "send_timeout", "0"),
    ("server", "http", '"uvloop"'),
    ("upstream", "url", '"ftp://gitlab.example"'),
    ("upstream", "url", '"gitlab.example"'),
    ("upstream", "url", '"https://"'),
    ("upstream", "url", '"https://gitlab.example:port"'),
    ("upstream", "url", '"https://gitlab.example/?private=1"'),
    ("upstream", "username", "42"),
    ("upstream", "connect_timeout", "-1"),
    ("upstream", "read_timeout", "0"),
    ("upstream", "read_timeout", '"fast"'),
    ("upstream", "ca_bundle", '"/nonexistent/ca.pem"'),
    ("cache", "max_size", '"20 gigs"'),
    ("cache", "max_size", "-5"),
    ("cache", "page_ttl", "-5"),
    ("cache", "page_ttl", "inf"),
    ("cache", "offline", '"yes"'),
    ("access", "mode", '"closed"'),
    ("access", "tokens_file", '"/nonexistent/tokens"'),
    ("access", "auth_ttl", '"soon"'),
    ("access", "allow_service_upload", "1"),
    ("forwarding", "mode", '"proxy"'),
    ("forwarding", "allowed_hosts", '"pypi.org"'),
    ("forwarding", "allowed_hosts", '["https://pypi.org"]'),
    ("forwarding", "never", '["acme/*"]'),
    ("forwarding", "min_age", '"a week"'),
    ("forwarding", "min_age", "-1"),
    ("pages", "metadata", '"sometimes"'),
    ("storage", "backend", '"gcs"'),
    ("storage", "url", '"https://bucket.example/prefix"'),
    ("storage", "endpoint_url", '"minio:9000"'),
    ("storage", "redirect", '"yes"'),
    ("coordination", "redis_url", '"http://redis:6379"'),
    ("coordination", "redis_url", '"redis://"'),
    ("coordination", "redis_url", '"redis://redis:port/0"'),
    ("coordination", "lease_ttl", "0"),
]


@pytest.mark.parametrize(("section", "key", "value"), BAD_VALUES)
def test_bad_value_in_file_names_key_value_and_expectation(
    tmp_path: Path, section: str, key: str, value: str
) -> None:
    """A bad value gives one line: the key, the value as written, then what was expected."""
    config = write(tmp_path, f"[{section}]\n{key} = {value}\n")
    message = error_of(config_file=config)
    assert "\n" not in message
    assert message.startswith(f"{section}.{key}: ")
    assert "(expected " in message


def test_redis_password_is_never_shown(tmp_path: Path) -> None:
    """A Redis URL's password shows neither in the Settings' repr nor in a refusal."""
    good = load(env={"GITLAB_PYPI_PROXY_COORDINATION_REDIS_URL": "redis://:hunter2@r:6379/0"})
    assert good.coordination.redis_url.reveal() == "redis://:hunter2@r:6379/0"
    assert "hunter2" not in repr(good)
    config = write(tmp_path, '[coordination]\nredis_url = "redis://:hunter2@r:port"\n')
    assert "hunter2" not in error_of(config_file=config)


def test_bad_size_message_reads_as_documented(tmp_path: Path) -> None:
    """The size message is exactly the one the design promises."""
    config = write(tmp_path, '[cache]\nmax_size = "20 gigs"\n')
    assert error_of(config_file=config) == (
        'cache.max_size: "20 gigs" is not a size '
        '(expected e.g. "20GiB", "500MB" or a number of bytes)'
    )


def test_bad_environment_value_names_the_variable() -> None:
    """An error from the environment names the variable as well as the key."""
    message = error_of(env={"GITLAB_PYPI_PROXY_CACHE_OFFLINE": "maybe"})
    assert message.startswith('cache.offline (GITLAB_PYPI_PROXY_CACHE_OFFLINE): "maybe" ')


@pytest.mark.parametrize(
    ("value", "seconds"), [("", 0.0), ("7d", 604800.0), ("12h", 43200.0), ("90", 90.0)]
)
def test_min_age_takes_a_duration(value: str, seconds: float) -> None:
    """forwarding.min_age reads "7d", "12h", a number of seconds, or "" for off."""
    env = {"GITLAB_PYPI_PROXY_FORWARDING_MIN_AGE": value}
    assert load(env=env).forwarding.min_age == seconds


def test_core_metadata_mode_defaults_to_cached_and_comes_from_the_environment() -> None:
    """pages.metadata is "cached" unless GITLAB_PYPI_PROXY_PAGES_METADATA says otherwise."""
    assert load(env={}).pages.metadata == "cached"
    assert load(env={"GITLAB_PYPI_PROXY_PAGES_METADATA": "always"}).pages.metadata == "always"


def test_forwarding_lists_come_from_the_environment_comma_separated() -> None:
    """allowed_hosts and never are comma-separated lists in the environment."""
    env = {
        "GITLAB_PYPI_PROXY_FORWARDING_ALLOWED_HOSTS": "PyPI.org, 127.0.0.1:8081",
        "GITLAB_PYPI_PROXY_FORWARDING_NEVER": "acme-*,internal-*",
    }
    forwarding = load(env=env).forwarding
    assert forwarding.allowed_hosts == ("pypi.org", "127.0.0.1:8081")
    assert forwarding.never == ("acme-*", "internal-*")


def test_bad_flag_value_names_the_key() -> None:
    """An error from a flag names the key and the value given."""
    message = error_of(overrides={"server.workers": "many"})
    assert message.startswith('server.workers: "many" is not')


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[caches]\ndir = '/tmp'\n", "unknown section [caches]"),
        ("listen = '0.0.0.0:80'\n", "unknown section [listen]"),
        ("server = 1\n", "server is not a [server] table"),
        ("[cache]\nmaxsize = '1GiB'\n", "unknown key cache.maxsize"),
        ("[server\n", "is not valid TOML"),
    ],
)
def test_malformed_file_is_refused(tmp_path: Path, text: str, fragment: str) -> None:
    """Unknown sections, unknown keys and broken TOML stop loading with the file named."""
    config = write(tmp_path, text)
    message = error_of(config_file=config)
    assert message.startswith(f"config file {config}: ")
    assert fragment in message
    assert "\n" not in message


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    """A config file that does not exist is an error, not a silent default."""
    assert "cannot be read" in error_of(config_file=tmp_path / "absent.toml")


def test_unknown_environment_variable_in_a_section_is_refused() -> None:
    """A GITLAB_PYPI_PROXY_<SECTION>_ variable that names no key (a typo) is an error."""
    message = error_of(env={"GITLAB_PYPI_PROXY_CACHE_MAXSIZE": "1GiB"})
    assert message.startswith("environment variable GITLAB_PYPI_PROXY_CACHE_MAXSIZE: ")


def test_unknown_override_is_refused() -> None:
    """An override key that names no setting is an error."""
    assert "unknown key cache.color" in error_of(overrides={"cache.color": "blue"})


def test_token_in_the_file_is_refused_without_echo(tmp_path: Path) -> None:
    """A token written into the config file is refused and not repeated in the message."""
    config = write(tmp_path, f'[upstream]\ntoken = "{TOKEN}"\n')
    message = error_of(config_file=config)
    assert "unknown key upstream.token" in message
    assert TOKEN not in message


def test_token_as_token_env_is_refused_without_echo() -> None:
    """A token put where the variable's name belongs is refused and not repeated."""
    message = error_of(overrides={"upstream.token_env": TOKEN})
    assert message.startswith("upstream.token_env: ")
    assert TOKEN not in message


def test_credentials_in_the_url_are_refused_without_echo() -> None:
    """An upstream URL with user:token@ in it is refused and not repeated."""
    message = error_of(overrides={"upstream.url": f"https://me:{TOKEN}@gitlab.example"})
    assert message.startswith("upstream.url: ")
    assert TOKEN not in message


def test_token_from_default_variable() -> None:
    """The token is read from $GITLAB_PYPI_PROXY_TOKEN by default."""
    token = load(env={"GITLAB_PYPI_PROXY_TOKEN": TOKEN}).upstream.token
    assert token is not None
    assert token.reveal() == TOKEN


def test_token_from_named_variable() -> None:
    """token_env names the variable that holds the token."""
    env = {"GITLAB_PYPI_PROXY_UPSTREAM_TOKEN_ENV": "CI_JOB_TOKEN", "CI_JOB_TOKEN": TOKEN}
    assert load(env=env).upstream.token == Secret(TOKEN)


def test_no_token_configured_gives_none() -> None:
    """Without the variable or a token file there is no service token."""
    assert load(env={"GITLAB_PYPI_PROXY_TOKEN": ""}).upstream.token is None


def private_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_token_from_file_is_stripped(tmp_path: Path) -> None:
    """token_file is read and stripped of surrounding whitespace and the newline."""
    path = private_file(tmp_path, f"  {TOKEN}\n")
    settings = load(env={}, overrides={"upstream.token_file": str(path)})
    assert settings.upstream.token == Secret(TOKEN)


def test_token_variable_beats_token_file(tmp_path: Path) -> None:
    """A non-empty token variable is used even when a token file is configured."""
    path = private_file(tmp_path, "from-file")
    env = {"GITLAB_PYPI_PROXY_TOKEN": TOKEN, "GITLAB_PYPI_PROXY_UPSTREAM_TOKEN_FILE": str(path)}
    assert load(env=env).upstream.token == Secret(TOKEN)


def test_missing_token_file_is_refused(tmp_path: Path) -> None:
    """A token_file that does not exist stops loading, naming the key and the path."""
    absent = tmp_path / "absent"
    message = error_of(overrides={"upstream.token_file": str(absent)})
    assert message.startswith(f'upstream.token_file: "{absent}" cannot be read')


def test_empty_token_file_is_refused(tmp_path: Path) -> None:
    """A token_file holding only whitespace is an error, not an anonymous start."""
    path = private_file(tmp_path, "\n")
    assert "is empty" in error_of(overrides={"upstream.token_file": str(path)})


def test_readable_token_file_warns_without_its_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A token file others can read draws a warning that does not contain the token."""
    path = private_file(tmp_path, TOKEN, mode=0o644)
    with caplog.at_level(logging.WARNING, logger="proxy.config"):
        load(env={}, overrides={"upstream.token_file": str(path)})
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert str(path) in caplog.text
    assert TOKEN not in caplog.text


def test_private_token_file_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A token file only its owner can read is used silently."""
    path = private_file(tmp_path, TOKEN)
    with caplog.at_level(logging.WARNING, logger="proxy.config"):
        load(env={}, overrides={"upstream.token_file": str(path)})
    assert caplog.records == []


def test_settings_repr_never_shows_the_token() -> None:
    """repr, str and format of Settings and its parts mask the token."""
    settings = load(env={"GITLAB_PYPI_PROXY_TOKEN": TOKEN})
    shown = [repr(settings), str(settings), f"{settings}", repr(settings.upstream)]
    assert all(TOKEN not in text and "**********" in text for text in shown)


def test_example_file_gives_the_defaults(cache_home: Path) -> None:
    """config.example.toml, loaded as it is, yields exactly the default Settings."""
    settings = load(config_file=EXAMPLE, env={"XDG_CACHE_HOME": str(cache_home)})
    assert settings == Settings()


def test_example_file_documents_every_key() -> None:
    """Every key load() accepts appears in config.example.toml, and nothing else does."""
    data = tomllib.loads(EXAMPLE.read_text())
    documented = {f"{section}.{key}" for section, table in data.items() for key in table}
    assert documented == accepted_keys()


def test_overrides_travel_through_the_environment(tmp_path: Path) -> None:
    """to_overrides_env and from_overrides_env give back the same flags."""
    overrides = {"server.workers": "2", "cache.offline": True, "cache.dir": tmp_path}
    text = to_overrides_env(overrides)
    assert from_overrides_env(text) == {**overrides, "cache.dir": str(tmp_path)}


def test_load_for_workers_reads_flags_and_config_file(tmp_path: Path) -> None:
    """Workers rebuild Settings from the serialized flags, including the config file."""
    config = write(tmp_path, '[upstream]\nurl = "https://file.example"\n[server]\nworkers = 9\n')
    flags = {"config_file": str(config), "server.workers": "2"}
    settings = load_for_workers({SERVE_ARGS_ENV: to_overrides_env(flags)})
    assert (settings.upstream.url, settings.server.workers) == ("https://file.example", 2)


@pytest.mark.parametrize("text", ["not json", "[1, 2]"])
def test_broken_serve_args_are_refused(text: str) -> None:
    """Serialized flags that are not a JSON object raise ConfigError."""
    with pytest.raises(ConfigError, match=SERVE_ARGS_ENV):
        from_overrides_env(text)


@pytest.mark.parametrize(
    ("storage", "key"),
    [('backend = "s3"', "storage.url"), ("redirect = true", "storage.redirect")],
)
def test_storage_settings_that_do_not_fit_together_are_refused(
    tmp_path: Path, storage: str, key: str
) -> None:
    """backend s3 without a url, or redirect without s3, stops start-up naming the key."""
    message = error_of(config_file=write(tmp_path, f"[storage]\n{storage}\n"))
    assert message.startswith(f"{key}: ")
    assert "(expected " in message


def test_storage_settings_come_from_the_environment() -> None:
    """The [storage] keys are read from GITLAB_PYPI_PROXY_STORAGE_* variables."""
    settings = load(
        env={
            "GITLAB_PYPI_PROXY_STORAGE_BACKEND": "s3",
            "GITLAB_PYPI_PROXY_STORAGE_URL": "s3://files/mirror/",
            "GITLAB_PYPI_PROXY_STORAGE_ENDPOINT_URL": "http://127.0.0.1:9000",
            "GITLAB_PYPI_PROXY_STORAGE_REDIRECT": "yes",
        }
    )
    assert settings.storage == StorageSettings(
        backend="s3", url="s3://files/mirror", endpoint_url="http://127.0.0.1:9000", redirect=True
    )


def test_s3_without_its_extra_says_so_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """backend s3 without boto3 installed stops start-up with a line naming the extra."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "boto3" else real(name, *a)
    )
    message = error_of(
        env={"GITLAB_PYPI_PROXY_STORAGE_BACKEND": "s3", "GITLAB_PYPI_PROXY_STORAGE_URL": "s3://b"}
    )
    assert message.startswith("storage.backend: ")
    assert "gitlab-pypi-proxy[s3]" in message
