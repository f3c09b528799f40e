"""The status page in a real browser (headless Chromium) before, during a download and in an
outage, with JavaScript on and off; screenshots are saved under each test's tmp_path."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser import Chromium
from tests.clients import ProxyProcess
from tests.fakegitlab import FakeGitLab
from tests.scenario import SERVICE, Start, acme, serve

pytestmark = pytest.mark.e2e

BIG = bytes(range(256)) * (8 * 4096)  # 8 MiB
BIG_NAME = "big_pkg-1.0-py3-none-any.whl"
BIG_PATH = f"/api/v4/projects/42/packages/pypi/files/{hashlib.sha256(BIG).hexdigest()}/{BIG_NAME}"
PAGE_PATH = "/api/v4/projects/42/packages/pypi/simple/big-pkg/"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    """Headless Chromium, or a skip where it is missing (a failure under CI=true)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (the CI setup installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    chromium = Chromium(binary, tmp_path / "chromium", tmp_path / "chromium.log")
    yield chromium
    chromium.close()
    # No page broke its Content-Security-Policy (an inline script or style would).
    assert not [line for line in chromium.console() if "Content Security Policy" in line]


@pytest.fixture
def proxy(gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path) -> ProxyProcess:
    """A proxy holding the service token (open on loopback) in front of acme, whose project
    42 holds an 8 MiB wheel."""
    acme(gitlab)
    gitlab.add_file(42, "big-pkg", "1.0", BIG_NAME, BIG)
    return serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)


@pytest.fixture
def stalled_download(gitlab: FakeGitLab, proxy: ProxyProcess) -> Iterator[threading.Thread]:
    """A client downloading the wheel, which GitLab holds after its first MiB."""
    gitlab.stall_files_after = 1024 * 1024
    thread = threading.Thread(
        target=lambda: httpx.get(proxy.url + BIG_PATH, timeout=60), daemon=True
    )
    thread.start()
    assert gitlab.stalled.wait(30), "GitLab never reached the stall"
    yield thread
    gitlab.stall_release.set()
    thread.join(60)


def test_page_shows_the_proxy_before_any_request(
    browser: Chromium, proxy: ProxyProcess, gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """Before any request: version, GitLab's URL, mode, GitLab not asked yet, nothing
    cached; the same with JavaScript off."""
    for script in (True, False):
        tab = browser.open(proxy.url + "/", script=script)
        words = tab.text()
        assert "gitlab-pypi-proxy 0.1.0" in words
        assert f"GitLab {gitlab.url}" in words
        assert "Mode online" in words
        assert "GitLab answers not asked yet" in words
        assert "open: anyone who reaches the proxy" in words
        assert "Downloads in progress none" in words
        assert "Indexes none cached yet" in words
        tab.screenshot(tmp_path / f"before-script-{script}.png")


def test_a_download_in_progress_shows_on_the_next_load(
    browser: Chromium, proxy: ProxyProcess, stalled_download: threading.Thread, tmp_path: Path
) -> None:
    """A download GitLab is still sending shows with its progress on the next load, with
    JavaScript on or off, on a desktop and on a phone in the dark theme."""
    started = time.monotonic()
    assert BIG_NAME in httpx.get(proxy.url + "/").text
    assert time.monotonic() - started < 1.0
    shown = f"Downloads in progress {BIG_NAME}: 1.0 MiB of 8.0 MiB (12%)"
    for script in (True, False):
        tab = browser.open(proxy.url + "/", script=script)
        assert shown in tab.text()
        tab.screenshot(tmp_path / f"during-script-{script}.png")
    phone = browser.open(proxy.url + "/", width=390, height=1200, dark=True, mobile=True)
    assert shown in phone.text()
    phone.screenshot(tmp_path / "during-phone-dark.png")


def test_the_script_shows_a_download_without_a_reload(
    browser: Chromium, proxy: ProxyProcess, gitlab: FakeGitLab
) -> None:
    """With JavaScript on, an open page shows a download that starts after it loaded."""
    tab = browser.open(proxy.url + "/")
    assert "Downloads in progress none" in tab.text()
    gitlab.stall_files_after = 1024 * 1024
    thread = threading.Thread(target=lambda: httpx.get(proxy.url + BIG_PATH, timeout=60))
    thread.start()
    try:
        assert gitlab.stalled.wait(30)
        tab.wait_for_text(f"{BIG_NAME}: 1.0 MiB of 8.0 MiB", deadline=10)
    finally:
        gitlab.stall_release.set()
        thread.join(60)


def test_an_outage_shows_on_the_page(
    browser: Chromium, proxy: ProxyProcess, gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """With GitLab stopped, the next request that needs it fails, and the page says GitLab
    does not answer, why, and lists the error; cached scopes keep their index URL."""
    assert httpx.get(proxy.url + PAGE_PATH).status_code == 200
    assert "GitLab answers yes" in browser.open(proxy.url + "/").text()
    gitlab.set_down(True)
    assert httpx.get(proxy.url + PAGE_PATH.replace("big-pkg", "other")).status_code == 502
    for script in (True, False):
        tab = browser.open(proxy.url + "/", script=script)
        words = tab.text()
        assert re.search(r"GitLab answers no, since \S+ UTC \(\d+ s ago\): could not be", words)
        assert re.search(r"Last errors time route error \S+ UTC page GET \S+ -> 502", words)
        assert f"{proxy.url}/api/v4/projects/42/packages/pypi/simple" in words
        tab.screenshot(tmp_path / f"outage-script-{script}.png")
    phone = browser.open(proxy.url + "/", width=390, height=1400, mobile=True)
    phone.screenshot(tmp_path / "outage-phone.png")
