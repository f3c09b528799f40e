"""Who may read through the proxy: access modes, proxy tokens, remembered GitLab credentials."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Literal

from anyio import to_thread

from proxy.errors import CacheError, ConfigError
from proxy.grants import Grants
from proxy.models import Caller, Scope
from proxy.tokens import token_hash

log = logging.getLogger("proxy.access")
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
    """Applies the Gate to reads: who a caller is (once per request), and what GitLab has
    already let it read (file bindings and accepted credentials, in the Grants)."""

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

    def caller(self, scope: Scope, client: str | None) -> Caller:
        """Who asks: made once per request from the scope and the client's Authorization."""
        upstream = self.upstream_authorization(client)
        if not self.passthrough:
            # GitLab sees the service credentials (or, open without one, whatever the
            # client sends): the scope's records are everyone's.
            public_owner = owner = scope.key
        else:
            # Never the owners of another mode: what a service token fetched is not
            # what GitLab gives anyone.
            public_owner = owner = f"{scope.key}@anyone"
            if upstream is not None:
                owner = f"{scope.key}@{self.gate.credential(scope.key, upstream)[:32]}"
        origin = self.gate.credential(scope.key, upstream or "")
        return Caller(scope, upstream, owner=owner, origin=origin, public_owner=public_owner)

    def shareable(self, caller: Caller) -> bool:
        """Whether a shared cache in front may keep what this caller is given: GitLab saw
        no credentials, and the proxy asked for none of its own (design 3.2)."""
        return caller.anonymous and self.gate.mode != "tokens"

    def page_ttl(self, page_ttl: float) -> float:
        """How long a page is fresh: in passthrough at most auth_ttl (a page stands for
        GitLab's word on its caller)."""
        return min(page_ttl, self.gate.auth_ttl) if self.passthrough else page_ttl

    async def vouch(
        self, caller: Caller, files: Iterable[tuple[str, str]], *, public: bool = False
    ) -> None:
        """GitLab let this caller read its scope and these (sha256, filename) pairs; with
        `public`, GitLab gives the same to anyone, so nothing is kept for this caller.

        Bookkeeping: a cache that cannot record it (a full disk) costs a later question
        to GitLab, never the answer at hand.
        """
        await to_thread.run_sync(partial(self.vouch_now, caller, files, public=public))

    def vouch_now(
        self, caller: Caller, files: Iterable[tuple[str, str]], *, public: bool = False
    ) -> None:
        """(Blocking) vouch(), for a thread that writes more to the cache in the same hop."""
        owner = caller.public_owner if public else caller.owner
        try:
            self._grants.bind(owner, files)
            if self.passthrough:
                self._grants.accept(owner, self._clock())
        except CacheError as exc:
            log.warning("cannot record what GitLab allowed: %s", exc)

    def vouched_now(self, caller: Caller, sha256: str, filename: str) -> tuple[bool, bool]:
        """(may serve it now without asking GitLab, may serve it while GitLab can't be asked).

        Blocking: call it from a thread hop that reads the rest of the request's facts.
        GitLab must have listed or served the file under this name through this scope, to
        this caller or to anyone; in passthrough, within auth_ttl for "now".
        """
        return self.standing(self.vouched_until(caller, sha256, filename))

    def standing(self, until: float | None) -> tuple[bool, bool]:
        """vouched_now's answer from vouched_until's."""
        return (False, False) if until is None else (self._clock() < until, True)

    def vouched_until(self, caller: Caller, sha256: str, filename: str) -> float | None:
        """(Blocking) until when the caller may have the file without asking GitLab
        (math.inf: for good; a time past: only while GitLab can't be asked), or None when
        GitLab never gave it here (vouched_now's rule)."""
        best: float | None = None
        try:
            for owner in dict.fromkeys((caller.owner, caller.public_owner)):
                if not self._grants.is_bound(owner, sha256, filename):
                    continue
                when = self._grants.accepted(owner) if self.passthrough else math.inf
                if when is not None and (best is None or when > best):
                    best = when
                if best == math.inf:
                    break  # nothing vouches more
        except CacheError as exc:
            log.warning("cannot read what GitLab allowed: %s", exc)
            return None
        return best if best is None or best == math.inf else best + self.gate.auth_ttl

    async def refuse(self, caller: Caller, sha256: str, filename: str, *, ttl: float) -> None:
        """GitLab said this caller has no such file: remember it for `ttl` seconds, when
        GitLab's word holds for every caller of the owner (service credentials or none)."""
        if caller.upstream not in (None, self._service):
            return
        try:
            await to_thread.run_sync(
                lambda: self._grants.refuse(caller.owner, sha256, filename, ttl=ttl)
            )
        except CacheError as exc:
            log.warning("cannot record a refusal: %s", exc)

    async def refused(self, caller: Caller, sha256: str, filename: str) -> bool:
        """Whether GitLab recently said this caller has no such file."""
        try:
            return await to_thread.run_sync(self._grants.refused, caller.owner, sha256, filename)
        except CacheError:
            return False
