"""The suite's targets: each cache (or GitLab itself) started in front of the fake GitLab."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from harness import PROJECT, MiB

from tests.s3server import moto_server

HOT, HOT_BIG = "hot-pkg", "hot-big"
SIMPLE = f"/api/v4/projects/{PROJECT}/packages/pypi/simple"
TARGETS = (
    "gitlab",
    "proxpi",
    "devpi",
    "nginx",
    "proxy",
    "proxy-2w",
    "proxy-s3",
    "proxy-s3-redirect",
    "proxy-always",
    "proxy-off",
)
# Targets measured by their installs only (no pages, wheels, cold fills or memory figures).
INSTALL_ONLY = ("proxy-always", "proxy-off")
LABELS = {
    "gitlab": "GitLab direct (in-memory fake)",
    "proxpi": "proxpi",
    "devpi": "devpi-server",
    "nginx": "nginx serving the files (sendfile)",
    "proxy": "gitlab-pypi-proxy",
    "proxy-2w": "gitlab-pypi-proxy, --workers 2",
    "proxy-s3": "gitlab-pypi-proxy, files in S3 (moto server)",
    "proxy-s3-redirect": "gitlab-pypi-proxy, S3 with redirects (moto server)",
    "proxy-always": "gitlab-pypi-proxy, pages.metadata = always",
    "proxy-off": "gitlab-pypi-proxy, pages.metadata = off",
}


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    """The fake GitLab (URL, pid, files and sizes by package name, how to set its latency),
    a scratch directory, the peers' venv and the default number of server processes."""

    url: str
    pid: int
    files: dict[str, dict[str, str]]
    sizes: dict[str, int]
    trees: dict[str, str]
    set_delay: Callable[[float], None]
    tmp: Path
    peers: Path
    workers: int


@dataclass(frozen=True)
class Running:
    """A started target: its pid, the URL of a package's page (`page.format(name)`), the
    index URL clients are given (None: clients cannot install through it), and the page of
    a package it never saw (nginx: GitLab's, through proxy_cache)."""

    pid: int
    page: str
    index: str | None
    cold_page: str = ""

    def url_of(self, name: str, fx: Fixture, *, cold: bool = False) -> str:
        """The URL of `name`'s wheel found from the target's page (the page is not timed)."""
        page = self.cold_page if cold and self.cold_page else self.page
        return file_url(page.format(name), fx.files[name]["filename"])


@contextmanager
def start(target: str, fx: Fixture) -> Iterator[Running]:
    """Start one target in front of the fake GitLab."""
    port, log, work = free_port(), fx.tmp / f"{target}.log", fx.tmp / target
    work.mkdir(exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    peer_bin = fx.peers / "bin"
    if target == "gitlab":
        yield Running(fx.pid, f"{fx.url}{SIMPLE}/{{}}/", f"{fx.url}{SIMPLE}/")
    elif target.startswith("proxy"):
        command = [sys.executable, "-m", "proxy", "serve", "--listen", f"127.0.0.1:{port}"]
        command += ["--upstream", fx.url, "--cache-dir", str(work / "cache")]
        command += ["--log-level", "warning"]
        workers = 2 if target == "proxy-2w" else fx.workers
        if workers > 1:
            command += ["--workers", str(workers)]
        with ExitStack() as stack:
            env = None
            if target.startswith("proxy-s3"):
                s3 = stack.enter_context(moto_server())
                env = dict(os.environ, **s3.env())
                env["GITLAB_PYPI_PROXY_STORAGE_BACKEND"] = "s3"
                env["GITLAB_PYPI_PROXY_STORAGE_URL"] = f"s3://{s3.bucket}/bench"
                env["GITLAB_PYPI_PROXY_STORAGE_ENDPOINT_URL"] = s3.endpoint
                env["GITLAB_PYPI_PROXY_STORAGE_REDIRECT"] = str(target.endswith("redirect"))
            if target in ("proxy-always", "proxy-off"):
                mode = target.removeprefix("proxy-")
                env = dict(os.environ, GITLAB_PYPI_PROXY_PAGES_METADATA=mode)
            pid = stack.enter_context(process(command, log, env))
            wait_for(base + "/-/health")
            yield Running(pid, f"{base}{SIMPLE}/{{}}/", f"{base}{SIMPLE}/")
    elif target == "proxpi":
        env = dict(os.environ, PROXPI_INDEX_URL=f"{fx.url}{SIMPLE}/", PROXPI_EXTRA_INDEX_URLS="")
        env.update(PROXPI_CACHE_DIR=str(work / "cache"), PROXPI_DOWNLOAD_TIMEOUT="30")
        command = [str(peer_bin / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--threads", "32"]
        with process([*command, "proxpi.server:app"], log, env) as pid:
            wait_for(base + "/index/")
            yield Running(pid, f"{base}/index/{{}}/", f"{base}/index/")
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
            index = f"{base}/root/gitlab/+simple/"
            yield Running(pid, index + "{}/", index)
    elif target == "nginx":
        yield from nginx(fx, port, work)
    else:
        raise ValueError(target)


def save(url: str, path: Path) -> None:
    """Stream `url` into `path`."""
    with httpx.stream("GET", url, timeout=120) as response, open(path, "wb") as out:
        response.raise_for_status()
        for chunk in response.iter_bytes(MiB):
            out.write(chunk)


def nginx(fx: Fixture, port: int, work: Path) -> Iterator[Running]:
    """nginx: the hot pages and wheels as static files (sendfile), cold files via proxy_cache;
    any other page is its page on GitLab (through proxy_cache), so its links go to GitLab."""
    www = work / "www"
    for name in (HOT, HOT_BIG):
        wheel = fx.files[name]
        (www / "files" / wheel["sha256"]).mkdir(parents=True)
        (www / "simple" / name).mkdir(parents=True)
        page = httpx.get(f"{fx.url}{SIMPLE}/{name}/", timeout=60).text
        saved = page.replace(f"{fx.url}{SIMPLE[:-7]}", "")
        (www / "simple" / name / "index.html").write_text(saved)
        source = file_url(f"{fx.url}{SIMPLE}/{name}/", wheel["filename"])
        save(source, www / "files" / wheel["sha256"] / wheel["filename"])
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
        yield Running(pid, f"{base}/simple/{{}}/", None, f"{base}{SIMPLE}/{{}}/")


@contextmanager
def fake_gitlab(
    sizes: dict[str, int], trees: dict[str, int], tmp: Path, peers: Path, workers: int
) -> Iterator[Fixture]:
    """The fake GitLab as its own process (bench/gitlab_server.py) with a wheel of each size
    and the package trees, for the block's length."""
    spec = json.dumps({"files": sizes, "trees": trees})
    server = Path(__file__).resolve().parent / "gitlab_server.py"
    gitlab = subprocess.Popen(
        [sys.executable, str(server), spec],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert gitlab.stdin is not None
    assert gitlab.stdout is not None
    stdin, stdout = gitlab.stdin, gitlab.stdout

    def set_delay(seconds: float) -> None:
        stdin.write(f"delay {seconds}\n")
        stdin.flush()
        if stdout.readline().strip() != "ok":
            raise RuntimeError("the fake GitLab did not take its delay")

    try:
        ready = json.loads(stdout.readline())
        yield Fixture(
            ready["url"],
            gitlab.pid,
            ready["files"],
            sizes,
            ready["trees"],
            set_delay,
            tmp,
            peers,
            workers,
        )
    finally:
        stdin.close()
        gitlab.wait()
