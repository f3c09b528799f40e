"""Cold range benchmark: a 64 KiB tail and a HEAD of a big uncached wheel, through the proxy
and directly against the fake GitLab (optionally redirecting to its object storage).

Run from the repository with the test venv: `.venv/bin/python bench/cold_range.py`.
Each run uses a new file, so every proxy request is cold (nothing cached, no fill running);
the proxy's fill of the whole file goes on in the background and is not waited for.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import httpx
from harness import DEV_TOKEN, DEV_USER, MB, PROJECT, gitlab_and_proxy

from proxy.upstream import basic_authorization

TAIL = 65536


def timed(method: str, url: str, headers: dict[str, str]) -> tuple[float, httpx.Response]:
    """One request (redirects followed, Authorization dropped across origins), in ms."""
    started = time.perf_counter()
    response = httpx.request(method, url, headers=headers, follow_redirects=True, timeout=600)
    return (time.perf_counter() - started) * 1000, response


def cached(url: str) -> None:
    """Wait until the proxy's fill of `url` is in its cache (a HEAD says HIT)."""
    deadline = time.monotonic() + 600
    while httpx.head(url, timeout=60).headers["x-cache"] != "HIT":
        assert time.monotonic() < deadline, "the fill never reached the cache"
        time.sleep(0.05)  # polling a condition with a deadline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100, help="wheel size (default: 100)")
    parser.add_argument("--runs", type=int, default=3, help="files, one per run (default: 3)")
    parser.add_argument(
        "--object-storage",
        action="store_true",
        help="redirect downloads to the fake object storage (it hashes the whole file for its"
        " ETag on every request, which then dominates both paths)",
    )
    args = parser.parse_args()
    size = args.size_mb * MB
    auth = basic_authorization(DEV_USER, DEV_TOKEN)
    times: dict[str, list[float]] = {}
    with gitlab_and_proxy(max_file_size=size + MB, proxy_token=DEV_TOKEN) as (gitlab, proxy):
        gitlab.redirect_downloads = args.object_storage
        base = os.urandom(size)
        for run in range(args.runs + 1):  # run 0 warms imports and pools, not counted
            filename = f"cold_range-{run}.0-py3-none-any.whl"
            content = run.to_bytes(4, "big") + base[4:]
            sha256 = gitlab.add_file(PROJECT, "cold-range", f"{run}.0", filename, content)
            path = f"/api/v4/projects/{PROJECT}/packages/pypi/files/{sha256}/{filename}"
            ranged = {"Range": f"bytes=-{TAIL}"}
            for label, method, url, headers in (
                ("direct HEAD", "HEAD", gitlab.url + path, {"Authorization": auth}),
                ("direct tail", "GET", gitlab.url + path, {**ranged, "Authorization": auth}),
                ("proxy HEAD (cold)", "HEAD", proxy.url + path, {}),
                ("proxy tail (cold)", "GET", proxy.url + path, ranged),
            ):
                elapsed, response = timed(method, url, headers)
                if method == "GET":
                    assert response.status_code == 206, response.status_code
                    assert response.content == content[-TAIL:]
                else:
                    assert int(response.headers["content-length"]) == size
                if run:
                    times.setdefault(label, []).append(elapsed)
            cached(proxy.url + path)  # the next run starts with no fill running

    print(f"{args.size_mb} MB wheel, {args.runs} cold runs, median (min-max) ms:")
    for label, values in times.items():
        print(
            f"  {label:20} {statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"
        )


if __name__ == "__main__":
    main()
