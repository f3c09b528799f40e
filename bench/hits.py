"""Cached-file benchmark: 1 and N curl clients download a cached file (X-Cache: HIT).

Run from the repository with the test venv: `.venv/bin/python bench/hits.py`.
Each file is fetched once first (the fill, timed as the cold figure), then `curl` clients
(which cost the machine far less CPU than a Python client) download it to /dev/null
together; `curl` checks the length. Reports MB/s delivered to all clients and the proxy's
memory meanwhile. `--profile FILE` records the proxy with py-spy during the warm runs
(collapsed stacks, `py-spy record -f raw`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess

from harness import DEV_TOKEN, MB, PROJECT, Measured, gitlab_and_proxy, measuring, pid_of


def curls(url: str, clients: int, pid: int, size: int, label: str) -> Measured:
    """`clients` curl processes GET the file together; each must get `size` bytes."""
    with measuring(label, pid, size * clients) as result:
        procs = [
            subprocess.Popen(
                ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download} %{http_code}", url],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(clients)
        ]
        outputs = [proc.communicate()[0] for proc in procs]
    assert all(out == f"{size} 200" for out in outputs), outputs
    return result[0]


SPY = [".venv/bin/py-spy", "record", "-f", "raw", "-r", "400", "--nonblocking"]


def profiler(out: str, pid: int) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` into `out` (collapsed stacks) until stopped."""
    return subprocess.Popen(
        [*SPY, "-p", str(pid), "-o", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(spy: subprocess.Popen[bytes]) -> None:
    """End a py-spy recording (SIGINT makes it write its output)."""
    spy.send_signal(2)
    spy.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="40,192", help="file sizes (default: 40,192)")
    parser.add_argument("--clients", type=int, default=8, help="crowd size (default: 8)")
    parser.add_argument("--profile", help="record the proxy with py-spy (collapsed stacks)")
    parser.add_argument("--cold", action="store_true", help="profile the fills, not the hits")
    args = parser.parse_args()
    sizes = [int(s) * MB for s in args.sizes_mb.split(",")]
    with gitlab_and_proxy(max_file_size=max(sizes) + MB, proxy_token=DEV_TOKEN) as (
        gitlab,
        proxy,
    ):
        pid = pid_of(proxy)
        files = f"{proxy.url}/api/v4/projects/{PROJECT}/packages/pypi/files"
        small = gitlab.add_file(PROJECT, "warm-up", "1.0", "warm_up-1.0.tar.gz", os.urandom(MB))
        curls(f"{files}/{small}/warm_up-1.0.tar.gz", 2, pid, MB, "warm-up")
        spy = profiler(args.profile, pid) if args.profile and args.cold else None
        urls = []
        for size in sizes:
            name = f"hit{size // MB}-1.0-py3-none-any.whl"
            data = os.urandom(size)
            sha256 = gitlab.add_file(PROJECT, f"hit{size // MB}", "1.0", name, data)
            assert hashlib.sha256(data).hexdigest() == sha256
            url = f"{files}/{sha256}/{name}"
            print(curls(url, 1, pid, size, f"{size // MB} MB, cold fill").report())
            urls.append((url, size))
        if spy is not None:
            stop(spy)
        spy = profiler(args.profile, pid) if args.profile and not args.cold else None
        try:
            for url, size in urls:
                for clients in (1, args.clients):
                    label = f"{size // MB} MB, {clients} clients, HIT"
                    print(curls(url, clients, pid, size, label).report())
        finally:
            if spy is not None:
                stop(spy)


if __name__ == "__main__":
    main()
