"""Headless Chromium driven over the DevTools protocol on a pipe (no WebSocket library)."""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import re
import select
import subprocess
import time
from pathlib import Path
from typing import Any

TIMEOUT = 30.0


class Tab:
    """One page of a Chromium, opened at a URL and loaded."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self._browser = browser
        self._session = session

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """A DevTools command for this page; its result."""
        return self._browser.call(method, session=self._session, **params)

    def dom(self) -> str:
        """The document as it is now (after scripts, if they run), serialized."""
        root = self.call("DOM.getDocument", depth=0)["root"]["nodeId"]
        html_text: str = self.call("DOM.getOuterHTML", nodeId=root)["outerHTML"]
        return html_text

    def text(self) -> str:
        """The words of the rendered document, spaced as they read ("no, since")."""
        words = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", self.dom())).split())
        return re.sub(r" ([,:.)])", r"\1", words)

    def wait_for_text(self, *wanted: str, deadline: float = TIMEOUT) -> str:
        """The text once it holds every `wanted` string (polled until `deadline` seconds)."""
        end = time.monotonic() + deadline
        while True:
            words = self.text()
            if all(w in words for w in wanted):
                return words
            if time.monotonic() > end:
                raise AssertionError(f"never showed {wanted!r}; showed: {words}")
            time.sleep(0.1)  # polling a condition with a deadline

    def screenshot(self, path: Path) -> None:
        """A PNG of the viewport."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))


class Chromium:
    """A headless Chromium talking DevTools over fds 3 and 4 (--remote-debugging-pipe)."""

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        to_chrome, self._out = os.pipe()
        self._in, from_chrome = os.pipe()

        def pipes() -> None:  # in the child: its ends of the pipes on fds 3 and 4
            import fcntl

            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (to_chrome, from_chrome)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        with open(log, "ab") as err:
            self._process = subprocess.Popen(
                [
                    binary,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--hide-scrollbars",
                    "--remote-debugging-pipe",
                    f"--user-data-dir={profile}",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                pass_fds=(3, 4),
                preexec_fn=pipes,
            )
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, *, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its answer (events on the way are kept)."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive()
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            self.events.append(answer)

    def _receive(self) -> dict[str, Any]:
        end = time.monotonic() + TIMEOUT
        while b"\0" not in self._buffer:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise AssertionError("Chromium did not answer in time")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise AssertionError("Chromium went away")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        found: dict[str, Any] = json.loads(message)
        return found

    def open(
        self, url: str, *, script: bool = True, width: int = 1000, height: int = 1400,
        dark: bool = False, mobile: bool = False,
    ) -> Tab:  # fmt: skip
        """A new page at `url`, loaded, with scripts on or off, at this size and theme."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        tab = Tab(self, session)
        for domain in ("Page", "Log", "DOM"):
            tab.call(f"{domain}.enable")
        tab.call("Emulation.setScriptExecutionDisabled", value=not script)
        tab.call(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=height, deviceScaleFactor=1, mobile=mobile,
        )  # fmt: skip
        scheme = "dark" if dark else "light"
        tab.call(
            "Emulation.setEmulatedMedia",
            features=[{"name": "prefers-color-scheme", "value": scheme}],
        )
        loaded = len(self.events)
        tab.call("Page.navigate", url=url)
        end = time.monotonic() + TIMEOUT
        while not any(
            e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session
            for e in self.events[loaded:]
        ):
            if time.monotonic() > end:
                raise AssertionError(f"{url} did not load")
            self.events.append(self._receive())
        return tab

    def console(self) -> list[str]:
        """What pages wrote to the console so far (Chromium reports CSP violations there)."""
        return [
            e["params"]["entry"].get("text", "")
            for e in self.events
            if e.get("method") == "Log.entryAdded"
        ]

    def close(self) -> None:
        """Quit Chromium and wait for it."""
        with contextlib.suppress(AssertionError, OSError):
            self.call("Browser.close")
        try:
            self._process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._in)
        os.close(self._out)
