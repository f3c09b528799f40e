"""Cache-hit page benchmark: wrk on one package's page, with the proxy's CPU time per request.

Run from the repository with the test venv: `.venv/bin/python bench/pages.py --workers 2`.
Starts the suite's fake GitLab (bench/gitlab_server.py) and the proxy (`--workers N`),
fetches the page's wheel once (so the page advertises its core metadata, as in the suite),
then runs wrk (2 threads, 32 connections, `--seconds`) `--runs` times. For each run it
prints req/s and the CPU seconds each proxy process used per second and per request: on a
machine shared with other work, CPU per request is steadier than req/s, and the
per-process figures show how the connections spread over the workers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx
from harness import MB
from measures import settled, tree, wrk
from targets import HOT, fake_gitlab, file_url, start

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> dict[int, float]:
    """User plus system CPU seconds of a process and each of its descendants."""
    used = {}
    for each in tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        used[each] = (int(fields[11]) + int(fields[12])) / _TICK
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="proxy processes")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration (default: 5)")
    parser.add_argument("--runs", type=int, default=2, help="wrk runs (default: 2)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp,
        fake_gitlab({HOT: 2 * MB}, {}, Path(tmp), Path(tmp), args.workers) as fx,
        start("proxy", fx) as running,
    ):
        page = running.page.format(HOT)
        settled(file_url(page, fx.files[HOT]["filename"]), fx.files[HOT]["sha256"])
        for _ in range(3):
            httpx.get(page, timeout=60).raise_for_status()
        for _ in range(args.runs):
            before, started = cpu_seconds(running.pid), time.monotonic()
            rps = wrk(page, args.seconds)
            after, elapsed = cpu_seconds(running.pid), time.monotonic() - started
            used = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
            busy = [f"{seconds / elapsed:.2f}" for seconds in used.values() if seconds]
            per_request = 1000 * sum(used.values()) / (rps * elapsed)
            print(
                f"workers={args.workers}: {rps:.0f} req/s, {per_request:.3f} ms CPU per "
                f"request, CPU s/s by process: {' '.join(busy)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
