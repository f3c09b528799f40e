"""What the proxy last heard from GitLab: answers and failures of its own requests, in memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Heard:
    """The last outcome of a request to GitLab."""

    answers: bool | None
    """True: GitLab answered (below 500); False: it failed or answered 5xx; None: not asked yet."""
    at: float = 0.0
    """Wall-clock time (time.time()) of that outcome."""
    since: float = 0.0
    """When the current state began (the first of a run of failures or answers)."""
    reason: str = ""
    """Why the last request failed: one line, no URL, no credentials."""


class Reachability:
    """Fed by the GitLab client after each request; read by the status page (no request
    of its own). One process's view: other workers keep theirs."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._heard = Heard(None)

    def __repr__(self) -> str:
        return f"Reachability({self._heard.answers})"

    def answered(self, status: int) -> None:
        """GitLab answered with this HTTP status (5xx counts as a failure)."""
        if status >= 500:
            self.failed(f"GitLab answered HTTP {status}")
        else:
            self._note(True, "")

    def failed(self, reason: str) -> None:
        """GitLab could not be reached or did not answer in time."""
        self._note(False, reason.splitlines()[0] if reason else "no answer")

    def heard(self) -> Heard:
        """The last outcome."""
        return self._heard

    def _note(self, answers: bool, reason: str) -> None:
        now, last = self._clock(), self._heard
        since = last.since if last.answers is answers else now
        self._heard = Heard(answers, now, since, reason)
