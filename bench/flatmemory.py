"""The suite's memory figure: the proxy's peak RSS while 8 clients stream one file, by size."""

from __future__ import annotations

from measures import Memory, curls, resident
from targets import Fixture, start


def flat_memory(fx: Fixture, names: dict[str, str], *, clients: int = 8) -> dict[str, int]:
    """Peak RSS of one new proxy (all its processes) while `clients` curls fetch each of
    `names` (label -> package) at once, cold (one fill feeding all) then warm (cached);
    keys "LABEL, cold" / "LABEL, warm", plus "baseline" before any file."""
    found: dict[str, int] = {}
    with start("proxy", fx) as running:
        found["baseline"] = resident(running.pid)
        for label, name in names.items():
            url = running.url_of(name, fx)
            for phase in ("cold", "warm"):
                with Memory(running.pid) as memory:
                    curls(url, clients, 1, fx.sizes[name])
                found[f"{label}, {phase}"] = memory.peak
    return found
