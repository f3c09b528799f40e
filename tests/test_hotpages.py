"""HotPages: rendered pages sent from memory on a hit, while fresh and while nothing changed."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import httpx
import pytest
import respx

from proxy.changes import Changes
from proxy.hotpages import Hot, HotKey, HotPages
from proxy.rendered import Rendering
from tests.distfactory import make_wheel
from tests.inproc import GITLAB, Serve, gitlab_page

API = "/api/v4/projects/42/packages/pypi"
PAGE = f"{API}/simple/my-pkg/"
PAGE_URL = GITLAB + API + "/simple/my-pkg"
HTML = {"content-type": "text/html; charset=utf-8"}
KEY = HotKey("projects/42", "my-pkg", "html", "http://proxy", "identity")


def rendering(size: int = 10) -> Rendering:
    """A rendering with a body of `size` bytes."""
    return Rendering(b"x" * size, "text/html", '"e"')


def page(*files: str) -> bytes:
    """GitLab's page of my-pkg listing `files` (each with a made-up sha256)."""
    anchors = "".join(
        f'<a href="{GITLAB}{API}/files/{sha}/{name}#sha256={sha}">{name}</a>'
        for sha, name in ((hashlib.sha256(n.encode()).hexdigest(), n) for n in files)
    )
    return gitlab_page("my-pkg", anchors)


async def memory_hits(client: httpx.AsyncClient) -> float:
    """The proxy's count of pages sent from memory."""
    text = (await client.get("/-/metrics")).text
    found = re.search(r"^gitlab_pypi_proxy_page_memory_hits_total ([0-9.]+)$", text, re.M)
    assert found is not None
    return float(found.group(1))


# -- the memory itself ----------------------------------------------------------------------


def test_a_kept_rendering_is_given_back_while_fresh(tmp_path: Path) -> None:
    """Before its freshness ends and with no change marked, the kept rendering is a hit."""
    changes = Changes(tmp_path / "changes")
    hits: list[None] = []
    hot = HotPages(changes, on_hit=lambda: hits.append(None))
    hot.keep(KEY, Hot(rendering(), 100.0, hot.stamp("my-pkg")))
    found = hot.get(KEY, 99.0)
    assert found is not None
    assert (found.rendering, len(hits)) == (rendering(), 1)


def test_a_rendering_past_its_freshness_is_dropped(tmp_path: Path) -> None:
    """Once its stored page's freshness ends, a rendering is no hit and no longer held."""
    hot = HotPages(Changes(tmp_path / "changes"))
    hot.keep(KEY, Hot(rendering(), 100.0, hot.stamp("my-pkg")))
    assert hot.get(KEY, 100.0) is None
    assert hot.held_bytes == 0


def test_a_change_marked_after_the_stamp_ends_the_rendering(tmp_path: Path) -> None:
    """A change to the pages of its name, marked through any mapping, ends a rendering."""
    hot = HotPages(Changes(tmp_path / "changes"))
    hot.keep(KEY, Hot(rendering(), 100.0, hot.stamp("my-pkg")))
    Changes(tmp_path / "changes").pages("my-pkg")
    assert hot.get(KEY, 0.0) is None


def test_renderings_stay_within_the_byte_bound_least_recently_used_first(tmp_path: Path) -> None:
    """Beyond max_bytes the least recently used rendering goes, and one above it is not kept."""
    hot = HotPages(Changes(tmp_path / "changes"), max_bytes=25)
    keys = [HotKey("o", f"p{n}", "html", "b", "identity") for n in range(3)]
    for key in keys[:2]:
        hot.keep(key, Hot(rendering(), 100.0, hot.stamp(key.name)))
    assert hot.get(keys[0], 0.0) is not None
    hot.keep(keys[2], Hot(rendering(), 100.0, hot.stamp(keys[2].name)))
    hot.keep(KEY, Hot(rendering(26), 100.0, hot.stamp(KEY.name)))
    found = [hot.get(key, 0.0) is not None for key in [*keys, KEY]]
    assert (found, hot.held_bytes) == ([True, False, True, False], 20)


