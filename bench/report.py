"""The suite's page: docs/benchmarks.md's text, its ratios, and the README's headline block."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import MB
from measures import Result
from targets import INSTALL_ONLY, LABELS

PEERS = ("proxpi", "devpi")
BEGIN, END = "<!-- bench/suite.py: headline -->", "<!-- /bench/suite.py: headline -->"
VARIANTS = (
    ("proxy-always", "as recommended for CI mirrors"),
    ("proxy-off", "no core metadata for a client to fetch"),
)
"""Install-only targets the headline gives after the default proxy, and why each is there."""
THROUGHPUT = ("page_rps", "hit_1", "hit_8", "hit_1_big", "hit_8_big", "cold", "cold_big")


@dataclass(frozen=True)
class Setup:
    """What the run was asked for: sizes in MB, the tree, GitLab's latency, repetitions."""

    size_mb: int
    big_mb: int
    huge_mb: int
    packages: int
    delay_ms: int
    workers: int
    seconds: int
    quick: bool


def versions(peers: Path, packages: tuple[str, ...]) -> dict[str, str]:
    """Versions of everything measured."""
    code = (
        "import importlib.metadata as m, json, sys;"
        "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    )

    def of(python: str, names: tuple[str, ...]) -> dict[str, str]:
        out = subprocess.run([python, "-c", code, *names], capture_output=True, text=True)
        found: dict[str, str] = json.loads(out.stdout)
        return found

    found = of(str(peers / "bin" / "python"), packages)
    found.update(of(sys.executable, ("gitlab-pypi-proxy", "uvicorn", "starlette", "httpx", "uv")))
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    found["nginx"] = nginx.rpartition("/")[2]
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    found["wrk"] = wrk_version.split()[1] if wrk_version else "?"
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout
    found["curl"] = curl.split()[1]
    pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    found["pip"] = pip.stdout.split()[1]
    found["python"] = platform.python_version()
    return found


def machine() -> str:
    """nproc, memory and kernel."""
    mem = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return f"{os.cpu_count()} CPUs ({model}), {mem / 1024**3:.0f} GiB, Linux {platform.release()}"


def fmt(value: float) -> str:
    """A figure with a thin thousands separator, no decimals."""
    return f"{value:,.0f}".replace(",", " ")


def times(value: float | None) -> str:
    """A ratio as "0.85x" ("n/a" when either side was not measured)."""
    return "n/a" if value is None else f"{value:.2f}x"


@dataclass(frozen=True)
class Figures:
    """The run's results by target, and the ratios between them."""

    by: dict[str, Result]

    def of(self, target: str, key: str) -> float | None:
        """One figure of one target (None if not measured)."""
        result = self.by.get(target)
        value = None if result is None else getattr(result, key)
        return float(value) if value else None

    def install(self, target: str, case: str) -> float | None:
        """Seconds of an install case ("pip, warm") through a target (None if not measured)."""
        result = self.by.get(target)
        return None if result is None else result.installs.get(case)

    def best_peer(self, key: str) -> float | None:
        """The highest figure among the peers."""
        found = [v for v in (self.of(peer, key) for peer in PEERS) if v is not None]
        return max(found, default=None)

    def ratio(
        self, key: str, other: Callable[[str], float | None], target: str = "proxy"
    ) -> float | None:
        """The target's figure over `other`'s."""
        mine, theirs = self.of(target, key), other(key)
        return None if mine is None or theirs is None else mine / theirs

    def speedup(self, case: str, other: str, target: str = "proxy") -> float | None:
        """How many times faster the target installs than `other` ("best peer": the fastest)."""
        mine = self.install(target, case)
        if other == "best peer":
            found = [v for v in (self.install(peer, case) for peer in PEERS) if v is not None]
            theirs = min(found, default=None)
        else:
            theirs = self.install(other, case)
        return None if mine is None or theirs is None else theirs / mine


def ratios(figures: Figures, setup: Setup) -> str:
    """The proxy against nginx, GitLab direct and the best peer, and 2 workers against 1."""
    small, big = f"{setup.size_mb} MB", f"{setup.big_mb} MB"
    heads = [f"{small}, 1", f"{small}, 8", f"{big}, 1", f"{big}, 8", f"cold {small}", f"cold {big}"]
    out = ["| ratio | pages | " + " | ".join(heads) + " |", "|---|---|---|---|---|---|---|---|"]
    rows: list[tuple[str, Callable[[str], float | None], str]] = [
        ("gitlab-pypi-proxy / nginx", lambda key: figures.of("nginx", key), "proxy"),
        ("gitlab-pypi-proxy / GitLab direct", lambda key: figures.of("gitlab", key), "proxy"),
        ("gitlab-pypi-proxy / best peer (proxpi, devpi-server)", figures.best_peer, "proxy"),
        (
            "gitlab-pypi-proxy, --workers 2 / 1 worker",
            lambda key: figures.of("proxy", key),
            "proxy-2w",
        ),
    ]
    for label, other, target in rows:
        cells = [times(figures.ratio(key, other, target)) for key in THROUGHPUT]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def headline(
    results: list[Result], memory: dict[str, int], setup: Setup, date: str, *, page: str
) -> str:
    """The README's lines (`page`: how they name docs/benchmarks.md): each target of
    issue 10 and where this run stands."""
    f = Figures({r.target: r for r in results})
    nginx = lambda key: f.of("nginx", key)  # noqa: E731
    gitlab = lambda key: f.of("gitlab", key)  # noqa: E731
    cached = " / ".join(times(f.ratio(k, nginx)) for k in THROUGHPUT[1:5])
    cold = " / ".join(times(f.ratio(k, gitlab)) for k in ("cold", "cold_big"))
    big = ", ".join(
        f"{label} {memory[label + ', cold'] / MB:.0f} / {memory[label + ', warm'] / MB:.0f} MB"
        for label in (f"{setup.big_mb} MB", f"{setup.huge_mb} MB")
        if label + ", cold" in memory
    )
    lines = [
        f"Run of {date} ({page}, written by `bench/suite.py`; issue 10's targets in brackets):",
        "",
        f"- cached files, {setup.size_mb} MB 1 / 8 clients, {setup.big_mb} MB 1 / 8 clients:"
        f" {cached} nginx's throughput (at least 0.8x);",
        f"- cold fill, {setup.size_mb} / {setup.big_mb} MB: {cold} GitLab direct's speed"
        " (at least 0.67x, i.e. at most 1.5x its time);",
        f"- cache-hit pages: {times(f.ratio('page_rps', f.best_peer))} the best peer (at least"
        f" 4x); `--workers 2`: {times(f.ratio('page_rps', lambda k: f.of('proxy', k), 'proxy-2w'))}"
        " one worker (above 1x);",
        f"- peak RSS while 8 clients stream a file, cold / warm: {big or 'n/a'} (under 100 MB,"
        " flat in file size);",
    ]
    for client, command in (("pip", "pip install"), ("uv", "uv pip install")):
        line = (
            f"- `{command}` of a {setup.packages}-package tree, GitLab {setup.delay_ms} ms away,"
            f" default settings: cold {times(f.speedup(client + ', cold', 'gitlab'))} GitLab"
            f" direct's speed (at least 1x); warm {times(f.speedup(client + ', warm', 'gitlab'))}"
            f" GitLab direct's, {times(f.speedup(client + ', warm', 'best peer'))} the best"
            " peer's (above 1x)"
        )
        for target, why in VARIANTS:
            if f.install(target, client + ", cold") is not None:
                line += (
                    f"; with `pages.metadata = {target.removeprefix('proxy-')}`, {why}: cold"
                    f" {times(f.speedup(client + ', cold', 'gitlab', target))}, warm"
                    f" {times(f.speedup(client + ', warm', 'gitlab', target))} GitLab"
                    f" direct's, {times(f.speedup(client + ', warm', 'best peer', target))}"
                    " the best peer's"
                )
        lines.append(line + ";")
    lines[-1] = lines[-1].removesuffix(";") + "."
    return "\n".join(textwrap.fill(line, 90, subsequent_indent="  ") for line in lines)


def update_readme(readme: Path, block: str) -> None:
    """Replace what stands between the headline markers in the README."""
    text = readme.read_text()
    before, found, rest = text.partition(BEGIN)
    _, found_end, after = rest.partition(END)
    if not found or not found_end:
        raise RuntimeError(f"{readme} lacks the markers {BEGIN} ... {END}")
    readme.write_text(f"{before}{BEGIN}\n{block}\n{END}{after}")


def write_page(
    results: list[Result],
    skipped: dict[str, str],
    memory: dict[str, int],
    setup: Setup,
    meta: dict[str, str],
) -> str:
    """docs/benchmarks.md's text."""
    size, big, huge = setup.size_mb, setup.big_mb, setup.huge_mb
    figures = Figures({r.target: r for r in results})
    lines = [
        "# Benchmarks",
        "",
        "Written by `.venv/bin/python bench/suite.py` (see bench/README.md); every target in one",
        "run, one after the other, in front of the same fake GitLab process (tests/fakegitlab.py,",
        "files in memory, a public project), all on loopback. MB = 10^6 bytes.",
        "",
        f"- Date: {meta['date']}" + (" (`--quick`: fewer repetitions)" if setup.quick else ""),
        f"- Machine: {meta['machine']} (shared: other work may run meanwhile)",
        f"- Versions: {meta['versions']}",
        f"- Server processes: {setup.workers} for gitlab-pypi-proxy (`--workers`, 2 in its "
        "`--workers 2` row) and nginx (`worker_processes`); proxpi under gunicorn, 1 worker "
        "with 32 threads; devpi-server as it starts; the fake GitLab is a threaded Python server.",
        "",
        f"| target | cache-hit page req/s (32 conns) | cached {size} MB wheel, 1 / 8 clients "
        f"MB/s | cached {big} MB wheel, 1 / 8 clients MB/s | cold fill {size} MB / {big} MB, "
        "MB/s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in (r for r in results if r.target not in INSTALL_ONLY):
        name = f"**{LABELS[r.target]}**" if r.target == "proxy" else LABELS[r.target]
        lines.append(
            f"| {name} | {fmt(r.page_rps)} | {fmt(r.hit_1)} / {fmt(r.hit_8)} "
            f"| {fmt(r.hit_1_big)} / {fmt(r.hit_8_big)} | {fmt(r.cold)} / {fmt(r.cold_big)} "
            f"| {r.peak_rss / MB:.0f} |"
        )
    for target, reason in skipped.items():
        lines.append(f"| {LABELS.get(target, target)} | not measured: {reason} | | | | |")
    lines += ["", ratios(figures, setup), ""]
    if memory:
        lines += [
            "Peak RSS of gitlab-pypi-proxy (one worker, a new process) while 8 clients stream one",
            f"file at once, MB (before any file: {memory['baseline'] / MB:.0f} MB):",
            "",
            "| file | cold (one fill feeding 8 clients) | warm (cached) |",
            "|---|---|---|",
        ]
        for label in (f"{big} MB", f"{huge} MB"):
            if f"{label}, cold" in memory:
                cold, warm = memory[f"{label}, cold"], memory[f"{label}, warm"]
                lines.append(f"| {label} | {cold / MB:.0f} | {warm / MB:.0f} |")
        lines.append("")
    installed = [r for r in results if r.installs]
    if installed:
        lines += [
            f"Seconds to install a {setup.packages}-package tree (an app and its dependencies,",
            f"small wheels) into a new venv with GitLab answering after {setup.delay_ms} ms:",
            "",
            "| target | `pip install` cold / warm | `uv pip install` cold / warm |",
            "|---|---|---|",
        ]
        for r in installed:
            cells = [
                " / ".join(f"{r.installs[f'{client}, {case}']:.2f}" for case in ("cold", "warm"))
                for client in ("pip", "uv")
            ]
            lines.append(f"| {LABELS[r.target]} | {cells[0]} | {cells[1]} |")
        lines.append("")
    lines += [
        "## Against issue 10's targets",
        "",
        headline(results, memory, setup, meta["date"], page="this page"),
        "",
        "## How each figure is taken",
        "",
        "- page req/s: `wrk -t2 -c32` for the seconds given, on the target's simple page of one",
        "  package (one wheel), after it was fetched three times (so it is cached); nginx",
        "  serves a saved copy of GitLab's page as a static file.",
        f"- cached wheels: the {size} MB and {big} MB wheels were fetched and checked (sha256)",
        "  until the target answered them itself (proxpi redirects to GitLab while it is still",
        "  downloading), then 1 curl process fetches one several times over one connection, or",
        "  8 curl processes at once; MB/s is all bytes over the wall time. nginx serves the",
        "  files from a directory with `sendfile on`.",
        f"- cold fill: one curl (following redirects) of a {size} MB and of a {big} MB wheel the",
        "  target never saw, time to last byte. The page listing it is fetched first and not",
        "  timed. nginx's cold fill is `proxy_pass` to GitLab with `proxy_cache`.",
        "- peak RSS: the target's processes (all of its tree: nginx's master and workers,",
        "  gunicorn's arbiter and worker, uvicorn's processes), summed VmRSS sampled every 20 ms",
        "  from start to stop (installs included); for GitLab direct it is the fake GitLab",
        "  process, which holds every file of the run in memory.",
        "- installs: `pip install --isolated --no-cache-dir` and `uv pip install` (a new cache",
        "  folder each time) into a new venv, from the target's index only; each client has its",
        "  own tree, so its first install (cold) finds the target empty; warm is the next",
        "  install, new client cache again. GitLab direct has no cache: cold and warm alike.",
        "  gitlab-pypi-proxy with `pages.metadata = always` and with `off`",
        "  (GITLAB_PYPI_PROXY_PAGES_METADATA) is measured by its installs alone: `off` shows",
        "  what pip's requests for core metadata cost it (one more request per wheel).",
        "- The client (wrk, curl, pip, uv) shares the machine's CPUs with the target and with",
        "  the fake GitLab, so absolute figures are loopback figures; compare the ratios.",
        "",
        "![throughput by target](throughput.png)",
        "",
        "![install times by target](installs.png)",
        "",
        "![resident memory over time](rss.png)",
        "",
    ]
    return "\n".join(lines)
