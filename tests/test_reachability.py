"""What the proxy last heard from GitLab."""

from __future__ import annotations

from proxy.reachability import Reachability


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_nothing_heard_before_the_first_request() -> None:
    """Before any request, GitLab's state is unknown."""
    assert Reachability().heard().answers is None


def test_a_failure_is_remembered_from_its_first_occurrence() -> None:
    """A run of failures dates from its first; the reason is the last one's."""
    clock = Clock()
    heard = Reachability(clock)
    heard.answered(200)
    clock.now = 1010.0
    heard.failed("could not be reached (ConnectError)")
    clock.now = 1020.0
    heard.failed("no answer in time (ReadTimeout)")
    state = heard.heard()
    assert (state.answers, state.since, state.at) == (False, 1010.0, 1020.0)
    assert state.reason == "no answer in time (ReadTimeout)"


def test_a_5xx_is_a_failure_and_a_4xx_an_answer() -> None:
    """GitLab answering 502 is not GitLab answering; a 404 is."""
    heard = Reachability()
    heard.answered(502)
    assert heard.heard().answers is False
    assert heard.heard().reason == "GitLab answered HTTP 502"
    heard.answered(404)
    assert heard.heard().answers is True
