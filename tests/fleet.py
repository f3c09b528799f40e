"""A fleet for tests: N proxy replicas behind a real nginx (round-robin), as deploy/ runs them."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.clients import ProxyProcess, free_port
from tests.fakegitlab import FakeGitLab
from tests.scenario import Start, serve
from tests.services import binary, wait_until

_CONF = """
daemon off;
master_process on;
worker_processes 1;
{user}
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log {work}/access.log;
  client_body_temp_path {work}/client_body;
  proxy_temp_path {work}/proxy_temp;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  upstream replicas {{
{servers}
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location / {{
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
      proxy_next_upstream error timeout;
    }}
  }}
}}
"""


@dataclass
class Nginx:
    """nginx in the foreground with its config, pid and logs in `work`, balancing
    round-robin over `upstreams` ("host:port")."""

    work: Path
    upstreams: list[str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        """Write the config, start nginx and wait until a replica answers through it."""
        executable = binary("nginx", "/usr/sbin/nginx")
        self.work.mkdir(parents=True, exist_ok=True)
        conf = self.work / "nginx.conf"
        conf.write_text(
            _CONF.format(
                work=self.work,
                port=self.port,
                user="user root;" if os.geteuid() == 0 else "",
                servers="\n".join(f"    server {up};" for up in self.upstreams),
            )
        )
        with open(self.work / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                [
                    executable,
                    "-p",
                    str(self.work),
                    "-c",
                    str(conf),
                    "-e",
                    str(self.work / "error.log"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._answers, "nginx to answer")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError((self.work / "error.log").read_text())
        try:
            return httpx.get(self.url + "/-/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        """Stop it (SIGTERM: fast shutdown) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)
        self.process = None


@dataclass
class Fleet:
    """Proxy replicas, each with its own cache dir, behind one nginx."""

    replicas: list[ProxyProcess]
    balancer: Nginx

    @property
    def url(self) -> str:
        """The load balancer's base URL: what clients use."""
        return self.balancer.url


def start_fleet(
    start: Start, gitlab: FakeGitLab, work: Path, count: int, *args: str, **env: str
) -> Fleet:
    """`count` replicas of `serve` (start_proxy's options and environment in `env`, the
    same for each, e.g. token=..., GITLAB_PYPI_PROXY_COORDINATION_REDIS_URL=...), caches in
    work/replica-N, behind nginx in work/nginx. Call `fleet.balancer.stop()` at the end;
    start_proxy stops the replicas."""
    with ThreadPoolExecutor(count) as pool:  # each waits for its own readiness: start all at once
        starting = [
            pool.submit(serve, start, gitlab, work / f"replica-{n}", *args, **env)
            for n in range(count)
        ]
        replicas = [replica.result() for replica in starting]
    balancer = Nginx(work / "nginx", [f"127.0.0.1:{r.port}" for r in replicas]).start()
    return Fleet(replicas, balancer)
