"""An S3-compatible server on loopback for the s3 backend's tests: moto in server mode."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import httpx

KEY_ID = "AKIATESTKEYID000"
SECRET = "test-secret-that-must-never-travel"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running moto server and one empty bucket in it."""

    endpoint: str
    bucket: str

    def env(self) -> dict[str, str]:
        """The standard AWS variables a process needs to use the server's bucket."""
        return {
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self) -> Any:
        """A boto3 client of the server, with the test credentials."""
        return boto3.session.Session(
            aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, region_name=REGION
        ).client("s3", endpoint_url=self.endpoint)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under `prefix` (complete objects only)."""
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", ())]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def moto_server(deadline: float = 30.0) -> Iterator[S3Server]:
    """Start `python -m moto.server` on a free loopback port, wait until it answers, make
    a bucket; stop the server at the end."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        until = time.monotonic() + deadline
        while True:
            try:
                httpx.get(endpoint + "/moto-api/reset", timeout=1.0)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > until:
                    raise RuntimeError(f"moto server did not start on {endpoint}") from None
                time.sleep(0.05)  # polling a condition with a deadline, not a fixed wait
        server = S3Server(endpoint, "proxy-files")
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
