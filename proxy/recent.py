"""A bounded memory of the latest keys: the oldest remembered is forgotten first."""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    """At most `most` keys with their values, in the order they were last put."""

    __slots__ = ("_kept", "_most")

    def __init__(self, most: int) -> None:
        self._most = most
        self._kept: dict[K, V] = {}

    def put(self, key: K, value: V) -> None:
        """Remember `value` under `key` as the newest; past `most`, forget the oldest."""
        self._kept.pop(key, None)
        self._kept[key] = value
        while len(self._kept) > self._most:
            del self._kept[next(iter(self._kept))]

    def first(self, key: K, value: V) -> bool:
        """Put `key` unless it is remembered already; True when it was new."""
        if key in self._kept:
            return False
        self.put(key, value)
        return True

    def get(self, key: K) -> V | None:
        return self._kept.get(key)

    def pop(self, key: K) -> V | None:
        """Forget `key`; its value, or None when it was not remembered."""
        return self._kept.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._kept

    def __len__(self) -> int:
        return len(self._kept)
