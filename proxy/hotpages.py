"""Rendered pages kept in memory, sent on a hit while fresh and while nothing they show changed."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from proxy.changes import Changes
from proxy.codings import Coding
from proxy.rendered import Rendering

HOT_MEMORY = 32 * 1024 * 1024
"""Default bound on the bytes of bodies kept (mostly shared with the Renderer's)."""


@dataclass(frozen=True, slots=True)
class HotKey:
    """Everything a page's body depends on besides the stored data its stamp guards."""

    owner: str  # Caller.owner: a rendering made for one owner never reaches another
    name: str  # normalized; "" for the index
    representation: str
    base_url: str
    coding: Coding


@dataclass(frozen=True, slots=True)
class Hot:
    """A rendering, until when its stored page is fresh, and the change marks it was made under."""

    rendering: Rendering
    fresh_until: float
    stamp: bytes


class HotPages:
    """The most recently used renderings up to `max_bytes` of bodies, each valid until its
    page's freshness ends or a change mark it depends on moves (in any process)."""

    def __init__(
        self,
        changes: Changes,
        *,
        max_bytes: int = HOT_MEMORY,
        on_hit: Callable[[], object] = lambda: None,
    ) -> None:
        self.max_bytes = max_bytes
        self._changes = changes
        self._on_hit = on_hit
        self._kept: OrderedDict[HotKey, Hot] = OrderedDict()
        self._bytes = 0

    def __repr__(self) -> str:
        return f"HotPages(max_bytes={self.max_bytes}, held_bytes={self.held_bytes})"

    @property
    def held_bytes(self) -> int:
        """Bytes of the bodies kept now (never above max_bytes)."""
        return self._bytes

    def stamp(self, name: str) -> bytes:
        """The change marks for the page of `name`: take them before reading the page."""
        return self._changes.stamp(name)

    def get(self, key: HotKey, now: float) -> Hot | None:
        """The kept rendering for `key` if still fresh at `now` and unchanged; else None
        (and a stale one is dropped)."""
        hot = self._kept.get(key)
        if hot is None:
            return None
        if now >= hot.fresh_until or self._changes.stamp(key.name) != hot.stamp:
            self._drop(key)
            return None
        self._kept.move_to_end(key)
        self._on_hit()
        return hot

    def keep(self, key: HotKey, hot: Hot) -> None:
        """Keep `hot` for `key`, the least recently used going first beyond max_bytes."""
        size = len(hot.rendering.body)
        if size > self.max_bytes:
            return
        self._drop(key)
        self._kept[key] = hot
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, gone = self._kept.popitem(last=False)
            self._bytes -= len(gone.rendering.body)

    def _drop(self, key: HotKey) -> None:
        gone = self._kept.pop(key, None)
        if gone is not None:
            self._bytes -= len(gone.rendering.body)
