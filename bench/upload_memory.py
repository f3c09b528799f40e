"""Upload benchmark: a 200 MB twine-style upload through the proxy, and the proxy's memory.

Run from the repository with the test venv: `.venv/bin/python bench/upload_memory.py`.
The multipart body is generated in 1 MiB chunks as it is sent, never held whole by the
client; the fake GitLab (in this process) keeps what it receives in memory, which does
not count: only the proxy process is measured.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
from collections.abc import Iterator

import httpx
from harness import (
    DEV_TOKEN,
    DEV_USER,
    MB,
    PROJECT,
    MiB,
    gitlab_and_proxy,
    measuring,
    pid_of,
)

BOUNDARY = "bench-boundary-8a1f0c2e9d4b"


def content_chunks(size: int, seed: bytes) -> Iterator[bytes]:
    """`size` bytes of incompressible data, 1 MiB at a time, the same for the same seed."""
    block = hashlib.sha256(seed).digest() * (MiB // 32)
    sent = 0
    while sent < size:
        # A counter in each chunk, so that no two chunks are alike.
        chunk = (sent.to_bytes(8, "big") + block[8:])[: size - sent]
        sent += len(chunk)
        yield chunk


class Upload:
    """A twine-style multipart/form-data body: fields first, then the file (`content`)."""

    def __init__(self, name: str, version: str, size: int) -> None:
        self.filename = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
        self.size = size
        self.seed = os.urandom(16)
        digest = hashlib.sha256()
        for chunk in content_chunks(size, self.seed):
            digest.update(chunk)
        fields = {
            ":action": "file_upload",
            "protocol_version": "1",
            "metadata_version": "2.1",
            "name": name,
            "version": version,
            "filetype": "bdist_wheel",
            "pyversion": "py3",
            "sha256_digest": digest.hexdigest(),
        }
        head = "".join(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
            for key, value in fields.items()
        )
        head += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="content"; '
            f'filename="{self.filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        self.head = head.encode()
        self.tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.length = len(self.head) + size + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        yield from content_chunks(self.size, self.seed)
        yield self.tail


def upload(url: str, body: Upload) -> httpx.Response:
    """POST the body as twine does (Basic auth, a known Content-Length), streamed."""
    credentials = base64.b64encode(f"{DEV_USER}:{DEV_TOKEN}".encode()).decode()
    headers = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(body.length),
        "Authorization": f"Basic {credentials}",
    }
    with httpx.Client(timeout=600) as client:
        return client.post(url, content=iter(body), headers=headers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200, help="upload size (default: 200)")
    args = parser.parse_args()
    size = args.size_mb * MB
    with gitlab_and_proxy(max_file_size=size + MB) as (gitlab, proxy):
        url = f"{proxy.url}/api/v4/projects/{PROJECT}/packages/pypi"
        warm = upload(url, Upload("warm-up", "1.0", MB))  # first request: imports, pools
        assert warm.status_code == 201, warm.text
        body = Upload("big-upload", "1.0", size)
        with measuring("upload", pid_of(proxy), body.length) as result:
            answer = upload(url, body)
        assert answer.status_code == 201, f"{answer.status_code} {answer.text}"
        assert gitlab.upload_bytes_received >= size, gitlab.upload_bytes_received
        (stored,) = [f for f in gitlab.files(PROJECT) if f.filename == body.filename]
        assert len(stored.content) == size, len(stored.content)
        print(result[0].report())


if __name__ == "__main__":
    main()
