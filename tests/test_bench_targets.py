"""bench/targets.py: the suite's proxy targets start with their settings."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from harness import PROJECT
from targets import Fixture, start

from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab


@pytest.mark.parametrize(
    ("target", "advertised"), [("proxy", False), ("proxy-always", True)], ids=["default", "always"]
)
def test_proxy_always_advertises_metadata_of_wheels_it_does_not_hold(
    gitlab: FakeGitLab, tmp_path: Path, target: str, advertised: bool
) -> None:
    """The "proxy-always" target runs the proxy with pages.metadata = always: the first page
    of a wheel nobody downloaded advertises its core metadata, the default proxy's does not."""
    gitlab.add_project(PROJECT, "tools", visibility="public")
    filename, content = make_wheel("acme", "1.0")
    gitlab.add_file(PROJECT, "acme", "1.0", filename, content)
    fx = Fixture(gitlab.url, 0, {}, {}, {}, lambda _: None, tmp_path, tmp_path, 1)
    with start(target, fx) as running:
        page = httpx.get(running.page.format("acme"), timeout=30)
    page.raise_for_status()
    # "true", or the metadata's hash once the page's read-ahead has fetched this small wheel.
    assert ("data-core-metadata=" in page.text) is advertised
