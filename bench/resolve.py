"""Resolver benchmark: `uv pip compile` and `pip install --dry-run --report` of a tree with
one large wheel, directly against the fake GitLab and through the proxy, cold and warm.

Run from the repository with the test venv: `.venv/bin/python bench/resolve.py`.
The tree is an app depending on `--deps` small wheels and one `--size-mb` wheel (a stored
random member, its dist-info at the end as in real wheels); GitLab answers every request
after `--delay-ms`, like a distant server. Direct runs give the clients GitLab's URL with
credentials; proxied runs use a proxy with `pages.metadata = always` and its own token.
Each proxied run starts a new proxy with an empty cache (cold), then repeats the same run
against it (warm); clients never share a cache between runs. Bytes are what GitLab's
answers carried: file bodies (Range applied) plus pages and API answers, replayed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from harness import DEV_TOKEN, DEV_USER, MB, PROJECT, fake_gitlab, proxy_before

from tests.clients import isolated_env, run, uv
from tests.distfactory import escaped_name, make_wheel
from tests.fakegitlab import FakeGitLab
from tests.fakehttp import byte_range

APP, BIG = "bench-app", "bench-big"
SIMPLE = f"/api/v4/projects/{PROJECT}/packages/pypi/simple"
_FILE = re.compile(r"/packages/pypi/files/([0-9a-f]{64})/")
_REPLAYED_HEADERS = ("host", "content-length", "connection")


def big_wheel(name: str, version: str, size: int) -> tuple[str, bytes]:
    """A valid wheel of about `size` bytes: one stored random member, then its dist-info."""
    stem = escaped_name(name)
    dist_info = f"{stem}-{version}.dist-info"
    members: list[tuple[str, str | bytes]] = [
        (f"{stem}/__init__.py", f'__version__ = "{version}"\n'.encode()),
        (f"{stem}/blob.bin", os.urandom(size)),
        (f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n"),
        (f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{dist_info}/RECORD", ""),  # a dry run never reads it
    ]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path, data in members:
            archive.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return f"{stem}-{version}-py3-none-any.whl", buffer.getvalue()


def add_tree(gitlab: FakeGitLab, *, deps: int, size: int) -> tuple[set[str], dict[str, int]]:
    """Upload the tree; return the names a resolution must pick and each file's size by sha256."""
    names = [f"bench-dep-{n}" for n in range(deps)]
    wheels = [make_wheel(name, "1.0") for name in names]
    wheels.append(make_wheel(APP, "1.0", requires=(*names, BIG)))
    wheels.append(big_wheel(BIG, "1.0", size))
    sizes: dict[str, int] = {}
    for filename, content in wheels:
        name = filename.split("-")[0].replace("_", "-")
        sizes[gitlab.add_file(PROJECT, name, "1.0", filename, content)] = len(content)
    return {APP, BIG, *names}, sizes


@dataclass(frozen=True)
class Client:
    """How to run one resolver isolated from this machine, and read what it picked."""

    name: str
    command: Callable[[str, Path], list[str]]
    picked: Callable[[str, Path], set[str]]


def _uv_compile(index: str, scratch: Path) -> list[str]:
    requirements = scratch / "requirements.in"
    requirements.write_text(f"{APP}\n")
    cache = scratch / "uv-cache"  # a new scratch folder per run: always a cold client cache
    return [
        *(uv(), "pip", "compile", "--no-config", "--cache-dir", str(cache)),
        *("--python", sys.executable, "--no-header", "--index-url", index, str(requirements)),
    ]


def _uv_picked(stdout: str, scratch: Path) -> set[str]:
    return {line.split("==")[0] for line in stdout.splitlines() if "==" in line}


def _pip_dry_run(index: str, scratch: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"),
        *("--report", str(scratch / "report.json"), "--isolated", "--no-cache-dir"),
        *("--no-input", "--disable-pip-version-check", "--quiet", "--index-url", index, APP),
    ]


def _pip_picked(stdout: str, scratch: Path) -> set[str]:
    report = json.loads((scratch / "report.json").read_text())
    return {item["metadata"]["name"] for item in report["install"]}


CLIENTS = (
    Client("uv pip compile", _uv_compile, _uv_picked),
    Client("pip install --dry-run", _pip_dry_run, _pip_picked),
)


