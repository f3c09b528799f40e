"""Settings: a Secret never shows itself."""

from __future__ import annotations

from proxy.settings import Secret

TOKEN = "glpat-s3cr3t-t0k3n-value"


def test_secret_masks_itself_but_reveals_on_request() -> None:
    """Secret shows only asterisks in repr, str and format; reveal() gives the value."""
    secret = Secret(TOKEN)
    masked = "Secret('**********')"
    assert (repr(secret), str(secret), f"{secret}", f"{secret:>40}") == (masked,) * 4
    assert secret.reveal() == TOKEN


def test_secret_truth_and_equality_follow_the_value() -> None:
    """A Secret is true when non-empty and equal to another Secret with the same value."""
    assert Secret(TOKEN)
    assert not Secret("")
    assert Secret(TOKEN) == Secret(TOKEN)
    assert Secret(TOKEN) != Secret("other")
    assert Secret(TOKEN) != TOKEN
