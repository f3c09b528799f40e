"""The ring of last errors: what it keeps, and how each line is cut."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from proxy.errorlog import KEPT, ErrorLog, within

LOG = logging.getLogger("proxy.test-errorlog")


@pytest.fixture
def ring() -> Iterator[ErrorLog]:
    """An ErrorLog on a logger of its own."""
    kept = ErrorLog()
    LOG.addHandler(kept)
    yield kept
    LOG.removeHandler(kept)


def test_keeps_warnings_not_info(ring: ErrorLog) -> None:
    """Warnings and errors are kept; information is not."""
    LOG.info("routine")
    LOG.warning("a warning")
    LOG.error("an error")
    assert [e.line for e in ring.last()] == ["an error", "a warning"]


def test_keeps_only_the_last(ring: ErrorLog) -> None:
    """Past KEPT errors, the oldest go first."""
    for n in range(KEPT + 5):
        LOG.warning("error %d", n)
    assert [e.line for e in ring.last()][:1] == [f"error {KEPT + 4}"]
    assert len(ring.last()) == KEPT


def test_notes_the_route_and_scope_of_the_request(ring: ErrorLog) -> None:
    """An error logged while a request is answered carries its route kind and scope."""
    with within("page", "projects/42"):
        LOG.warning("inside")
    LOG.warning("outside")
    assert [(e.route, e.scope) for e in ring.last()] == [("-", None), ("page", "projects/42")]


@pytest.mark.parametrize(
    ("message", "line"),
    [
        ("first\nsecond", "first"),
        ("GET https://user:secret@host/x failed", "GET https://***@host/x failed"),
        ("bell\x07 and escape\x1b[31m", "bell? and escape?[31m"),
        ("x" * 300, "x" * 199 + "…"),
    ],
)
def test_a_line_is_one_bounded_printable_line_without_userinfo(
    ring: ErrorLog, message: str, line: str
) -> None:
    """Only the first line is kept, bounded, printable, with no `user:pass@` in URLs."""
    LOG.warning(message)
    assert ring.last()[0].line == line


def test_an_exception_shows_as_its_type_only(ring: ErrorLog) -> None:
    """A logged exception adds its type to the line, never its message or traceback."""
    try:
        raise KeyError("token-in-message")
    except KeyError:
        LOG.exception("Exception in ASGI application")
    assert ring.last()[0].line == "Exception in ASGI application (KeyError)"
