"""Renderer: pages parsed and rendered in worker threads, renderings reused while pages stay."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from proxy import pagerender
from proxy.models import Link, Page
from proxy.rendered import Renderer, digest
from tests.clients import slowest_answer
from tests.fakegitlab import FakeGitLab
from tests.scenario import SERVICE, Start, acme, serve

pytestmark = pytest.mark.anyio

API = "/api/v4/projects/42/packages/pypi"
PROXY = "http://127.0.0.1:8080"


def wheel(n: int) -> Link:
    """A file link whose sha256 is n in hex."""
    return Link(f"{API}/files/{n:064x}/w-{n}-py3-none-any.whl", f"w-{n}-py3-none-any.whl", "")


PAGE = Page("Links for w", (wheel(1), wheel(2)))


class CountingRender:
    """pagerender.render, counting its calls and the threads it ran in."""

    def __init__(self) -> None:
        self.calls = 0
        self.threads: set[int] = set()

    def __call__(self, page: Page, *, base_url: str) -> tuple[bytes, str]:
        self.calls += 1
        self.threads.add(threading.get_ident())
        return pagerender.render(page, base_url=base_url)


async def test_a_page_is_rendered_once_for_two_hits() -> None:
    """Two renderings of one page with one base URL share one rendering, byte object and all."""
    render = CountingRender()
    renderer = Renderer(render=render)
    first = await renderer.render(PAGE, base_url=PROXY)
    second = await renderer.render(replace(PAGE, links=tuple(PAGE.links)), base_url=PROXY)
    assert render.calls == 1
    assert second.body is first.body


async def test_a_coding_is_made_once_and_kept_with_the_rendering() -> None:
    """Two gzip renderings of one page share one rendering and one gzip body."""
    render = CountingRender()
    renderer = Renderer(render=render)
    big = Page("Links for w", tuple(wheel(n) for n in range(20)))
    first = await renderer.render(big, base_url=PROXY, coding="gzip")
    second = await renderer.render(big, base_url=PROXY, coding="gzip")
    plain = await renderer.render(big, base_url=PROXY)
    assert (render.calls, first.coding) == (1, "gzip")
    assert second.body is first.body
    assert renderer.held_bytes == len(first.body) + len(plain.body)


async def test_a_changed_page_is_rendered_again() -> None:
    """Once the page's content changes, its rendering is made anew."""
    render = CountingRender()
    renderer = Renderer(render=render)
    before = (await renderer.render(PAGE, base_url=PROXY)).body
    after = (await renderer.render(replace(PAGE, links=(wheel(1),)), base_url=PROXY)).body
    assert render.calls == 2
    assert after == pagerender.render(Page("Links for w", (wheel(1),)), base_url=PROXY)[0] != before


async def test_another_base_url_gets_its_own_rendering() -> None:
    """The same page for another base URL is rendered with that URL."""
    renderer = Renderer()
    await renderer.render(PAGE, base_url=PROXY)
    body = (await renderer.render(PAGE, base_url="https://proxy.example.com")).body
    assert body == pagerender.render(PAGE, base_url="https://proxy.example.com")[0]


async def test_an_only_held_rendering_follows_what_is_held() -> None:
    """With `held`, only held files are listed, and a change in what is held shows."""
    renderer = Renderer()
    held = {f"{1:064x}"}
    only_one = await renderer.render(PAGE, base_url=PROXY, held=lambda shas: frozenset(shas & held))
    held.add(f"{2:064x}")
    both = await renderer.render(PAGE, base_url=PROXY, held=lambda shas: frozenset(shas & held))
    assert (
        only_one.body == pagerender.render(PAGE.only(frozenset({f"{1:064x}"})), base_url=PROXY)[0]
    )
    assert both.body == pagerender.render(PAGE, base_url=PROXY)[0]


