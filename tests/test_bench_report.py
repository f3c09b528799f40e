"""bench/report.py: the suite's page and headline with an install-only target among them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from measures import Result
from report import Setup, headline, write_page
from targets import LABELS

SETUP = Setup(40, 192, 1000, 20, 100, 1, 2, quick=True)
META = {"date": "2026-12-01", "machine": "2 CPUs", "versions": "?"}
ALWAYS = LABELS["proxy-always"]


def _installs(pip_cold: float, uv_cold: float, warm: float) -> dict[str, float]:
    return {"pip, cold": pip_cold, "pip, warm": warm, "uv, cold": uv_cold, "uv, warm": warm}


def _results() -> list[Result]:
    """GitLab direct, the default proxy and the always proxy, installs only where measured."""
    figures = {"page_rps": 100.0, "hit_1": 10.0, "hit_8": 10.0, "hit_1_big": 10.0}
    figures |= {"hit_8_big": 10.0, "cold": 1.0, "cold_big": 1.0, "peak_rss": 10**8}
    return [
        Result("gitlab", **figures, installs=_installs(4.0, 4.0, 4.0)),
        Result("proxy", **figures, installs=_installs(8.0, 5.0, 1.0)),
        Result("proxy-always", installs=_installs(2.0, 1.0, 0.5)),
    ]


def _words(text: str) -> str:
    """`text` with its wrapping undone."""
    return " ".join(text.split())


def test_an_install_only_target_has_an_install_row_and_no_throughput_row() -> None:
    """The always proxy appears once in the page's tables: in the install table, not among
    the throughput rows."""
    page = write_page(_results(), {}, {}, SETUP, META)
    rows = [line for line in page.splitlines() if line.startswith(f"| {ALWAYS} |")]
    assert rows == [f"| {ALWAYS} | 2.00 / 0.50 | 1.00 / 0.50 |"]


def test_the_headline_gives_the_default_and_the_always_install_ratios() -> None:
    """Each install line gives the default proxy's ratios to GitLab direct, then the always
    proxy's, each labelled."""
    text = _words(headline(_results(), {}, SETUP, "2026-12-01", page="this page"))
    assert (
        "`pip install` of a 20-package tree, GitLab 100 ms away, default settings: cold 0.50x"
        " GitLab direct's speed (at least 1x); warm 4.00x GitLab direct's, n/a the best peer's"
        " (above 1x); with `pages.metadata = always`, as recommended for CI mirrors: cold 2.00x,"
        " warm 8.00x GitLab direct's, n/a the best peer's;"
    ) in text
    assert (
        "`uv pip install` of a 20-package tree, GitLab 100 ms away, default settings: cold"
        " 0.80x GitLab direct's speed"
    ) in text
    assert "mirrors: cold 4.00x, warm 8.00x GitLab direct's, n/a the best peer's." in text


def test_the_headline_names_no_always_figures_when_that_target_did_not_run() -> None:
    """Without the always proxy among the results (a `--targets` subset), the install lines
    give the default proxy's ratios alone."""
    results = [r for r in _results() if r.target != "proxy-always"]
    text = _words(headline(results, {}, SETUP, "2026-12-01", page="this page"))
    assert "pages.metadata" not in text
    assert "warm 4.00x GitLab direct's, n/a the best peer's (above 1x)." in text


def test_the_headline_gives_the_off_install_ratios_after_the_always_ones() -> None:
    """With the proxy without core metadata among the results, each install line ends with
    its ratios, labelled with why it is there."""
    results = [*_results(), Result("proxy-off", installs=_installs(4.0, 2.0, 2.0))]
    text = _words(headline(results, {}, SETUP, "2026-12-01", page="this page"))
    assert (
        "mirrors: cold 2.00x, warm 8.00x GitLab direct's, n/a the best peer's; with"
        " `pages.metadata = off`, no core metadata for a client to fetch: cold 1.00x, warm"
        " 2.00x GitLab direct's, n/a the best peer's;"
    ) in text
