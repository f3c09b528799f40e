"""Download benchmark: a 100 MB file through the proxy, cold (MISS) then warm (HIT).

Run from the repository with the test venv: `.venv/bin/python bench/download.py`.
The client streams and hashes the body, so it holds no more than a chunk; the fake
GitLab (in this process) serves the file from memory. Only the proxy is measured.
"""

from __future__ import annotations

import argparse
import hashlib
import os

import httpx
from harness import DEV_TOKEN, MB, PROJECT, Measured, gitlab_and_proxy, measuring, pid_of


def fetch(url: str, sha256: str, expected: str, pid: int, size: int) -> Measured:
    """GET the file, check its X-Cache, length and hash, and measure the proxy meanwhile."""
    digest = hashlib.sha256()
    received = 0
    with (
        measuring(f"download {expected}", pid, size) as result,
        httpx.stream("GET", url, timeout=600) as response,
    ):
        assert response.status_code == 200, response.status_code
        assert response.headers["x-cache"] == expected, response.headers["x-cache"]
        for chunk in response.iter_bytes(1024 * 1024):
            digest.update(chunk)
            received += len(chunk)
    assert received == size, received
    assert digest.hexdigest() == sha256
    return result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100, help="file size (default: 100)")
    args = parser.parse_args()
    size = args.size_mb * MB
    with gitlab_and_proxy(max_file_size=size + MB, proxy_token=DEV_TOKEN) as (gitlab, proxy):
        pid = pid_of(proxy)
        files = f"{proxy.url}/api/v4/projects/{PROJECT}/packages/pypi/files"
        # A 1 MB file through both paths first, so that imports and pools are not counted.
        small = gitlab.add_file(PROJECT, "warm-up", "1.0", "warm_up-1.0.tar.gz", os.urandom(MB))
        for expected in ("MISS", "HIT"):
            fetch(f"{files}/{small}/warm_up-1.0.tar.gz", small, expected, pid, MB)
        filename = "big_download-1.0-py3-none-any.whl"
        sha256 = gitlab.add_file(PROJECT, "big-download", "1.0", filename, os.urandom(size))
        for expected in ("MISS", "HIT"):
            print(fetch(f"{files}/{sha256}/{filename}", sha256, expected, pid, size).report())
        assert gitlab.counts["file"] == 2, gitlab.counts  # one upstream fetch per file


if __name__ == "__main__":
    main()