async def test_kept_renderings_stay_within_the_byte_bound() -> None:
    """However many pages are rendered, the renderings kept never pass max_bytes in all."""
    size = len(pagerender.render(PAGE, base_url=PROXY)[0])
    renderer = Renderer(max_bytes=3 * size)
    for n in range(20):
        await renderer.render(PAGE, base_url=f"http://proxy-{n:02d}.test")
        assert renderer.held_bytes <= 3 * size
    assert renderer.held_bytes > 2 * size


async def test_the_least_recently_used_rendering_goes_first() -> None:
    """At the bound, the rendering used longest ago is dropped and a recently used one kept."""
    render = CountingRender()
    size = len(pagerender.render(PAGE, base_url="http://a.test")[0])
    renderer = Renderer(max_bytes=2 * size, render=render)
    for host in ("a", "b", "a", "c", "a", "b"):
        await renderer.render(PAGE, base_url=f"http://{host}.test")
    assert render.calls == 4  # a, b, c, then b again: a was kept as the most recently used


async def test_a_rendering_above_the_bound_is_not_kept() -> None:
    """A page whose rendering alone passes max_bytes is rendered each time and never kept."""
    render = CountingRender()
    renderer = Renderer(max_bytes=10, render=render)
    for _ in range(2):
        await renderer.render(PAGE, base_url=PROXY)
    assert (render.calls, renderer.held_bytes) == (2, 0)


async def test_rendering_runs_in_a_worker_thread() -> None:
    """The event loop's thread never renders."""
    render = CountingRender()
    await Renderer(render=render).render(PAGE, base_url=PROXY)
    assert threading.get_ident() not in render.threads


async def test_parse_gives_pages_parse_result() -> None:
    """Renderer.parse is pages.parse (run in a worker thread)."""
    body = pagerender.render(PAGE, base_url="https://gitlab.example.com")[0]
    page_url = f"https://gitlab.example.com{API}/simple/w"
    parsed = await Renderer().parse(
        body,
        content_type=pagerender.HTML_TYPE,
        page_url=page_url,
        upstream_url="https://gitlab.example.com",
        kind="project",
    )
    assert parsed == PAGE


@pytest.mark.parametrize(
    "other",
    [
        replace(PAGE, title="Links for v"),
        replace(PAGE, json=True),
        replace(PAGE, kind="index"),
        replace(PAGE, links=(wheel(2), wheel(1))),
        replace(PAGE, links=(replace(wheel(1), fragment="sha256=" + "0" * 64), wheel(2))),
        replace(PAGE, links=(replace(wheel(1), attrs=(("data-yanked", ""),)), wheel(2))),
        replace(PAGE, links=(replace(wheel(1), text="w"), wheel(2))),
    ],
    ids=["title", "json", "kind", "order", "fragment", "attrs", "text"],
)
def test_pages_that_render_differently_have_different_digests(other: Page) -> None:
    """Anything render reads, changed, changes the digest."""
    assert digest(other) != digest(PAGE)


@pytest.mark.e2e
def test_health_answers_while_a_big_page_is_fetched_and_served(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """/-/health answers within half a second (or a quarter of the page's own time, on a
    machine busy enough to slow both) while a 50,000-link page is fetched from GitLab and
    then served to five clients at once."""
    acme(gitlab)
    for i in range(50_000):
        version = f"1.{i // 100}"  # the fake GitLab finds a package by a linear search
        gitlab.add_file(42, "big", version, f"big-{version}-{i}-py3-none-any.whl", b"x")
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    url = f"{proxy.url}{API}/simple/big"
    with ThreadPoolExecutor(5) as pool, slowest_answer(f"{proxy.url}/-/health") as slowest:
        started = time.monotonic()
        first = httpx.get(url, timeout=120)
        crowd = list(pool.map(lambda _: httpx.get(url, timeout=120), range(5)))
        took = time.monotonic() - started
    assert [(r.status_code, r.headers["x-cache"]) for r in [first, *crowd]] == [(200, "MISS")] + [
        (200, "HIT")
    ] * 5
    assert first.text.count("<a href=") == 50_000
    assert all(r.content == first.content for r in crowd)
    assert slowest[0] < max(0.5, took / 4), (slowest[0], took)
