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
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import suite

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> dict[int, float]:
    """User plus system CPU seconds of a process and each of its descendants."""
    used = {}
    for each in suite.tree(pid):
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
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        gitlab = subprocess.Popen(
            [sys.executable, str(suite.HERE / "gitlab_server.py"), "2", suite.HOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert gitlab.stdin is not None
        assert gitlab.stdout is not None
        try:
            ready = json.loads(gitlab.stdout.readline())
            fx = suite.Fixture(
                ready["url"],
                gitlab.pid,
                ready["files"],
                Path(tmp),
                Path(tmp),
                2 * suite.MB,
                args.workers,
            )
            with suite.start("proxy", fx) as running:
                hot = fx.files[suite.HOT]
                suite.settled(suite.file_url(running.hot_page, hot["filename"]), hot["sha256"])
                for _ in range(3):
                    httpx.get(running.hot_page, timeout=60).raise_for_status()
                for _ in range(args.runs):
                    before, started = cpu_seconds(running.pid), time.monotonic()
                    rps = suite.wrk(running.hot_page, args.seconds)
                    after, elapsed = cpu_seconds(running.pid), time.monotonic() - started
                    used = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
                    busy = [f"{seconds / elapsed:.2f}" for seconds in used.values() if seconds]
                    per_request = 1000 * sum(used.values()) / (rps * elapsed)
                    print(
                        f"workers={args.workers}: {rps:.0f} req/s, {per_request:.3f} ms CPU per "
                        f"request, CPU s/s by process: {' '.join(busy)}",
                        flush=True,
                    )
        finally:
            gitlab.stdin.close()
            gitlab.wait()


if __name__ == "__main__":
    main()
