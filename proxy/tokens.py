"""The proxy's client tokens: the tokens file (`name:<sha256>` lines) and its live view."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from proxy.errors import ConfigError

log = logging.getLogger("proxy.tokens")
_TOKEN_LINE = re.compile(r"^([A-Za-z0-9_.@-]{1,64}):([0-9a-f]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def token_hash(token: str) -> str:
    """How a proxy token is stored: its sha256 (tokens are random, so no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_tokens(path: str, *, missing_ok: bool = False) -> dict[str, str]:
    """The tokens file as {hash: name}; a malformed line stops start-up naming its number.

    A file that does not exist holds no tokens when `missing_ok`, else is a ConfigError.
    """
    return {digest: name for name, digest in _entries(path, missing_ok=missing_ok)}


def token_names(path: str) -> list[str]:
    """The names in the tokens file, in its order; none when it does not exist."""
    return [name for name, _ in _entries(path, missing_ok=True)]


def check_name(name: str) -> None:
    """ConfigError unless `name` can name a token."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"token add: {name!r} is not a name (letters, digits, _ . @ -)")


def new_token() -> str:
    """A fresh random proxy token."""
    return "gpp_" + secrets.token_urlsafe(32)


def add_token(path: str, name: str) -> str:
    """Make a new proxy token for `name`, store only its hash, and return it (shown once).

    The file (mode 0600) and its directory (mode 0700) are created when missing.
    """
    if not path:
        raise ConfigError("access.tokens_file: set it to a file where token hashes are kept")
    check_name(name)
    lines = _read(path, missing_ok=True)
    if name in (known for known, _ in _parse(path, lines)):
        raise ConfigError(f"token add: a token named {name!r} exists already")
    token = new_token()
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _replace(path, [*lines, f"{name}:{token_hash(token)}"])
    return token


def revoke_token(path: str, name: str) -> bool:
    """Remove `name`'s token from the file (replaced atomically); False if there was none."""
    lines = _read(path, missing_ok=True)
    _parse(path, lines)  # a malformed file is refused, not rewritten
    kept = [line for line in lines if _name_of(line) != name]
    if len(kept) == len(lines):
        return False
    _replace(path, kept)
    return True


class TokensFile(Mapping[str, str]):
    """The tokens file as {hash: name}, read again when it changes, so that `token add`
    and `token revoke` count in a running proxy without a restart.

    The file is looked at (one stat) at most once per `interval` seconds. A file that
    disappears holds no tokens; one that became malformed is logged and the tokens read
    before are kept, until it is fixed.
    """

    def __init__(
        self, path: str, *, interval: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._path = path
        self._interval = interval
        self._clock = clock
        self._seen = _signature(path)
        self._tokens = read_tokens(path, missing_ok=True)
        self._checked = clock()

    def __repr__(self) -> str:
        return f"TokensFile({self._path!r}, tokens={len(self._tokens)})"

    def __getitem__(self, digest: str) -> str:
        return self._current()[digest]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def _current(self) -> dict[str, str]:
        now = self._clock()
        if now - self._checked < self._interval:
            return self._tokens
        self._checked = now
        seen = _signature(self._path)
        if seen != self._seen:
            try:
                self._tokens = read_tokens(self._path, missing_ok=True)
            except ConfigError as exc:
                log.error("%s; keeping the %d tokens read before", exc, len(self._tokens))
            else:
                log.info("read %d tokens from %s", len(self._tokens), self._path)
            self._seen = seen
        return self._tokens


def _signature(path: str) -> tuple[int, int, int, int] | None:
    """What changes when the file is written or replaced (None: there is no file)."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino, found.st_mtime_ns, found.st_size


def _entries(path: str, *, missing_ok: bool) -> list[tuple[str, str]]:
    """(name, hash) for each token line of the file."""
    return _parse(path, _read(path, missing_ok=missing_ok))


def _read(path: str, *, missing_ok: bool) -> list[str]:
    """The file's lines; none when there is no path, or no file and `missing_ok`."""
    if not path:
        return []
    try:
        return Path(path).read_text().splitlines()
    except OSError as exc:
        if missing_ok and isinstance(exc, FileNotFoundError):
            return []
        raise ConfigError(f"access.tokens_file: cannot read {path!r} ({exc.strerror})") from exc


def _parse(path: str, lines: list[str]) -> list[tuple[str, str]]:
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _TOKEN_LINE.fullmatch(line.strip())
        if match is None:
            raise ConfigError(
                f"access.tokens_file: line {number} of {path!r} is not 'name:<sha256 hex>'"
            )
        entries.append((match[1], match[2]))
    return entries


def _name_of(line: str) -> str | None:
    match = _TOKEN_LINE.fullmatch(line.strip())
    return None if match is None else match[1]


def _replace(path: str, lines: list[str]) -> None:
    """Write `lines` to a temp file beside the (real) file, then rename it over the file:
    a running proxy reads either the old file or the new one, never half of one. The mode
    is kept (0600 for a new file)."""
    target = os.path.realpath(path)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o600
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tokens-")
    try:
        with os.fdopen(fd, "w") as out:
            out.write("".join(line + "\n" for line in lines))
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
