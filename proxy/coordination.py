"""Replicas in step through Redis: fenced fill leases, invalidations, tokens (only redis import)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.errors import ConfigError
from proxy.tokens import check_name, new_token, token_hash

T = TypeVar("T")
log = logging.getLogger("proxy.coordination")
PREFIX = "gitlab-pypi-proxy"
PAGES = f"{PREFIX}:pages"
"""The channel of uploads: the normalized name whose pages changed ("" for all)."""
TOKENS = f"{PREFIX}:tokens"
"""The hash of proxy tokens (name -> sha256 of the token), and the channel of its changes."""
FENCE = f"{PREFIX}:fence"
"""The counter every lease takes its fencing token from: it only grows."""
POLL = 0.05
"""Seconds between looks at another replica's lease."""
TIMEOUT = 1.0
"""Seconds any Redis command may take: a Redis slower than that counts as away."""
REFRESH = 1.0
"""Seconds between reads of the shared tokens (and looks at Redis while it is away)."""
FENCES_KEPT_MS = 24 * 3600 * 1000

# KEYS: lease, fence counter, latest fence of this file. ARGV: lease ms, latest ms.
_ACQUIRE = """
if redis.call('exists', KEYS[1]) == 1 then return 0 end
local fence = redis.call('incr', KEYS[2])
redis.call('set', KEYS[1], fence, 'PX', ARGV[1])
redis.call('set', KEYS[3], fence, 'PX', ARGV[2])
return fence
"""
# KEYS: lease. ARGV: fence, lease ms. Only the holder renews.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lease. ARGV: fence. Only the holder lets go.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to fetch one file for every replica, and its fencing token."""

    sha256: str
    fence: int
    """From INCR: a later lease of the same file always has a greater one."""


