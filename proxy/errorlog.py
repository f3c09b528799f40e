"""The last errors, in memory for the status page: a ring fed by a logging handler."""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

KEPT = 20
LINE_CHARS = 200
_REQUEST: ContextVar[tuple[str, str | None]] = ContextVar("request", default=("-", None))
"""The route kind and scope key of the request being answered (inherited by its tasks)."""
_USERINFO = re.compile(r"//[^/@\s]*@")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True, slots=True)
class Logged:
    """One error as the status page shows it."""

    at: float
    """Wall-clock time (time.time())."""
    route: str
    """The route kind of the request it happened in ("-": none)."""
    scope: str | None
    """The key of the project or group it concerns, or None: its line may name that scope."""
    line: str
    """The message's first line, bounded, printable ASCII, no `user:pass@` in URLs."""


@contextmanager
def within(route: str, scope: str | None) -> Iterator[None]:
    """Mark what is logged inside (and in tasks started inside) as of this request."""
    token = _REQUEST.set((route, scope))
    try:
        yield
    finally:
        _REQUEST.reset(token)


class ErrorLog(logging.Handler):
    """Keeps the last KEPT warnings and errors logged (the app logs each 5xx as one)."""

    def __init__(self, kept: int = KEPT) -> None:
        super().__init__(logging.WARNING)
        self._ring: deque[Logged] = deque(maxlen=kept)

    def __repr__(self) -> str:
        return f"ErrorLog({len(self._ring)})"

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record (never raises: logging must not fail)."""
        try:
            text = record.getMessage()
        except Exception:  # a malformed call: the template alone, never the arguments
            text = str(record.msg)
        if record.exc_info and record.exc_info[0] is not None:
            text = f"{text} ({record.exc_info[0].__name__})"
        route, scope = _REQUEST.get()
        self._ring.append(Logged(record.created, route, scope, _one_line(text)))

    def last(self) -> tuple[Logged, ...]:
        """The kept errors, newest first."""
        return tuple(reversed(self._ring))


def _one_line(text: str) -> str:
    line = _USERINFO.sub("//***@", text.strip().splitlines()[0] if text.strip() else "")
    line = _UNPRINTABLE.sub("?", line)
    return line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 1] + "…"
