"""Who may read through the proxy: access modes, proxy tokens, remembered GitLab credentials."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from anyio import to_thread

from proxy.cache import Grants
from proxy.errors import ConfigError
from proxy.tokens import token_hash

Mode = Literal["open", "tokens", "passthrough"]
REALM = 'Basic realm="gitlab-pypi-proxy"'


def resolve_mode(mode: str, *, host: str, service_token: bool) -> Mode:
    """The mode in force; `auto` is open on loopback, passthrough without a service token
    elsewhere, and refused elsewhere with one (a token-holding proxy open to a network)."""
    if mode == "passthrough" and service_token:
        raise ConfigError(
            "access.mode: passthrough forwards each client's own credentials; "
            "remove the service token (upstream.token_env, upstream.token_file) or pick another"
        )
    if mode in ("open", "tokens", "passthrough"):
        return mode  # type: ignore[return-value]
    if _is_loopback(host):
        return "open"
    if service_token:
        raise ConfigError(
            f"access.mode: auto will not serve GitLab's private packages on {host} with a service "
            'token; choose access.mode = "tokens", "open" or "passthrough"'
        )
    return "passthrough"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def presented_secret(authorization: str | None) -> str | None:
    """The secret in a Basic (password; any username) or Bearer header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


@dataclass(frozen=True)
class Gate:
    """The access policy in force for reads."""

    mode: Mode
    tokens: Mapping[str, str]
    """Proxy tokens, {sha256: name}, for mode "tokens" (a TokensFile follows the file)."""
    salt: bytes = b""
    """Per-cache secret salt for remembered credentials, for mode "passthrough"."""
    auth_ttl: float = 300.0

    def __repr__(self) -> str:
        return f"Gate(mode={self.mode!r}, tokens={len(self.tokens)})"

    def admits(self, authorization: str | None) -> bool:
        """Whether a client may read at all (only "tokens" mode asks anything here)."""
        if self.mode != "tokens":
            return True
        secret = presented_secret(authorization)
        if secret is None:
            return False
        digest = token_hash(secret)
        return any(hmac.compare_digest(digest, known) for known in self.tokens)

    def credential(self, scope_key: str, authorization: str | None) -> str:
        """A salted hash naming (scope, client credential): what passthrough remembers.

        The raw header never reaches the disk; anonymous callers get a key too, so a
        public project's pages are shared by every anonymous client.
        """
        material = f"{scope_key}\n{authorization or ''}".encode()
        return hmac.new(self.salt, material, hashlib.sha256).hexdigest()


class Keeper:
    """Applies the Gate to reads: what GitLab sees, whose pages are whose, and what GitLab
    has already let a caller read (scope bindings and remembered credentials)."""

    def __init__(
        self,
        gate: Gate,
        grants: Grants,
        *,
        service: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gate = gate
        self._grants = grants
        self._service = service
        self._clock = clock

    def __repr__(self) -> str:
        return f"Keeper({self.gate!r})"

    @property
    def passthrough(self) -> bool:
        """True when each caller's own GitLab credentials decide."""
        return self.gate.mode == "passthrough"

    def upstream_authorization(self, client: str | None) -> str | None:
        """What GitLab sees for a read: the service credentials, else the client's own
        (never a proxy token: in tokens mode the client's header is ours, not GitLab's)."""
        if self.passthrough:
            return client
        if self.gate.mode == "tokens":
            return self._service
        return self._service or client

    def owner(self, scope_key: str, client: str | None) -> str:
        """Whose pages and file bindings these are: the scope's, or in passthrough the
        scope's as this caller sees it (GitLab filters group listings per caller)."""
        if not self.passthrough:
            return scope_key
        return f"{scope_key}@{self.gate.credential(scope_key, client)[:32]}"

    def page_owner(self, scope_key: str, client: str | None, page_ttl: float) -> tuple[str, float]:
        """Whose copy of a page to use and for how long it is fresh (in passthrough,
        auth_ttl at most: the page stands for GitLab's word on this caller)."""
        ttl = min(page_ttl, self.gate.auth_ttl) if self.passthrough else page_ttl
        return self.owner(scope_key, client), ttl

    async def vouch(self, scope_key: str, client: str | None, shas: Iterable[str]) -> None:
        """GitLab let this caller read this scope and these files: remember both."""
        now = self._clock()
        credential = self.gate.credential(scope_key, client)

        owner = self.owner(scope_key, client)

        def record() -> None:
            self._grants.bind(owner, shas)
            if self.passthrough:
                self._grants.remember(credential, now)

        await to_thread.run_sync(record)

    async def vouched(self, scope_key: str, client: str | None, sha256: str) -> tuple[bool, bool]:
        """(may serve it now without asking GitLab, may serve it while GitLab can't be asked).

        The file must have been listed or served through this scope (in passthrough, to
        this caller), and in passthrough GitLab must have accepted the caller for the
        scope, within auth_ttl for "now".
        """
        credential = self.gate.credential(scope_key, client)
        owner = self.owner(scope_key, client)

        def look() -> tuple[bool, float | None]:
            bound = self._grants.is_bound(owner, sha256)
            return bound, self._grants.remembered(credential) if self.passthrough else 0.0

        bound, when = await to_thread.run_sync(look)
        if not bound or when is None:
            return False, False
        recent = not self.passthrough or self._clock() - when < self.gate.auth_ttl
        return recent, True
