"""Cold-fill benchmark: N curl clients fetch a file the proxy never saw, against GitLab direct.

Run from the repository with the test venv: `.venv/bin/python bench/cold.py`.
For each size and round: one curl from the fake GitLab itself (direct, time to last byte),
then a new file through the proxy by `--clients` curls together (cold: the first is the
fill's leader, the rest follow it), then the same file again (warm). Reports seconds,
MB/s per client, the proxy's CPU seconds (user + system) and its peak RSS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

from harness import DEV_TOKEN, DEV_USER, MB, PROJECT, MiB, Sampler, gitlab_and_proxy, pid_of, rss

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def fetch(url: str, clients: int, size: int, headers: list[str]) -> float:
    """Seconds until `clients` curls together each got all `size` bytes of `url`."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["curl", "-sfL", *headers, "-o", "/dev/null", "-w", "%{size_download}", url],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    outputs = [proc.communicate()[0] for proc in procs]
    seconds = time.perf_counter() - started
    assert all(out == str(size) for out in outputs), outputs
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="40,192", help="file sizes (default: 40,192)")
    parser.add_argument("--clients", type=int, default=8, help="curls per fill (default: 8)")
    parser.add_argument("--rounds", type=int, default=3, help="files per size (default: 3)")
    args = parser.parse_args()
    sizes = [int(s) * MB for s in args.sizes_mb.split(",")]
    with gitlab_and_proxy(max_file_size=max(sizes) + MB, proxy_token=DEV_TOKEN) as (
        gitlab,
        proxy,
    ):
        pid = pid_of(proxy)
        token = ["-u", f"{DEV_USER}:{DEV_TOKEN}"]
        print(f"proxy RSS at start: {rss(pid)[0] / MiB:.1f} MiB")
        for size in sizes:
            data = os.urandom(size)
            for round_ in range(args.rounds):
                name = f"cold{size // MB}r{round_}"
                filename = f"{name}-1.0-py3-none-any.whl"
                # The same bytes would be one cached file: make each round's file new.
                body = round_.to_bytes(4, "big") + data[4:]
                sha256 = gitlab.add_file(PROJECT, name, "1.0", filename, body)
                path = f"/api/v4/projects/{PROJECT}/packages/pypi/files/{sha256}/{filename}"
                direct = fetch(gitlab.url + path, 1, size, token)
                spent = cpu(pid)
                with Sampler(pid) as sampler:
                    cold = fetch(proxy.url + path, args.clients, size, [])
                cold_cpu, cold_peak = cpu(pid) - spent, sampler.peak
                spent = cpu(pid)
                with Sampler(pid) as sampler:
                    warm = fetch(proxy.url + path, args.clients, size, [])
                warm_cpu, warm_peak = cpu(pid) - spent, sampler.peak
                print(
                    f"{size // MB} MB round {round_}: direct {direct:.2f} s; "
                    f"cold x{args.clients} {cold:.2f} s ({cold / direct:.2f}x direct, "
                    f"CPU {cold_cpu:.2f} s, peak RSS {cold_peak / MiB:.0f} MiB); "
                    f"warm x{args.clients} {warm:.2f} s (CPU {warm_cpu:.2f} s, "
                    f"peak RSS {warm_peak / MiB:.0f} MiB)",
                    flush=True,
                )
            del data


if __name__ == "__main__":
    main()
