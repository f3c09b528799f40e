"""Setting values, each kind parsed and checked; a refusal says what it is not and what fits."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, cast, get_args
from urllib.parse import urlsplit

from proxy.errors import ConfigError

AccessMode = Literal["auto", "open", "tokens", "passthrough"]
ForwardingMode = Literal["follow", "redirect", "deny"]
MetadataMode = Literal["off", "cached", "always"]
HttpMode = Literal["auto", "h11", "httptools"]
StorageBackend = Literal["local", "s3"]


class Invalid(Exception):
    """A value was refused; the message says what it is not and what was expected."""

    def __init__(self, message: str, *, hide_value: bool = False) -> None:
        super().__init__(message)
        self.hide_value = hide_value


# Each converter takes the raw value and whether it came as text (environment, flags),
# where "8" may stand for 8 and "yes" for true; TOML values must have the right type.
Converter = Callable[[object, bool], Any]


def string(value: object, text: bool) -> str:
    if not isinstance(value, str):
        raise Invalid("is not a string (expected text in quotes)")
    return value


def file(value: object, text: bool) -> str:
    path = string(value, text)
    if path and not Path(path).expanduser().is_file():
        raise Invalid("is not a file (expected the path of an existing file, or empty)")
    return path


def boolean(value: object, text: bool) -> bool:
    if text and isinstance(value, str):
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        value = words.get(value.strip().lower(), value)
    if not isinstance(value, bool):
        raise Invalid("is not a boolean (expected true or false)")
    return value


def number(value: object, text: bool, *, above_zero: bool) -> float:
    if text and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    if not math.isfinite(number) or number < 0 or (above_zero and number == 0):
        bound = "above 0" if above_zero else "0 or more"
        raise Invalid(f"is not a number of seconds (expected a number {bound}, e.g. 60)")
    return number


def workers(value: object, text: bool) -> int:
    return _count(value, text, of="processes")


def connections(value: object, text: bool) -> int:
    return _count(value, text, of="connections")


def _count(value: object, text: bool, *, of: str) -> int:
    if text and isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise Invalid(f"is not a number of {of} (expected a whole number, 1 or more)")
    return value


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def size(value: object, text: bool) -> int:
    size = 0
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(Decimal(match[1]) * _UNITS[(match[2] or "").lower()])
    if size <= 0:
        raise Invalid('is not a size (expected e.g. "20GiB", "500MB" or a number of bytes)')
    return size


def parse_size(value: str, *, where: str) -> int:
    """Bytes in a size such as "20GiB", "500MB" or "1048576"; ConfigError naming `where`."""
    try:
        return size(value, True)
    except Invalid as exc:
        raise ConfigError(f"{where}: {json.dumps(value)} {exc}") from None


_LISTEN = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]+)):([0-9]{1,5})")


def listen(value: object, text: bool) -> tuple[str, int]:
    match = _LISTEN.fullmatch(value) if isinstance(value, str) else None
    try:
        host = str(ipaddress.IPv6Address(match[1])) if match and match[1] else ""
    except ValueError:
        match = None
    if not match or int(match[3]) > 65535:
        raise Invalid('is not HOST:PORT (expected e.g. "127.0.0.1:8080" or "[::1]:8080")')
    return host or match[2], int(match[3])


def url(value: object, text: bool, *, optional: bool = False) -> str:
    expected = 'is not an http(s) URL with a host (expected e.g. "https://gitlab.example.com")'
    url = string(value, text).strip()
    if optional and not url:
        return ""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        ok = False
    if not ok or any(c.isspace() for c in url):
        raise Invalid(expected)
    if "@" in parts.netloc:
        raise Invalid(
            "holds credentials (expected them in upstream.token_env or token_file)",
            hide_value=True,
        )
    if parts.query or parts.fragment:
        raise Invalid('is not a base URL (expected no "?query" or "#fragment")')
    return url.rstrip("/")


def redis_url(value: object, text: bool) -> str:
    """A Redis URL (redis://, rediss:// or unix://), or empty; never shown in a refusal,
    since it may hold Redis's password."""
    url = string(value, text).strip()
    try:
        parts = urlsplit(url)
        ok = not url or (
            parts.scheme in ("redis", "rediss") and bool(parts.hostname) and parts.port != 0
        )
        ok = ok or (parts.scheme == "unix" and bool(parts.path))
    except ValueError:  # a port that is not a number
        ok = False
    if not ok or any(c.isspace() for c in url):
        raise Invalid(
            'is not a Redis URL (expected e.g. "redis://redis:6379/0", or empty)', hide_value=True
        )
    return url


def addresses(value: object, text: bool) -> tuple[str, ...]:
    if text and isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    example = '(expected e.g. ["10.0.0.1", "10.42.0.0/16", "::1"])'
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"is not a list of IP addresses or networks {example}")
    try:  # canonical: an address as itself, a network as its CIDR form
        return tuple(
            str(ipaddress.ip_network(item, strict=False))
            if "/" in item
            else str(ipaddress.ip_address(item))
            for item in value
        )
    except ValueError:
        raise Invalid(f"holds something that is not an IP address or network {example}") from None


