"""Slow-loris load: N connections trickling a head a byte a second, while health is timed.

    .venv/bin/python bench/slow_clients.py --clients 1100 --nofile 1024 --seconds 30

The proxy runs as its own process with RLIMIT_NOFILE lowered to --nofile. Every second,
each slow connection sends one more byte of a head that never ends, and connections the
server closed are opened again (an attacker keeps the pressure on). Meanwhile
/-/health is asked every 0.2 s (5 s timeout). Printed: health latency, health failures,
the connections the server closed, and the lines the proxy logged.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from harness import ROOT  # noqa: F401 (puts the repository on sys.path)

from tests.clients import ProxyProcess, clean_env
from tests.slowclients import SlowHeads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1100)
    parser.add_argument("--nofile", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between bytes")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the proxy")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="gitlab-pypi-proxy-bench-") as tmp:
        log = Path(tmp) / "proxy.log"
        proxy = ProxyProcess(
            ["--upstream", "http://127.0.0.1:9", "--cache-dir", tmp, "--log-level", "info"],
            clean_env(**extra),
        )
        proxy.log = log
        proxy.nofile_limit = args.nofile
        proxy.start()
        lines_at_start = len(log.read_text().splitlines())
        slow = SlowHeads(proxy.port, args.clients)
        stop = threading.Event()

        def attack() -> None:
            while not stop.is_set():
                slow.fill(connect_timeout=0.2)
                slow.trickled()
                stop.wait(args.interval)

        attacker = threading.Thread(target=attack, daemon=True)
        attacker.start()
        latencies: list[float] = []
        failures = 0
        end = time.monotonic() + args.seconds
        try:
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    ok = httpx.get(proxy.url + "/-/health", timeout=5).status_code == 200
                except httpx.TransportError:
                    ok = False
                if ok:
                    latencies.append(time.monotonic() - started)
                else:
                    failures += 1
                time.sleep(0.2)  # the probe's own pace, not a wait for a condition
        finally:
            stop.set()
            attacker.join()
            held = slow.held
            slow.close()
            proxy.stop()
        lines = log.read_text().splitlines()[lines_at_start:]
    emfile = sum("out of system resource" in line or "open files" in line for line in lines)
    ordered = sorted(latencies) or [float("nan")]
    print(f"{args.clients} slow clients, RLIMIT_NOFILE {args.nofile}, {args.seconds:.0f} s")
    print(
        f"  health: {len(latencies)} answered, {failures} failed or timed out (5 s); "
        f"latency median {statistics.median(ordered) * 1000:.0f} ms, "
        f"p99 {ordered[int(len(ordered) * 0.99)] * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms"
    )
    print(
        f"  slow connections: {slow.closed_by_server} closed by the server, "
        f"{slow.refused} refused or timed out connecting, {held} held at the end"
    )
    print(f"  proxy log: {len(lines)} lines, {emfile} about descriptors")


if __name__ == "__main__":
    main()
