"""Burst benchmark: a fleet of clients keeps asking for one page while it expires.

Run from the repository with the test venv: `.venv/bin/python bench/burst.py`.
Without coalescing, every request that finds the page expired goes to GitLab; with it,
one GitLab request per expiry; with `cache.stale_while_revalidate`, the clients do not
even wait for it. Prints GitLab's page requests and the clients' slowest answer.
"""

from __future__ import annotations

import argparse
import threading
import time

import httpx
from harness import PROJECT, proxy_before

from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab

PAGE = f"/api/v4/projects/{PROJECT}/packages/pypi/simple/burst-pkg/"


def burst(clients: int, seconds: float, ttl: int, swr: int, delay: float) -> tuple[int, int, float]:
    """(requests answered, GitLab page requests, slowest answer in seconds)."""
    with FakeGitLab() as gitlab:
        gitlab.add_project(PROJECT, "tools", visibility="public")
        filename, content = make_wheel("burst-pkg", "1.0")
        gitlab.add_file(PROJECT, "burst-pkg", "1.0", filename, content)
        settings = {
            "GITLAB_PYPI_PROXY_CACHE_PAGE_TTL": str(ttl),
            "GITLAB_PYPI_PROXY_CACHE_STALE_WHILE_REVALIDATE": str(swr),
        }
        with proxy_before(gitlab, **settings) as proxy:
            httpx.get(proxy.url + PAGE, timeout=30).raise_for_status()
            gitlab.reset_counts()
            gitlab.delay = delay  # GitLab's latency, felt by whoever waits for it
            answered, slowest = 0, 0.0
            lock = threading.Lock()
            end = time.monotonic() + seconds

            def client() -> None:
                nonlocal answered, slowest
                with httpx.Client(base_url=proxy.url, timeout=60) as session:
                    while time.monotonic() < end:
                        started = time.monotonic()
                        session.get(PAGE).raise_for_status()
                        took = time.monotonic() - started
                        with lock:
                            answered += 1
                            slowest = max(slowest, took)

            threads = [threading.Thread(target=client) for _ in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return answered, gitlab.counts["page"], slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--ttl", type=int, default=1, help="cache.page_ttl, seconds")
    parser.add_argument("--delay", type=float, default=0.2, help="GitLab's latency, seconds")
    args = parser.parse_args()
    print(f"{args.clients} clients for {args.seconds:.0f} s, page_ttl {args.ttl} s, ", end="")
    print(f"GitLab latency {args.delay * 1000:.0f} ms, a public project")
    print("| stale_while_revalidate | requests answered | GitLab page requests | slowest answer |")
    print("|---|---|---|---|")
    for swr in (0, 30):
        answered, asked, slowest = burst(args.clients, args.seconds, args.ttl, swr, args.delay)
        print(f"| {swr} s | {answered} | {asked} | {slowest * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