def mode(value: object, text: bool) -> AccessMode:
    modes = get_args(AccessMode)
    if value not in modes:
        raise Invalid(f"is not an access mode (expected one of {', '.join(modes)})")
    return cast(AccessMode, value)


def variable_name(value: object, text: bool) -> str:
    # Never echoed: a token pasted here by mistake must not reach the terminal.
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", value):
        raise Invalid(
            'is not a variable name (expected e.g. "GITLAB_PYPI_PROXY_TOKEN", '
            "the name of the variable holding the token, not the token)",
            hide_value=True,
        )
    return value


def forwarding_mode(value: object, text: bool) -> ForwardingMode:
    modes = get_args(ForwardingMode)
    if value not in modes:
        raise Invalid(f"is not a forwarding mode (expected one of {', '.join(modes)})")
    return cast(ForwardingMode, value)


def http_mode(value: object, text: bool) -> HttpMode:
    modes = get_args(HttpMode)
    if value not in modes:
        raise Invalid(f"is not an HTTP implementation (expected one of {', '.join(modes)})")
    return cast(HttpMode, value)


def metadata_mode(value: object, text: bool) -> MetadataMode:
    modes = get_args(MetadataMode)
    if value not in modes:
        raise Invalid(f"is not a core metadata mode (expected one of {', '.join(modes)})")
    return cast(MetadataMode, value)


def storage_backend(value: object, text: bool) -> StorageBackend:
    backends = get_args(StorageBackend)
    if value not in backends:
        raise Invalid(f"is not a storage backend (expected one of {', '.join(backends)})")
    return cast(StorageBackend, value)


def bucket_url(value: object, text: bool) -> str:
    found = string(value, text).strip()
    if not found:
        return ""
    parts = urlsplit(found)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise Invalid('is not an S3 URL (expected "s3://bucket" or "s3://bucket/prefix")')
    if "@" in parts.netloc:
        raise Invalid("holds credentials (expected them the standard AWS way)", hide_value=True)
    return found.rstrip("/")


def _strings(value: object, text: bool) -> list[str] | None:
    if text and isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        return None
    return list(value)


_HOST_PORT = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?(?::[0-9]{1,5})?")


def hosts(value: object, text: bool) -> tuple[str, ...]:
    items = _strings(value, text)
    found = [item.strip().lower() for item in items] if items is not None else None
    if found is None or not all(_HOST_PORT.fullmatch(item) for item in found):
        raise Invalid('is not a list of hosts (expected e.g. ["pypi.org", "127.0.0.1:8081"])')
    return tuple(found)


_PATTERN = re.compile(r"[A-Za-z0-9._*?\[\]!-]{1,200}")


def patterns(value: object, text: bool) -> tuple[str, ...]:
    items = _strings(value, text)
    if items is None or not all(_PATTERN.fullmatch(item) for item in items):
        raise Invalid('is not a list of name patterns (expected e.g. ["acme-*", "internal-*"])')
    return tuple(items)


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(value: object, text: bool) -> float:
    """Seconds in "7d", "12h", "30m", "90s" or a number of seconds; "" (or 0) is off."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and not value.strip():
        return 0.0
    match = _DURATION.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if match is None:
        raise Invalid('is not a duration (expected e.g. "7d", "12h", "30m", or "" for off)')
    return float(match[1]) * _SECONDS[match[2]]
