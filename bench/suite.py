"""The side-by-side suite of issue 10: the proxy, its peers and nginx before one fake GitLab.

Run from the repository as root with the test venv: `.venv/bin/python bench/suite.py`.
It installs what is missing (nginx and wrk with apt-get; proxpi, gunicorn, devpi-server,
devpi-client and matplotlib into a separate venv, `--peers`, never the test venv), starts the
fake GitLab as its own process, then each target in turn on loopback, and measures: cache-hit
page requests/s at 32 connections (wrk), a cached wheel with 1 and 8 clients (curl processes,
MB/s over all of them), a cold fill of a wheel nobody asked for yet (time to last byte), and the
target's resident memory over its whole life (summed over its processes, sampled every 20 ms).
It writes docs/benchmarks.md and docs/*.png.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from harness import MB, PROJECT, ROOT, MiB

from tests.s3server import moto_server

DOCS = ROOT / "docs"
HERE = Path(__file__).resolve().parent
PEER_PACKAGES = ("proxpi", "gunicorn", "devpi-server", "devpi-client", "matplotlib")
HOT = "hot-pkg"
TARGETS = ("gitlab", "proxpi", "devpi", "nginx", "proxy", "proxy-s3", "proxy-s3-redirect")
LABELS = {
    "gitlab": "GitLab direct (in-memory fake)",
    "proxpi": "proxpi",
    "devpi": "devpi-server",
    "nginx": "nginx serving the files (sendfile)",
    "proxy": "gitlab-pypi-proxy",
    "proxy-s3": "gitlab-pypi-proxy, files in S3 (moto server)",
    "proxy-s3-redirect": "gitlab-pypi-proxy, S3 with redirects (moto server)",
}
SIMPLE = f"/api/v4/projects/{PROJECT}/packages/pypi/simple"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    found = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            for child in children:
                found += tree(int(child))
    except OSError:
        pass
    return found


def resident(pid: int) -> int:
    """VmRSS of a process and its descendants, in bytes (0 once gone)."""
    total = 0
    for each in tree(pid):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


@dataclass
class Memory:
    """Samples a process tree's resident memory in a thread: (seconds, bytes) pairs."""

    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Memory:
        started = time.monotonic()

        def run() -> None:
            while not self._stop.wait(0.02):
                self.samples.append((time.monotonic() - started, resident(self.pid)))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Result:
    """One target's figures."""

    target: str
    page_rps: float = 0.0
    hit_1: float = 0.0
    hit_8: float = 0.0
    cold: float = 0.0
    peak_rss: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class Running:
    """A started target: its base URL, how to reach the hot page and a cold file, its pid."""

    pid: int
    hot_page: str
    cold_url: Callable[[str], str]


def wait_for(url: str, deadline: float = 60.0) -> None:
    """Poll `url` until it answers below 500 (or fail)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling a condition with a deadline
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def process(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run a command for the block's length; its pid."""
    with open(log, "a") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield child.pid
    finally:
        child.terminate()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def file_url(page_url: str, filename: str) -> str:
    """The absolute, fragment-less URL of `filename` as the page at `page_url` links it."""
    page = httpx.get(page_url, timeout=60, follow_redirects=True)
    page.raise_for_status()
    for href in re.findall(r'href="([^"]+)"', page.text):
        if filename in urllib.parse.unquote(href):
            return urllib.parse.urljoin(str(page.url), href.replace("&amp;", "&")).split("#")[0]
    raise RuntimeError(f"{filename} not on {page_url}: {page.text[:300]}")


@dataclass(frozen=True)
class Fixture:
    """The fake GitLab: URL, pid, files by package name, scratch directory, peers' python."""

    url: str
    pid: int
    files: dict[str, dict[str, str]]
    tmp: Path
    peers: Path
    size: int
    workers: int


def cold_via_page(page_of: Callable[[str], str], fixture: Fixture) -> Callable[[str], str]:
    """A cold file's URL found from the target's page for the package (the page is not timed)."""
    return lambda name: file_url(page_of(name), fixture.files[name]["filename"])


