"""The side-by-side suite of issue 10: the proxy, its peers and nginx before one fake GitLab.

Run from the repository as root with the test venv: `.venv/bin/python bench/suite.py`.
It installs what is missing (nginx and wrk with apt-get; proxpi, gunicorn, devpi-server,
devpi-client and matplotlib into a separate venv, `--peers`, never the test venv), starts the
fake GitLab as its own process, then each target in turn on loopback, and measures:
cache-hit page requests/s at 32 connections (wrk); a cached 40 MB and 192 MB wheel with 1
and 8 clients (curl processes, MB/s over all of them); a cold fill of each size nobody asked
for yet (time to last byte); `pip install` and `uv pip install` of a 20-package tree with
GitLab 100 ms away, cold and warm; the target's resident memory over its whole life (summed
over its processes, sampled every 20 ms); and, in a new proxy, peak memory while 8 clients
stream a 192 MB and a 1 GB file, cold and warm. The proxy with pages.metadata = always
(`proxy-always`) and with `off` (`proxy-off`) is measured by its installs alone. It writes
docs/benchmarks.md, docs/*.png and the README's headline block (between its markers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import httpx
from flatmemory import flat_memory
from harness import MB, ROOT
from installs import installs
from measures import Memory, Result, curls, settled, wrk
from report import Setup, headline, machine, update_readme, versions, write_page
from targets import (
    HOT,
    HOT_BIG,
    INSTALL_ONLY,
    LABELS,
    TARGETS,
    Fixture,
    Running,
    fake_gitlab,
    start,
)

DOCS = ROOT / "docs"
HERE = Path(__file__).resolve().parent
PEER_PACKAGES = ("proxpi", "gunicorn", "devpi-server", "devpi-client", "matplotlib")
INSTALL_TARGETS = ("gitlab", "proxpi", "devpi", "proxy", "proxy-always", "proxy-off")


def ensure_tools(peers: Path) -> Path:
    """nginx, wrk and curl from Debian, the Python peers in their own venv; its python."""
    missing = [tool for tool in ("nginx", "wrk", "curl") if shutil.which(tool) is None]
    if missing:
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        packages = ["nginx-light" if tool == "nginx" else tool for tool in missing]
        subprocess.run(["apt-get", "install", "-y", "-q", *packages], check=True)
    python = peers / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(peers)], check=True)
    have = subprocess.run(
        [str(python), "-m", "pip", "show", "-q", *PEER_PACKAGES], capture_output=True
    )
    if have.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def install_figures(running: Running, fx: Fixture, setup: Setup) -> dict[str, float]:
    """The install times through a started target (none if clients cannot install from it)."""
    if running.index is None:
        return {}
    runs = 1 if setup.quick else 2
    return installs(running.index, fx.trees, fx.set_delay, delay=setup.delay_ms / 1000, runs=runs)


def measure(target: str, fx: Fixture, setup: Setup) -> Result:
    """All figures for one target (an install-only target: its installs alone)."""
    result = Result(target)
    if target in INSTALL_ONLY:
        with start(target, fx) as running:
            result.installs = install_figures(running, fx, setup)
        return result
    # Repetitions per figure: (1 client, 8 clients) for the small and the big wheel.
    small, big = ((3, 1), (1, 1)) if setup.quick else ((8, 3), (2, 1))
    with start(target, fx) as running, Memory(running.pid) as memory:
        hot, hot_big = running.url_of(HOT, fx), running.url_of(HOT_BIG, fx)
        for url, name in ((hot, HOT), (hot_big, HOT_BIG)):
            settled(url, fx.files[name]["sha256"], follow=target.endswith("redirect"))
        for _ in range(3):
            httpx.get(running.page.format(HOT), timeout=60).raise_for_status()
        result.page_rps = wrk(running.page.format(HOT), setup.seconds)
        result.hit_1 = curls(hot, 1, small[0], fx.sizes[HOT])
        result.hit_8 = curls(hot, 8, small[1], fx.sizes[HOT])
        result.hit_1_big = curls(hot_big, 1, big[0], fx.sizes[HOT_BIG])
        result.hit_8_big = curls(hot_big, 8, big[1], fx.sizes[HOT_BIG])
        for key, name in (("cold", f"cold-{target}"), ("cold_big", f"cold-big-{target}")):
            url = running.url_of(name, fx, cold=True)
            started = time.perf_counter()
            curls(url, 1, 1, fx.sizes[name])
            setattr(result, key, fx.sizes[name] / MB / (time.perf_counter() - started))
        if target in INSTALL_TARGETS:
            result.installs = install_figures(running, fx, setup)
    result.rss = memory.samples
    result.peak_rss = max((rss for _, rss in memory.samples), default=0)
    return result


def report_line(r: Result) -> str:
    """What the terminal shows for one target."""
    installs_line = ", ".join(f"{case} {seconds:.2f} s" for case, seconds in r.installs.items())
    if r.target in INSTALL_ONLY:
        return f"  installs: {installs_line}"
    line = (
        f"  pages {r.page_rps:.0f}/s, hit {r.hit_1:.0f} / {r.hit_8:.0f} MB/s, big "
        f"{r.hit_1_big:.0f} / {r.hit_8_big:.0f} MB/s, cold {r.cold:.0f} / {r.cold_big:.0f} MB/s,"
        f" peak RSS {r.peak_rss / MB:.0f} MB"
    )
    return line + (f"\n  installs: {installs_line}" if installs_line else "")


def run_all(
    fx: Fixture, targets: list[str], setup: Setup, rss_files: dict[str, str]
) -> tuple[list[Result], dict[str, str], dict[str, int]]:
    """Each target's figures, the targets that failed and why, and the proxy's memory
    while 8 clients stream each of `rss_files` (none: not measured)."""
    results: list[Result] = []
    skipped: dict[str, str] = {}
    memory: dict[str, int] = {}
    for target in targets:
        print(f"{LABELS[target]} ...", flush=True)
        try:
            results.append(measure(target, fx, setup))
        except Exception as error:  # a peer that fails is reported, not fatal
            skipped[target] = f"{type(error).__name__}: {str(error)[:200]}"
            print(f"  failed: {error}", flush=True)
            continue
        print(report_line(results[-1]), flush=True)
    if rss_files:
        print("gitlab-pypi-proxy, 8 clients streaming one file ...", flush=True)
        try:
            memory = flat_memory(fx, rss_files)
        except Exception as error:  # reported in the page like a failed target
            skipped["memory"] = f"{type(error).__name__}: {str(error)[:200]}"
        print("  " + ", ".join(f"{k} {v / MB:.0f} MB" for k, v in memory.items()), flush=True)
    return results, skipped, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=40, help="wheel size (default: 40)")
    parser.add_argument("--big-mb", type=int, default=192, help="large wheel (default: 192)")
    parser.add_argument("--huge-mb", type=int, default=1000, help="memory's file (1000)")
    parser.add_argument("--packages", type=int, default=20, help="install tree (default: 20)")
    parser.add_argument("--delay-ms", type=int, default=100, help="GitLab latency in installs")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration (default: 5)")
    parser.add_argument("--workers", type=int, default=1, help="proxy and nginx processes")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    parser.add_argument("--no-memory", action="store_true", help="skip the 8-client RSS runs")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, wrk 2 s")
    parser.add_argument("--peers", type=Path, default=Path("/tmp/gitlab-pypi-proxy-bench-peers"))
    parser.add_argument("--out", type=Path, default=DOCS, help="where the page and charts go")
    args = parser.parse_args()
    targets = args.targets.split(",")
    setup = Setup(
        args.size_mb,
        args.big_mb,
        args.huge_mb,
        args.packages,
        args.delay_ms,
        args.workers,
        2 if args.quick else args.seconds,
        args.quick,
    )
    began = time.monotonic()
    peers_python = ensure_tools(args.peers)
    sizes = {HOT: args.size_mb * MB, HOT_BIG: args.big_mb * MB}
    for target in (t for t in targets if t not in INSTALL_ONLY):
        sizes[f"cold-{target}"], sizes[f"cold-big-{target}"] = args.size_mb * MB, args.big_mb * MB
    rss_files = {f"{args.big_mb} MB": "rss-big", f"{args.huge_mb} MB": "rss-huge"}
    if not args.no_memory:
        sizes.update({"rss-big": args.big_mb * MB, "rss-huge": args.huge_mb * MB})
    trees = {"pip": args.packages, "uv": args.packages}
    with (
        tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp,
        fake_gitlab(sizes, trees, Path(tmp), args.peers, args.workers) as fx,
    ):
        print(f"fake GitLab up after {time.monotonic() - began:.0f} s", flush=True)
        results, skipped, memory = run_all(fx, targets, setup, {} if args.no_memory else rss_files)
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions(args.peers, PEER_PACKAGES).items()),
    }
    args.out.mkdir(exist_ok=True)
    (args.out / "benchmarks.md").write_text(write_page(results, skipped, memory, setup, meta))
    raw = Path(tempfile.gettempdir()) / "bench-suite-results.json"
    everything = {
        "setup": asdict(setup),
        "labels": LABELS,
        "install_only": INSTALL_ONLY,
        "memory": memory,
    }
    raw.write_text(json.dumps({**everything, "results": [asdict(r) for r in results]}))
    subprocess.run(
        [str(peers_python), str(HERE / "charts.py"), str(raw), str(args.out)], check=True
    )
    block = headline(
        results, memory, setup, meta["date"], page="[docs/benchmarks.md](docs/benchmarks.md)"
    )
    if args.out.resolve() == DOCS.resolve():
        update_readme(ROOT / "README.md", block)
    else:
        (args.out / "headline.md").write_text(block + "\n")
    print(f"wrote {args.out / 'benchmarks.md'} in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