# -- through the proxy ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_second_hit_is_sent_from_memory_with_the_same_bytes_and_validators(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """After a hit from the store, the next hit comes from memory, byte for byte the same,
    with its ETag (a 304 for If-None-Match) and coding; GitLab is asked once."""
    route = gitlab_api.get(PAGE_URL).respond(
        200, content=page(*(f"w{n}.whl" for n in range(40))), headers=HTML
    )
    headers = {"accept-encoding": "gzip"}
    async with serve() as client:
        await client.get(PAGE, headers=headers)
        stored = await client.get(PAGE, headers=headers)
        before = await memory_hits(client)
        hot = await client.get(PAGE, headers=headers)
        etag = {"if-none-match": hot.headers["etag"], **headers}
        unmodified = await client.get(PAGE, headers=etag)
        after = await memory_hits(client)
    assert (after - before, route.call_count) == (2, 1)
    assert (hot.headers["x-cache"], hot.content) == ("HIT", stored.content)
    for name in ("etag", "content-encoding", "vary"):
        assert hot.headers[name] == stored.headers[name]
    assert unmodified.status_code == 304


@pytest.mark.anyio
async def test_an_upload_through_another_worker_is_seen_at_once(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A page held in memory by one worker is not sent again once another worker's upload
    of its name dropped the stored pages: the next request asks GitLab."""
    gitlab_api.get(PAGE_URL).mock(
        side_effect=[
            httpx.Response(200, content=page("a.whl"), headers=HTML),
            httpx.Response(200, content=page("a.whl", "b.whl"), headers=HTML),
        ]
    )
    gitlab_api.post(GITLAB + API).respond(201)
    form = b'--x\r\nContent-Disposition: form-data; name="name"\r\n\r\nmy-pkg\r\n--x--\r\n'
    upload = {"content-type": "multipart/form-data; boundary=x", "authorization": "Basic eDp5"}
    async with serve() as one, serve() as other:
        for _ in range(3):
            await one.get(PAGE)
        assert (await other.post(API, content=form, headers=upload)).status_code == 201
        after = await one.get(PAGE)
    assert (after.headers["x-cache"], "b.whl" in after.text) == ("MISS", True)


@pytest.mark.anyio
async def test_a_page_shows_core_metadata_as_soon_as_its_wheel_is_held(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A page held in memory is rendered again once its wheel is held: it then advertises
    the wheel's core metadata."""
    filename, data = make_wheel("my-pkg", "1.0")
    sha = hashlib.sha256(data).hexdigest()
    href = f"{GITLAB}{API}/files/{sha}/{filename}#sha256={sha}"
    gitlab_page_bytes = gitlab_page("my-pkg", f'<a href="{href}">{filename}</a>')
    gitlab_api.get(PAGE_URL).respond(200, content=gitlab_page_bytes, headers=HTML)
    gitlab_api.get(f"{GITLAB}{API}/files/{sha}/{filename}").respond(200, content=data)
    async with serve() as client:
        for _ in range(3):
            assert "data-core-metadata" not in (await client.get(PAGE)).text
        assert (await client.get(f"{API}/files/{sha}/{filename}")).content == data
        after = await client.get(PAGE)
    assert "data-core-metadata" in after.text


@pytest.mark.anyio
async def test_a_wheel_of_another_project_held_leaves_a_page_in_memory(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A fill of another project's wheel does not end this page's rendering in memory (a
    resolver's downloads would otherwise send every page back to the store)."""
    gitlab_api.get(PAGE_URL).respond(200, content=page("my_pkg-1.0-py3-none-any.whl"), headers=HTML)
    filename, data = make_wheel("other-pkg", "1.0")
    sha = hashlib.sha256(data).hexdigest()
    gitlab_api.get(f"{GITLAB}{API}/files/{sha}/{filename}").respond(200, content=data)
    async with serve() as client:
        await client.get(PAGE)
        await client.get(PAGE)  # now in memory
        assert (await client.get(f"{API}/files/{sha}/{filename}")).content == data
        before = await memory_hits(client)
        await client.get(PAGE)
        after = await memory_hits(client)
    assert after - before == 1


@pytest.mark.anyio
async def test_a_page_in_memory_never_reaches_another_owner(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Passthrough: what GitLab gave one client's credentials, held in memory, is never sent
    to another client's: each gets GitLab's answer to it."""

    def answer(request: httpx.Request) -> httpx.Response:
        user = request.headers.get("authorization", "")
        if not user:
            return httpx.Response(404)
        who = base64.b64decode(user.split()[1]).decode().partition(":")[0]
        return httpx.Response(200, content=page(f"{who}.whl"), headers=HTML)

    gitlab_api.get(PAGE_URL).mock(side_effect=answer)
    alice, bob = (
        {"authorization": f"Basic {base64.b64encode(f'{u}:pw'.encode()).decode()}"}
        for u in ("alice", "bob")
    )
    async with serve({"access.mode": "passthrough"}) as client:
        seen = [await client.get(PAGE, headers=alice) for _ in range(3)]
        other = await client.get(PAGE, headers=bob)
        hits = await memory_hits(client)
    assert ["alice.whl" in r.text for r in seen] == [True, True, True]
    assert hits == 1
    assert ("bob.whl" in other.text, "alice.whl" in other.text) == (True, False)