@contextmanager
def start(target: str, fx: Fixture) -> Iterator[Running]:
    """Start one target in front of the fake GitLab."""
    port, log, work = free_port(), fx.tmp / f"{target}.log", fx.tmp / target
    work.mkdir()
    base = f"http://127.0.0.1:{port}"
    peer_bin = fx.peers / "bin"
    if target == "gitlab":
        yield Running(
            fx.pid,
            f"{fx.url}{SIMPLE}/{HOT}/",
            cold_via_page(lambda name: f"{fx.url}{SIMPLE}/{name}/", fx),
        )
    elif target.startswith("proxy"):
        command = [sys.executable, "-m", "proxy", "serve", "--listen", f"127.0.0.1:{port}"]
        command += ["--upstream", fx.url, "--cache-dir", str(work / "cache")]
        command += ["--log-level", "warning"]
        if fx.workers > 1:
            command += ["--workers", str(fx.workers)]
        with ExitStack() as stack:
            env = None
            if target != "proxy":
                s3 = stack.enter_context(moto_server())
                env = dict(os.environ, **s3.env())
                env["GITLAB_PYPI_PROXY_STORAGE_BACKEND"] = "s3"
                env["GITLAB_PYPI_PROXY_STORAGE_URL"] = f"s3://{s3.bucket}/bench"
                env["GITLAB_PYPI_PROXY_STORAGE_ENDPOINT_URL"] = s3.endpoint
                env["GITLAB_PYPI_PROXY_STORAGE_REDIRECT"] = str(target.endswith("redirect"))
            pid = stack.enter_context(process(command, log, env))
            wait_for(base + "/-/health")
            page = f"{base}{SIMPLE}/{{}}/"
            yield Running(pid, page.format(HOT), cold_via_page(page.format, fx))
    elif target == "proxpi":
        env = dict(os.environ, PROXPI_INDEX_URL=f"{fx.url}{SIMPLE}/", PROXPI_EXTRA_INDEX_URLS="")
        env.update(PROXPI_CACHE_DIR=str(work / "cache"), PROXPI_DOWNLOAD_TIMEOUT="30")
        command = [str(peer_bin / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--threads", "32"]
        with process([*command, "proxpi.server:app"], log, env) as pid:
            wait_for(base + "/index/")
            page = f"{base}/index/{{}}/"
            yield Running(pid, page.format(HOT), cold_via_page(page.format, fx))
    elif target == "devpi":
        server = ["--serverdir", str(work / "server")]
        subprocess.run([str(peer_bin / "devpi-init"), *server], check=True, capture_output=True)
        command = [str(peer_bin / "devpi-server"), *server, "--host", "127.0.0.1"]
        with process([*command, "--port", str(port)], log) as pid:
            wait_for(base + "/+api")
            client = [str(peer_bin / "devpi"), "--clientdir", str(work / "client")]
            for args in (
                ["use", base],
                ["login", "root", "--password", ""],
                ["index", "-c", "gitlab", "type=mirror", f"mirror_url={fx.url}{SIMPLE}/"],
            ):
                subprocess.run([*client, *args], check=True, capture_output=True)
            page = f"{base}/root/gitlab/+simple/{{}}/"
            yield Running(pid, page.format(HOT), cold_via_page(page.format, fx))
    elif target == "nginx":
        yield from nginx(fx, port, work)
    else:
        raise ValueError(target)


def nginx(fx: Fixture, port: int, work: Path) -> Iterator[Running]:
    """nginx: the hot page and wheel as static files (sendfile), cold files via proxy_cache."""
    hot = fx.files[HOT]
    www = work / "www"
    (www / "files" / hot["sha256"]).mkdir(parents=True)
    (www / "simple" / HOT).mkdir(parents=True)
    page = httpx.get(f"{fx.url}{SIMPLE}/{HOT}/", timeout=60).text
    (www / "simple" / HOT / "index.html").write_text(page.replace(f"{fx.url}{SIMPLE[:-7]}", ""))
    source = file_url(f"{fx.url}{SIMPLE}/{HOT}/", hot["filename"])
    target = www / "files" / hot["sha256"] / hot["filename"]
    with httpx.stream("GET", source) as response, open(target, "wb") as out:
        for chunk in response.iter_bytes(MiB):
            out.write(chunk)
    conf = work / "nginx.conf"
    conf.write_text(f"""
daemon off; master_process on; worker_processes {fx.workers}; user root;
pid {work}/nginx.pid; error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  default_type application/octet-stream;
  proxy_cache_path {work}/pcache keys_zone=c:10m max_size=10g;
  proxy_temp_path {work}/ptemp; client_body_temp_path {work}/btemp;
  server {{
    listen 127.0.0.1:{port};
    location /simple/ {{ root {www}; index index.html; }}
    location /files/ {{ root {www}; }}
    location /api/ {{
      proxy_pass {fx.url}; proxy_cache c; proxy_cache_valid 200 1h; proxy_http_version 1.1;
    }}
  }}
}}
""")
    base = f"http://127.0.0.1:{port}"
    with process(["nginx", "-p", str(work), "-c", str(conf)], work / "stdout.log") as pid:
        wait_for(base + "/simple/")
        yield Running(
            pid,
            f"{base}/simple/{HOT}/",
            cold_via_page(lambda name: f"{base}{SIMPLE}/{name}/", fx),
        )


def wrk(url: str, seconds: int) -> float:
    """Requests/s of wrk with 32 connections on 2 threads, asking for HTML (proxpi answers no
    2xx without an Accept header)."""
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "-H", "Accept: text/html", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s*([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if found is None or errors is not None:
        raise RuntimeError(out)
    return float(found.group(1))


def curls(url: str, clients: int, repeats: int, size: int) -> float:
    """MB/s delivered to `clients` curl processes each fetching `url` `repeats` times."""
    command = ["curl", "-sfL", "-w", "%{size_download}\\n"]
    started = time.perf_counter()
    children = [
        subprocess.Popen(
            [*command, *([url, "-o", "/dev/null"] * repeats)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(clients)
    ]
    outputs = [child.communicate()[0] for child in children]
    seconds = time.perf_counter() - started
    sizes = [int(n) for out in outputs for n in out.split()]
    if sizes != [size] * clients * repeats or any(child.returncode for child in children):
        raise RuntimeError(f"short download from {url}: {sizes}")
    return clients * repeats * size / MB / seconds


def settled(url: str, sha256: str, *, follow: bool = False) -> None:
    """Fetch `url` until it answers 200 itself (no redirect, unless `follow`: the proxy's
    own redirect to its bucket) with the right bytes: cached."""
    end = time.monotonic() + 120
    while time.monotonic() < end:
        digest = hashlib.sha256()
        with httpx.stream("GET", url, timeout=120, follow_redirects=follow) as response:
            for chunk in response.iter_bytes(MiB):
                digest.update(chunk)
        if response.status_code == 200 and digest.hexdigest() == sha256:
            return
        time.sleep(0.2)  # polling a condition (the peer finishing its fill) with a deadline
    raise RuntimeError(f"{url} never served the file itself")


def measure(target: str, fx: Fixture, seconds: int) -> Result:
    """All figures for one target."""
    result = Result(target)
    hot = fx.files[HOT]
    with start(target, fx) as running, Memory(running.pid) as memory:
        url = file_url(running.hot_page, hot["filename"])
        settled(url, hot["sha256"], follow=target.endswith("redirect"))
        for _ in range(3):
            httpx.get(running.hot_page, timeout=60).raise_for_status()
        result.page_rps = wrk(running.hot_page, seconds)
        result.hit_1 = curls(url, 1, 8, fx.size)
        result.hit_8 = curls(url, 8, 3, fx.size)
        cold_url = running.cold_url(f"cold-{target}")
        started = time.perf_counter()
        curls(cold_url, 1, 1, fx.size)
        result.cold = fx.size / MB / (time.perf_counter() - started)
    result.rss = memory.samples
    result.peak_rss = max(rss for _, rss in memory.samples)
    return result


def versions(peers: Path) -> dict[str, str]:
    """Versions of everything measured."""
    code = (
        "import importlib.metadata as m, json, sys;"
        "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    )
    found: dict[str, str] = json.loads(
        subprocess.run(
            [str(peers / "bin" / "python"), "-c", code, *PEER_PACKAGES],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    ours = json.loads(
        subprocess.run(
            [sys.executable, "-c", code, "gitlab-pypi-proxy", "uvicorn", "starlette", "httpx"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    found.update(ours)
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    found["nginx"] = nginx.rpartition("/")[2]
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    found["wrk"] = wrk_version.split()[1] if wrk_version else "?"
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout
    found["curl"] = curl.split()[1]
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


def write_page(
    results: list[Result], skipped: dict[str, str], fx: Fixture, meta: dict[str, str]
) -> str:
    """docs/benchmarks.md's text."""
    size = fx.size // MB
    lines = [
        "# Benchmarks",
        "",
        "Written by `.venv/bin/python bench/suite.py` (see bench/README.md); every target in one",
        "run, one after the other, in front of the same fake GitLab process (tests/fakegitlab.py,",
        "files in memory, a public project), all on loopback. MB = 10^6 bytes.",
        "",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['machine']} (shared: other work may run meanwhile)",
        f"- Versions: {meta['versions']}",
        f"- Server processes: {fx.workers} for gitlab-pypi-proxy (`--workers`) and nginx "
        "(`worker_processes`); proxpi under gunicorn, 1 worker with 32 threads; devpi-server "
        "as it starts; the fake GitLab is a threaded Python server.",
        "",
        f"| target | cache-hit page req/s (32 conns) | cached {size} MB wheel, 1 / 8 clients "
        f"MB/s | cold fill {size} MB, MB/s | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        name = LABELS[r.target]
        row = (
            f"| {name} | {fmt(r.page_rps)} | {fmt(r.hit_1)} / {fmt(r.hit_8)} "
            f"| {fmt(r.cold)} | {r.peak_rss / MB:.0f} |"
        )
        lines.append(row.replace(f"| {name} |", f"| **{name}** |") if r.target == "proxy" else row)
    for target, reason in skipped.items():
        lines.append(f"| {LABELS[target]} | not measured: {reason} | | | |")
    lines += ["", ratios(results), ""]
    lines += [
        "How each figure is taken:",
        "",
        "- page req/s: `wrk -t2 -c32` for the seconds given, on the target's simple page of one",
        "  package (one wheel), after it was fetched three times (so it is cached); nginx",
        "  serves a saved copy of GitLab's page as a static file.",
        f"- cached wheel: the {size} MB wheel was fetched and checked (sha256) until the target",
        "  answered it itself (proxpi redirects to GitLab while it is still downloading), then",
        "  1 curl process fetches it 8 times over one connection, or 8 curl processes 3 times",
        "  each at once; MB/s is all bytes over the wall time. nginx serves the file from a",
        "  directory with `sendfile on`.",
        f"- cold fill: one curl (following redirects) of a {size} MB wheel the target never saw,",
        "  time to last byte. The page listing it is fetched first and not timed. nginx's cold",
        "  fill is `proxy_pass` to GitLab with `proxy_cache`.",
        "- peak RSS: the target's processes (all of its tree: nginx's master and workers,",
        "  gunicorn's arbiter and worker, uvicorn's processes), summed VmRSS sampled every 20 ms",
        "  from start to stop; for GitLab direct it is the fake GitLab process, which holds",
        "  every file in memory.",
        "- The client (wrk, curl) shares the machine's CPUs with the target and with the fake",
        "  GitLab, so absolute figures are loopback figures; compare the ratios.",
        "",
        "![throughput by target](throughput.png)",
        "",
        "![resident memory over time](rss.png)",
        "",
    ]
    return "\n".join(lines)


def ratios(results: list[Result]) -> str:
    """The proxy against nginx and against the best peer, per figure."""
    by = {r.target: r for r in results}
    if "proxy" not in by:
        return "No ratios: gitlab-pypi-proxy was not measured."
    proxy = by["proxy"]
    peers = [r for r in results if r.target in ("proxpi", "devpi")]
    out = ["| gitlab-pypi-proxy vs | page req/s | wheel 1 client | wheel 8 clients | cold fill |"]
    out.append("|---|---|---|---|---|")
    keys = ("page_rps", "hit_1", "hit_8", "cold")

    def row(label: str, other: Callable[[str], float]) -> str:
        cells = [f"{getattr(proxy, key) / other(key):.2f}x" for key in keys]
        return f"| {label} | " + " | ".join(cells) + " |"

    if "nginx" in by:
        out.append(row("nginx", lambda key: float(getattr(by["nginx"], key))))
    if "gitlab" in by:
        out.append(row("GitLab direct", lambda key: float(getattr(by["gitlab"], key))))
    if peers:
        out.append(
            row(
                "best peer (proxpi, devpi-server)",
                lambda key: max(float(getattr(p, key)) for p in peers),
            )
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=40, help="wheel size (default: 40)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration (default: 5)")
    parser.add_argument("--workers", type=int, default=1, help="proxy and nginx processes")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    parser.add_argument("--peers", type=Path, default=Path("/tmp/gitlab-pypi-proxy-bench-peers"))
    parser.add_argument("--out", type=Path, default=DOCS, help="where the page and charts go")
    args = parser.parse_args()
    targets = args.targets.split(",")
    began = time.monotonic()
    peers_python = ensure_tools(args.peers)
    names = [HOT, *(f"cold-{target}" for target in targets)]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-suite-")))
        gitlab = subprocess.Popen(
            [sys.executable, str(HERE / "gitlab_server.py"), str(args.size_mb), *names],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        stack.callback(gitlab.wait)
        assert gitlab.stdin is not None
        assert gitlab.stdout is not None
        stack.callback(gitlab.stdin.close)
        ready = json.loads(gitlab.stdout.readline())
        fx = Fixture(
            ready["url"],
            gitlab.pid,
            ready["files"],
            tmp,
            args.peers,
            args.size_mb * MB,
            args.workers,
        )
        results: list[Result] = []
        skipped: dict[str, str] = {}
        for target in targets:
            print(f"{LABELS[target]} ...", flush=True)
            try:
                results.append(measure(target, fx, args.seconds))
            except Exception as error:  # a peer that fails is reported, not fatal
                skipped[target] = f"{type(error).__name__}: {str(error)[:200]}"
                print(f"  failed: {error}", flush=True)
                continue
            r = results[-1]
            print(
                f"  pages {r.page_rps:.0f}/s, hit {r.hit_1:.0f} / {r.hit_8:.0f} MB/s, "
                f"cold {r.cold:.0f} MB/s, peak RSS {r.peak_rss / MB:.0f} MB",
                flush=True,
            )
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions(args.peers).items()),
    }
    args.out.mkdir(exist_ok=True)
    (args.out / "benchmarks.md").write_text(write_page(results, skipped, fx, meta))
    raw = Path(tempfile.gettempdir()) / "bench-suite-results.json"
    raw.write_text(
        json.dumps(
            {"labels": LABELS, "size_mb": args.size_mb, "results": [asdict(r) for r in results]}
        )
    )
    subprocess.run(
        [str(peers_python), str(HERE / "charts.py"), str(raw), str(args.out)], check=True
    )
    print(f"wrote {args.out / 'benchmarks.md'} in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
