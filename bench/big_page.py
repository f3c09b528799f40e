"""Big-page benchmark: a 50,000-link simple page parsed, rendered and served to a crowd.

Run from the repository with the test venv: `.venv/bin/python bench/big_page.py`.
First the codec alone, in this process (best of three): parse GitLab's HTML page, render
it as HTML and as JSON, pickle and unpickle it as the Store does. Then a real proxy in
front of the fake GitLab: one client fetches the page (MISS), then N clients fetch it
together (HIT), while another process polls /-/health and records its slowest answer (how
long the event loop was held), and the proxy's memory is sampled.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import httpx
from harness import DEV_TOKEN, MB, PROJECT, gitlab_and_proxy, measuring, pid_of

from proxy import pagerender, pages
from proxy.cache import StoredPage
from proxy.models import Page
from tests import fakepages
from tests.clients import slowest_answer

GITLAB = "https://gitlab.example.com"
FILES_PER_VERSION = 100  # the fake GitLab's add_file looks packages up one by one


def gitlab_page(links: int) -> bytes:
    """GitLab's HTML page of one project with `links` wheels."""
    base = f"{GITLAB}/api/v4/projects/{PROJECT}/packages/pypi/files"
    anchors = []
    for i in range(links):
        sha = hashlib.sha256(str(i).encode()).hexdigest()
        name = f"big-1.{i}-py3-none-any.whl"
        anchors.append(fakepages.anchor(f"{base}/{sha}/{name}#sha256={sha}", ">=3.8", name))
    return fakepages.html("big", anchors)


def best(label: str, call: Callable[[], object], runs: int = 3) -> object:
    """Run `call` `runs` times and print the fastest."""
    fastest, result = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        result = call()
        fastest = min(fastest, time.perf_counter() - started)
    print(f"  {label}: {fastest * 1000:.0f} ms")
    return result


def codec(links: int) -> None:
    """Time the page codec and the Store's pickling of one big page."""
    body = gitlab_page(links)
    print(f"codec, {links} links, {len(body) / MB:.1f} MB of HTML:")
    page = best(
        "parse",
        lambda: pages.parse(
            body,
            content_type="text/html",
            page_url=f"{GITLAB}/api/v4/projects/{PROJECT}/packages/pypi/simple/big",
            upstream_url=GITLAB,
            kind="project",
        ),
    )
    assert isinstance(page, Page)
    assert len(page.links) == links
    best("render HTML", lambda: pagerender.render(page, base_url="http://proxy"))
    as_json = replace(page, json=True)
    best("render JSON", lambda: pagerender.render(as_json, base_url="http://proxy"))
    blob = pickle.dumps(StoredPage(page, 0.0, ""), pickle.HIGHEST_PROTOCOL)
    best("pickle (Store.put_page)", lambda: pickle.dumps(StoredPage(page, 0.0, "")))
    best("unpickle (Store.get_page)", lambda: pickle.loads(blob))
    try:
        from proxy.rendered import digest
    except ImportError:  # before proxy/rendered.py
        return
    best("digest (Renderer's key)", lambda: digest(page))


def served(links: int, clients: int) -> None:
    """Time a proxy process serving the big page, once and then to `clients` at once."""
    with gitlab_and_proxy(max_file_size=MB, proxy_token=DEV_TOKEN) as (gitlab, proxy):
        for i in range(links):
            version = f"1.{i // FILES_PER_VERSION}"
            gitlab.add_file(PROJECT, "big", version, f"big-{version}-{i}-py3-none-any.whl", b"x")
        pid = pid_of(proxy)
        url = f"{proxy.url}/api/v4/projects/{PROJECT}/packages/pypi/simple/big"
        httpx.get(f"{proxy.url}/-/health").raise_for_status()  # warm-up
        bodies: list[int] = []

        def fetch() -> None:
            response = httpx.get(url, timeout=600)
            assert response.status_code == 200, response.status_code
            bodies.append(len(response.content))

        for label, crowd in (("first fetch (MISS)", 1), (f"{clients} clients (HIT)", clients)):
            threads = [threading.Thread(target=fetch) for _ in range(crowd)]
            with (
                slowest_answer(f"{proxy.url}/-/health") as slowest,
                measuring(label, pid, 0) as result,
            ):
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            measured = result[0]
            print(f"{label}: {measured.seconds:.2f} s, slowest /-/health {slowest[0]:.3f} s")
            print(
                f"  proxy RSS: baseline {measured.before / 2**20:.0f} MiB, "
                f"peak {measured.peak / 2**20:.0f} MiB, after {measured.after / 2**20:.0f} MiB"
            )
        assert len(set(bodies)) == 1, bodies
        print(f"  page: {bodies[0] / MB:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=50_000, help="links (default: 50000)")
    parser.add_argument("--clients", type=int, default=10, help="clients (default: 10)")
    args = parser.parse_args()
    codec(args.links)
    served(args.links, args.clients)


if __name__ == "__main__":
    main()