class SharedTokens(Mapping[str, str]):
    """The proxy tokens in Redis as {hash: name}; the last view read is kept while Redis
    is away."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"SharedTokens(tokens={len(self._tokens)})"

    def replace(self, tokens: dict[str, str]) -> None:
        self._tokens = tokens

    def __getitem__(self, digest: str) -> str:
        return self._tokens[digest]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)


class Coordinator:
    """What replicas share through Redis; with no URL (or while Redis is away) each
    replica coordinates alone: leases are granted at once and nothing is published."""

    def __init__(
        self, url: str = "", *, lease_ttl: float = 30.0, on_wait: Callable[[], None] = lambda: None
    ) -> None:
        self.shared = bool(url)
        self.connected = False
        self.tokens = SharedTokens()
        self._lease_ms = int(lease_ttl * 1000)
        self._on_wait = on_wait
        self._client = _client(url) if url else None
        self._listener: asyncio.Task[None] | None = None

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return f"Coordinator(shared={self.shared}, connected={self.connected})"

    @property
    def state(self) -> str:
        """ "redis", "local" (no Redis configured) or "local (redis unreachable)"."""
        if not self.shared:
            return "local"
        return "redis" if self.connected else "local (redis unreachable)"

    async def start(self, on_pages: Callable[[str], Awaitable[None]]) -> None:
        """Connect and read the tokens (if Redis answers), then listen for invalidations,
        which `on_pages(name)` applies; reconnects for as long as it runs."""
        if self._client is None:
            return
        tried = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(on_pages, tried))
        await tried.wait()  # subscribed and tokens read, or Redis is away for now

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._client is not None:
            await self._client.aclose()

    @contextlib.asynccontextmanager
    async def lead(self, sha256: str, *, wait: float) -> AsyncIterator[Lease | None]:
        """Hold this file's lease while the block fetches it: waits while another replica
        holds it (at most `wait` seconds, then leads unfenced), renews it while the block
        runs, and lets it go after. None: no lease (alone, Redis away, or waited enough)."""
        lease = await self.acquire(sha256, wait=wait)
        if lease is None:
            yield None
            return
        renewing = asyncio.create_task(self._renew(lease))
        try:
            yield lease
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await self._call(lambda c: c.eval(_RELEASE, 1, _lease(sha256), lease.fence))

    async def may_commit(self, lease: Lease | None) -> bool:
        """False when a later lease of the file was granted since (this one expired): the
        stale writer must not commit. True without a lease, or when Redis cannot say."""
        if lease is None or self._client is None:
            return True
        latest = await self._call(lambda c: c.get(_latest(lease.sha256)))
        return latest is None or int(latest) == lease.fence

    async def invalidate(self, name: str) -> None:
        """Tell every replica (this one too) to drop the pages of `name` ("" for all)."""
        await self._call(lambda c: c.publish(PAGES, name))

    async def acquire(self, sha256: str, *, wait: float) -> Lease | None:
        """This file's lease (unrenewed), waiting at most `wait` seconds while another
        replica holds it; None without one (alone, Redis away, or waited enough)."""
        loop = asyncio.get_running_loop()
        deadline, waited = loop.time() + wait, False
        keys = (_lease(sha256), FENCE, _latest(sha256))
        while self.connected:
            fence = await self._call(
                lambda c: c.eval(_ACQUIRE, 3, *keys, self._lease_ms, FENCES_KEPT_MS)
            )
            if fence is None:
                return None  # Redis went away: alone
            if int(fence):
                return Lease(sha256, int(fence))
            if not waited:
                waited = True
                self._on_wait()
            if loop.time() > deadline:
                log.warning("another replica's fill of %s is still running: fetching too", sha256)
                return None
            await asyncio.sleep(POLL)
        return None

    async def _renew(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            kept = await self._call(
                lambda c: c.eval(_RENEW, 1, _lease(lease.sha256), lease.fence, self._lease_ms)
            )
            if kept == 0:
                log.warning("lost the lease of %s: its fill will not be committed", lease.sha256)
                return

    async def _call(self, command: Callable[[aioredis.Redis], Awaitable[T]]) -> T | None:
        """A command's answer; None (and Redis counted as away) when Redis fails, so that
        a request never waits on a Redis that is down."""
        if self._client is None or not self.connected:
            return None
        try:
            return await command(self._client)
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return None

    async def _listen(
        self, on_pages: Callable[[str], Awaitable[None]], tried: asyncio.Event
    ) -> None:
        assert self._client is not None
        missed = False
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(PAGES, TOKENS)
                    await self._load_tokens()
                    if missed:
                        await on_pages("")  # invalidations published while we were away
                    if not self.connected:
                        log.info("coordinating with the other replicas through Redis")
                    self.connected = missed = True
                    tried.set()
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=REFRESH
                        )
                        if message is None or message["channel"] == TOKENS.encode():
                            await self._load_tokens()
                        elif message["channel"] == PAGES.encode():
                            await on_pages(_text(message["data"]))
            except (RedisError, OSError) as exc:
                self._lost(exc)
            tried.set()
            await asyncio.sleep(REFRESH)

    async def _load_tokens(self) -> None:
        assert self._client is not None
        found = await self._client.hgetall(TOKENS)
        self.tokens.replace({_text(v): _text(k) for k, v in found.items()})

    def _lost(self, exc: BaseException) -> None:
        if self.connected:
            log.warning(
                "Redis is unreachable (%s): this replica coordinates alone", type(exc).__name__
            )
        self.connected = False


def add_token(url: str, name: str) -> str:
    """Make a proxy token for `name` in Redis (only its hash is kept) and return it."""
    check_name(name)
    token = new_token()

    async def add(client: aioredis.Redis) -> bool:
        added = bool(await client.hsetnx(TOKENS, name, token_hash(token)))
        await client.publish(TOKENS, name)
        return added

    if not _once(url, add):
        raise ConfigError(f"token add: a token named {name!r} exists already")
    return token


def token_names(url: str) -> list[str]:
    """The names of the proxy tokens in Redis, sorted."""

    async def names(client: aioredis.Redis) -> list[str]:
        return sorted(_text(key) for key in await client.hkeys(TOKENS))

    return _once(url, names)


def revoke_token(url: str, name: str) -> bool:
    """Remove `name`'s token from Redis; False if there was none."""

    async def revoke(client: aioredis.Redis) -> bool:
        removed = bool(await client.hdel(TOKENS, name))
        await client.publish(TOKENS, name)
        return removed

    return _once(url, revoke)


def _once(url: str, command: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """Run one command against Redis from the command line; ConfigError if it is away."""

    async def run() -> T:
        client = _client(url)
        try:
            return await command(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except (RedisError, OSError) as exc:
        raise ConfigError(
            f"coordination.redis_url: Redis did not answer ({type(exc).__name__})"
        ) from None


def _client(url: str) -> aioredis.Redis:
    # No retries: a Redis that is down must cost a request one quick failure, not seconds.
    return aioredis.Redis.from_url(
        url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, retry=Retry(NoBackoff(), 0)
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _lease(sha256: str) -> str:
    return f"{PREFIX}:lease:{sha256}"


def _latest(sha256: str) -> str:
    return f"{PREFIX}:fenced:{sha256}"
