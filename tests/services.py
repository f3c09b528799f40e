"""Real servers of the machine (redis-server, nginx) for tests, on loopback: found or refused."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients import free_port


def binary(name: str, *places: str) -> str:
    """The path of a server binary; skips the test when it is missing, but fails it under
    CI=true (the CI image must have it)."""
    found = next((p for p in places if os.access(p, os.X_OK)), None) or shutil.which(name)
    if found is None:
        message = f"{name} is not installed (apt-get install {name.split('-')[0]})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def wait_until(condition: Callable[[], bool], what: str, deadline: float = 20.0) -> None:
    """Poll `condition()` until it is true, failing after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling a condition with a deadline, not a fixed wait


class RedisServer:
    """`redis-server` on a free loopback port, keeping nothing on disk."""

    def __init__(self, directory: Path) -> None:
        self.binary = binary("redis-server", "/usr/bin/redis-server")
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it (on the same port as before, if restarted) and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.answers, "redis-server to answer PING")
        return self

    def answers(self) -> bool:
        """Whether it answers PING with PONG right now."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError((self.directory / "redis.log").read_text())
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop it and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)
        self.process = None
