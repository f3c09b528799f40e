"""Shared by the benchmarks: a fake GitLab, a real proxy process, and its memory sampled."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/NAME.py` from anywhere: the proxy and the test helpers live at ROOT,
# and `python -m proxy` (how ProxyProcess starts it) finds the package in the cwd.
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

from tests.clients import ProxyProcess, clean_env  # noqa: E402
from tests.fakegitlab import FakeGitLab  # noqa: E402

MB = 1000**2
MiB = 1024**2
PROJECT = 42
DEV_USER, DEV_TOKEN = "dev", "dev-token-0123456789"


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes: resident now, and its peak since it started."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024  # reported in kB
    return found["VmRSS"], found["VmHWM"]


@dataclass
class Sampler:
    """Polls a process's VmRSS in a thread and keeps the highest value seen."""

    pid: int
    interval: float = 0.005
    peak: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self.peak = rss(self.pid)[0]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss(self.pid)[0])
            self.samples += 1


@dataclass(frozen=True)
class Measured:
    """One benchmarked transfer: bytes moved, seconds taken, the proxy's memory around it."""

    label: str
    size: int
    seconds: float
    before: int
    peak: int
    after: int
    hwm_before: int
    hwm_after: int
    samples: int

    def report(self) -> str:
        """Lines for the terminal (MB = 10**6 bytes, MiB = 2**20 bytes)."""
        return "\n".join(
            [
                f"{self.label}: {self.size / MB:.0f} MB in {self.seconds:.2f} s "
                f"= {self.size / MB / self.seconds:.1f} MB/s",
                f"  proxy RSS: baseline {self.before / MiB:.1f} MiB, "
                f"peak {self.peak / MiB:.1f} MiB ({self.samples} samples), "
                f"after {self.after / MiB:.1f} MiB",
                f"  peak - baseline = {(self.peak - self.before) / MiB:+.1f} MiB; "
                f"VmHWM {self.hwm_before / MiB:.1f} -> {self.hwm_after / MiB:.1f} MiB",
            ]
        )


@contextmanager
def measuring(label: str, pid: int, size: int) -> Iterator[list[Measured]]:
    """Time the block and sample `pid`'s memory during it; the result lands in the list."""
    out: list[Measured] = []
    before, hwm_before = rss(pid)
    with Sampler(pid) as sampler:
        started = time.perf_counter()
        yield out
        seconds = time.perf_counter() - started
    after, hwm_after = rss(pid)
    out.append(
        Measured(
            label,
            size,
            seconds,
            before,
            max(sampler.peak, after),
            after,
            hwm_before,
            hwm_after,
            sampler.samples,
        )
    )


@contextmanager
def proxy_before(gitlab: FakeGitLab, **env: str) -> Iterator[ProxyProcess]:
    """A proxy process before `gitlab`, with an empty cache of its own and `env` set."""
    with tempfile.TemporaryDirectory(prefix="gitlab-pypi-proxy-bench-") as tmp:
        proxy = ProxyProcess(
            [
                "--upstream",
                gitlab.url,
                "--cache-dir",
                str(Path(tmp) / "cache"),
                "--log-level",
                "warning",
            ],
            clean_env(**env),
        )
        proxy.log = Path(tmp) / "proxy.log"
        proxy.start()
        try:
            yield proxy
        finally:
            proxy.stop()


@contextmanager
def fake_gitlab(*, max_file_size: int) -> Iterator[FakeGitLab]:
    """A fake GitLab with project 42 and a developer token."""
    with FakeGitLab(max_file_size=max_file_size) as gitlab:
        gitlab.add_project(PROJECT, "tools")
        gitlab.add_user(DEV_USER)
        gitlab.add_token(DEV_TOKEN, user=DEV_USER)
        gitlab.add_member(DEV_USER, project=PROJECT, role="developer")
        yield gitlab


@contextmanager
def gitlab_and_proxy(
    *, max_file_size: int, proxy_token: str | None = None
) -> Iterator[tuple[FakeGitLab, ProxyProcess]]:
    """A fake GitLab with project 42 and a developer token, and a proxy process before it."""
    extra = {"GITLAB_PYPI_PROXY_TOKEN": proxy_token} if proxy_token else {}
    with (
        fake_gitlab(max_file_size=max_file_size) as gitlab,
        proxy_before(gitlab, **extra) as proxy,
    ):
        yield gitlab, proxy


def pid_of(proxy: ProxyProcess) -> int:
    """The proxy's process id (one process: serve runs without --workers)."""
    assert proxy.process is not None
    return proxy.process.pid