def gitlab_bytes(gitlab: FakeGitLab, sizes: dict[str, int]) -> int:
    """Body bytes of GitLab's answers since its counts were reset (pages replayed once)."""
    total = 0
    replayed: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for request in [r for r in gitlab.requests if r.server == "gitlab"]:
        if request.method == "HEAD":
            continue
        file = _FILE.search(request.path)
        if file:
            size = sizes[file[1]]
            span = byte_range(request.headers.get("range"), size)
            total += size if span is None else span[1] - span[0]
            continue
        headers = tuple(
            sorted((k, v) for k, v in request.headers.items() if k not in _REPLAYED_HEADERS)
        )
        if (request.path, headers) not in replayed:
            answer = httpx.get(gitlab.url + request.path, headers=dict(headers), timeout=60)
            replayed[request.path, headers] = len(answer.content)
        total += replayed[request.path, headers]
    return total


@dataclass(frozen=True)
class Sample:
    """One timed client run and the bytes GitLab sent for it."""

    seconds: float
    sent: int


def measure(
    client: Client, index: str, gitlab: FakeGitLab, sizes: dict[str, int], want: set[str]
) -> Sample:
    """Run `client` once against `index` with a new scratch folder; check what it picked."""
    with tempfile.TemporaryDirectory(prefix="bench-resolve-") as tmp:
        scratch = Path(tmp)
        gitlab.reset_counts()
        env = isolated_env(scratch / "home")
        started = time.perf_counter()
        result = run(client.command(index, scratch), env=env, timeout=600)
        seconds = time.perf_counter() - started
        assert result.returncode == 0, result.stderr
        picked = client.picked(result.stdout, scratch)
        assert picked == want, (picked, result.stdout, result.stderr)
        return Sample(seconds, gitlab_bytes(gitlab, sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100, help="large wheel (default: 100)")
    parser.add_argument("--deps", type=int, default=8, help="small wheels (default: 8)")
    parser.add_argument("--delay-ms", type=float, default=75, help="GitLab latency (75)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each case (default: 3)")
    args = parser.parse_args()
    size = args.size_mb * MB
    samples: dict[tuple[str, str], list[Sample]] = {}
    proxy_env = {
        "GITLAB_PYPI_PROXY_TOKEN": DEV_TOKEN,
        "GITLAB_PYPI_PROXY_PAGES_METADATA": "always",
    }
    with fake_gitlab(max_file_size=size + MB) as gitlab:
        want, sizes = add_tree(gitlab, deps=args.deps, size=size)
        gitlab.delay = args.delay_ms / 1000
        direct = gitlab.url.replace("://", f"://{DEV_USER}:{DEV_TOKEN}@") + SIMPLE
        for client in CLIENTS:
            # Not counted: warms the OS's caches and the fake's digests of the big file.
            measure(client, direct, gitlab, sizes, want)
            with proxy_before(gitlab, **proxy_env) as proxy:
                measure(client, proxy.url + SIMPLE, gitlab, sizes, want)
            for _ in range(args.runs):
                sample = measure(client, direct, gitlab, sizes, want)
                samples.setdefault((client.name, "direct"), []).append(sample)
                with proxy_before(gitlab, **proxy_env) as proxy:
                    for case in ("proxy, cold", "proxy, warm"):
                        sample = measure(client, proxy.url + SIMPLE, gitlab, sizes, want)
                        samples.setdefault((client.name, case), []).append(sample)
    print(
        f"{len(want)} packages, one {args.size_mb} MB wheel, GitLab latency {args.delay_ms:g} ms,"
        f" {args.runs} runs; median (min-max) seconds, median bytes from GitLab:"
    )
    print(f"| {'client':24} | {'against':12} | {'seconds':>18} | {'GitLab sent':>14} |")
    print(f"|{'-' * 26}|{'-' * 14}|{'-' * 20}|{'-' * 16}|")
    for (name, case), found in samples.items():
        times = [s.seconds for s in found]
        spread = f"{statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f})"
        sent = statistics.median(s.sent for s in found)
        print(f"| {name:24} | {case:12} | {spread:>18} | {sent:>14,.0f} |")


if __name__ == "__main__":
    main()
