"""Upstream answers: Retry-After read in either form, bounded."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from proxy.answers import MAX_RETRY_AFTER, retry_after

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("30", 30.0, id="delta-seconds"),
        pytest.param(formatdate(NOW + 120, usegmt=True), 120.0, id="http-date"),
        pytest.param(formatdate(NOW + 120).replace("+0000", "-0000"), 120.0, id="date-0000"),
        pytest.param(formatdate(NOW - 120, usegmt=True), 0.0, id="date-past"),
        pytest.param("9" * 5000, MAX_RETRY_AFTER, id="too-long"),
        pytest.param("inf", None, id="inf"),
        pytest.param("-5", None, id="negative"),
        pytest.param("soon", None, id="unreadable"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_retry_after_is_delta_seconds_or_an_http_date(
    value: str | None, seconds: float | None
) -> None:
    """Retry-After (RFC 9110 10.2.3) in either form becomes seconds from now, bounded."""
    assert retry_after(value, now=NOW) == seconds
