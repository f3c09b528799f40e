"""A bounded memory of the latest keys."""

from __future__ import annotations

from proxy.recent import Recent


def test_past_its_bound_the_oldest_put_is_forgotten() -> None:
    """With `most` keys held, putting another forgets the one put longest ago."""
    recent: Recent[str, int] = Recent(2)
    for number, key in enumerate("abc"):
        recent.put(key, number)
    assert ("a" in recent, recent.get("b"), recent.get("c"), len(recent)) == (False, 1, 2, 2)


def test_putting_a_key_again_makes_it_the_newest() -> None:
    """A key put again is the last to go, and holds its new value."""
    recent: Recent[str, int] = Recent(2)
    recent.put("a", 1)
    recent.put("b", 2)
    recent.put("a", 3)
    recent.put("c", 4)
    assert ("b" in recent, recent.get("a"), recent.get("c")) == (False, 3, 4)


def test_first_says_whether_a_key_was_new() -> None:
    """first() puts a key it does not hold and says so; a held key is left as it is."""
    recent: Recent[str, int] = Recent(4)
    assert (recent.first("a", 1), recent.first("a", 2), recent.get("a")) == (True, False, 1)
