"""The suite's measuring tools: memory of a process tree over time, wrk, curl, a settled file."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from harness import MB, MiB


def tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    found = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            for child in children:
                found += tree(int(child))
    except OSError:
        pass
    return found


def resident(pid: int) -> int:
    """VmRSS of a process and its descendants, in bytes (0 once gone)."""
    total = 0
    for each in tree(pid):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


@dataclass
class Memory:
    """Samples a process tree's resident memory in a thread: (seconds, bytes) pairs."""

    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Memory:
        started = time.monotonic()

        def run() -> None:
            while not self._stop.wait(0.02):
                self.samples.append((time.monotonic() - started, resident(self.pid)))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        """The highest sample so far (the current value before the first sample)."""
        return max((rss for _, rss in self.samples), default=resident(self.pid))


@dataclass
class Result:
    """One target's figures: throughput in MB/s, seconds for installs, bytes for memory."""

    target: str
    page_rps: float = 0.0
    hit_1: float = 0.0
    hit_8: float = 0.0
    hit_1_big: float = 0.0
    hit_8_big: float = 0.0
    cold: float = 0.0
    cold_big: float = 0.0
    peak_rss: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)
    installs: dict[str, float] = field(default_factory=dict)  # "pip, cold" -> seconds


def wrk(url: str, seconds: int) -> float:
    """Requests/s of wrk with 32 connections on 2 threads, asking for HTML (proxpi answers no
    2xx without an Accept header)."""
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "-H", "Accept: text/html", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s*([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if found is None or errors is not None:
        raise RuntimeError(out)
    return float(found.group(1))


def curls(url: str, clients: int, repeats: int, size: int) -> float:
    """MB/s delivered to `clients` curl processes each fetching `url` `repeats` times."""
    command = ["curl", "-sfL", "-w", "%{size_download}\\n"]
    started = time.perf_counter()
    children = [
        subprocess.Popen(
            [*command, *([url, "-o", "/dev/null"] * repeats)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(clients)
    ]
    outputs = [child.communicate()[0] for child in children]
    seconds = time.perf_counter() - started
    sizes = [int(n) for out in outputs for n in out.split()]
    if sizes != [size] * clients * repeats or any(child.returncode for child in children):
        raise RuntimeError(f"short download from {url}: {sizes}")
    return clients * repeats * size / MB / seconds


def settled(url: str, sha256: str, *, follow: bool = False) -> None:
    """Fetch `url` until it answers 200 itself (no redirect, unless `follow`: the proxy's
    own redirect to its bucket) with the right bytes: cached."""
    end = time.monotonic() + 120
    while time.monotonic() < end:
        digest = hashlib.sha256()
        with httpx.stream("GET", url, timeout=120, follow_redirects=follow) as response:
            for chunk in response.iter_bytes(MiB):
                digest.update(chunk)
        if response.status_code == 200 and digest.hexdigest() == sha256:
            return
        time.sleep(0.2)  # polling a condition (the peer finishing its fill) with a deadline
    raise RuntimeError(f"{url} never served the file itself")
