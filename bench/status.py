"""Status-page benchmark: server time of `GET /` (HTML and JSON) beside `/-/health`.

Run from the repository with the test venv: `.venv/bin/python bench/status.py`.
The app runs in process (no HTTP server, no GitLab: the page asks GitLab nothing) over
a cache holding SCOPES x PAGES pages; each request is one call of the ASGI app, timed
after a warm-up. Prints the median and 90th percentile per kind of request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from asgi_lifespan import LifespanManager
from starlette.types import Message, Scope

from proxy.app import create_app
from proxy.cache import Store, StoredPage
from proxy.config import load
from proxy.models import Link, Page


def fill(directory: Path, scopes: int, pages: int) -> None:
    """Store `pages` one-link pages in each of `scopes` projects."""
    store = Store(directory, max_size=20 * 1024**3)
    for scope in range(scopes):
        for n in range(pages):
            key = Store.page_key(f"projects/{scope}", f"pkg-{n}", "html")
            page = Page(f"pkg-{n}", (Link("/api/v4/x", "x"),))
            store.put_page(key, StoredPage(page, time.time()), name=f"pkg-{n}")
    store.close()


async def measure(directory: Path, requests: int) -> None:
    settings = load(
        env={}, overrides={"upstream.url": "http://127.0.0.1:9", "cache.dir": str(directory)}
    )
    async with LifespanManager(create_app(settings)) as manager:
        app = manager.app

        async def call(path: str, headers: list[tuple[bytes, bytes]]) -> float:
            async def receive() -> Message:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: Message) -> None:
                pass

            scope: Scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
                "headers": [(b"host", b"proxy.test"), *headers], "server": ("proxy.test", 80),
            }  # fmt: skip
            started = time.perf_counter()
            await app(scope, receive, send)
            return time.perf_counter() - started

        kinds = {
            "GET / (HTML)": ("/", []),
            "GET / (JSON)": ("/", [(b"accept", b"application/json")]),
            "GET /-/health": ("/-/health", []),
        }
        for label, (path, headers) in kinds.items():
            for _ in range(50):
                await call(path, headers)
            times = sorted([await call(path, headers) for _ in range(requests)])
            median, p90 = statistics.median(times), times[int(len(times) * 0.9)]
            print(f"{label:15} median {median * 1e3:.3f} ms, p90 {p90 * 1e3:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scopes", type=int, default=50)
    parser.add_argument("--pages", type=int, default=40, help="pages per scope")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        fill(Path(directory), args.scopes, args.pages)
        asyncio.run(measure(Path(directory), args.requests))


if __name__ == "__main__":
    main()
