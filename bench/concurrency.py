"""Concurrency benchmark: N clients ask for one uncached file at once, then once it is cached.

Run from the repository with the test venv: `.venv/bin/python bench/concurrency.py`.
Each client streams and hashes the body in its own thread. The proxy must fetch the file
from GitLab once however many ask (issue 3); this measures how long N clients take, the
bytes per second delivered in total, and the proxy's memory meanwhile.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import threading

import httpx
from harness import DEV_TOKEN, MB, PROJECT, Measured, gitlab_and_proxy, measuring, pid_of


def crowd(url: str, sha256: str, clients: int, pid: int, size: int, label: str) -> Measured:
    """`clients` threads GET the file together; every body must be whole and correct."""
    barrier = threading.Barrier(clients)
    failures: list[str] = []

    def one() -> None:
        digest = hashlib.sha256()
        barrier.wait()
        with httpx.stream("GET", url, timeout=600) as response:
            for chunk in response.iter_bytes(1024 * 1024):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            failures.append(response.headers.get("x-cache", "?"))

    threads = [threading.Thread(target=one) for _ in range(clients)]
    with measuring(label, pid, size * clients) as result:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not failures, failures
    return result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=50, help="file size (default: 50)")
    parser.add_argument("--clients", type=int, default=32, help="clients (default: 32)")
    args = parser.parse_args()
    size = args.size_mb * MB
    with gitlab_and_proxy(max_file_size=size + MB, proxy_token=DEV_TOKEN) as (gitlab, proxy):
        pid = pid_of(proxy)
        files = f"{proxy.url}/api/v4/projects/{PROJECT}/packages/pypi/files"
        small = gitlab.add_file(PROJECT, "warm-up", "1.0", "warm_up-1.0.tar.gz", os.urandom(MB))
        crowd(f"{files}/{small}/warm_up-1.0.tar.gz", small, 4, pid, MB, "warm-up")
        filename = "crowd-1.0-py3-none-any.whl"
        sha256 = gitlab.add_file(PROJECT, "crowd", "1.0", filename, os.urandom(size))
        url = f"{files}/{sha256}/{filename}"
        gitlab.reset_counts()
        print(crowd(url, sha256, args.clients, pid, size, f"{args.clients} clients, cold").report())
        print(f"  GitLab downloads: {gitlab.counts['file']}")
        print(crowd(url, sha256, args.clients, pid, size, f"{args.clients} clients, warm").report())
        assert gitlab.counts["file"] == 1, gitlab.counts


if __name__ == "__main__":
    main()
