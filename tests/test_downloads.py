"""Files through the proxy in process: only under a name GitLab gave, to whoever GitLab let read."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.cache import Store
from proxy.storage import HIT_CHUNK
from tests.inproc import (
    GITLAB,
    Serve,
    gitlab_page,
    in_process,
    memory_hits,
    no_package_api,
)

pytestmark = pytest.mark.anyio

API = "/api/v4/projects/42/packages/pypi"
WHEEL_NAME = "my_pkg-1.0-py3-none-any.whl"
WHEEL = b"PK\x03\x04" + bytes(range(256)) * 40
SHA = hashlib.sha256(WHEEL).hexdigest()
FILE = f"{API}/files/{SHA}/{WHEEL_NAME}"
PAGE = f"{API}/simple/my-pkg/"
PASSTHROUGH = {"access.mode": "passthrough"}


def basic(user: str, password: str) -> dict[str, str]:
    """Headers with `Authorization: Basic user:password`."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def page_with(*filenames: str) -> bytes:
    """GitLab's page of my-pkg listing WHEEL under each of `filenames`."""
    anchors = "".join(
        f'<a href="{GITLAB}{API}/files/{SHA}/{name}#sha256={SHA}">{name}</a>' for name in filenames
    )
    return gitlab_page("my-pkg", anchors)


@pytest.mark.parametrize(
    "other_name", [WHEEL_NAME + ".metadata", "my_pkg-1.0.tar.gz", "other-1.0-py3-none-any.whl"]
)
async def test_a_cached_file_is_not_served_under_another_name(
    serve: Serve, gitlab_api: respx.MockRouter, other_name: str
) -> None:
    """Once a sha256 is cached, another file name for it is GitLab's 404, asked for once."""
    gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    other = f"{API}/files/{SHA}/{other_name}"
    head = gitlab_api.head(GITLAB + other).respond(404, json={"message": "404 Package Not Found"})
    # With core metadata on, `.metadata` is the proxy's own (tests/test_metadata.py).
    off = {"pages.metadata": "off"} if other_name.endswith(".metadata") else {}
    async with serve(off) as client:
        assert (await client.get(FILE)).content == WHEEL
        for _ in range(3):
            response = await client.get(other)
            assert response.status_code == 404
            assert WHEEL not in response.content
    assert head.call_count == 1


async def test_a_file_listed_under_two_names_is_served_under_both(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Every name GitLab's page gives a sha256 is a name it is served under, from the cache."""
    second = "my_pkg-1.0-py2.py3-none-any.whl"
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_with(WHEEL_NAME, second))
    gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    async with serve() as client:
        await client.get(PAGE)
        await client.get(FILE)
        response = await client.get(f"{API}/files/{SHA}/{second}")
    assert (response.status_code, response.headers["x-cache"]) == (200, "HIT")


async def test_random_credentials_on_a_public_project_leave_no_records(
    serve: Serve, gitlab_api: respx.MockRouter, tmp_path: Path
) -> None:
    """In passthrough, credentials GitLab gives nothing more than anyone create no page and
    no access record: the public page is kept once."""
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_with(WHEEL_NAME))
    async with serve(PASSTHROUGH) as client:
        for number in range(50):
            response = await client.get(PAGE, headers=basic("x", f"random-{number}"))
            assert response.status_code == 200
    held = Store(tmp_path / "cache", max_size=10**9).stats()
    assert held.pages == 1
    assert held.access_records <= 3  # salt, the public binding, its acceptance


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    passwords=st.lists(
        # A marked secret: a plain word ("filename") may be on disk for its own reasons.
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(
            lambda text: "pw-s3cr3t-" + text
        ),
        min_size=1,
        max_size=8,
    )
)
async def test_credential_keying_grows_only_with_what_gitlab_tells_apart(
    tmp_path_factory: pytest.TempPathFactory, passwords: list[str]
) -> None:
    """Whatever credentials ask for a public project's page and file, the records stay the
    same as for one anonymous client; none of the credentials appears on disk."""
    cache = tmp_path_factory.mktemp("cache")
    with respx.mock(assert_all_called=False) as router:
        no_package_api(router)
        router.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_with(WHEEL_NAME))
        router.get(GITLAB + FILE).respond(200, content=WHEEL)
        router.head(GITLAB + FILE).respond(200)
        async with in_process(cache, router)(PASSTHROUGH) as client:
            for password in passwords:
                headers = basic("user", password)
                assert (await client.get(PAGE, headers=headers)).status_code == 200
                assert (await client.get(FILE, headers=headers)).content == WHEEL
    held = Store(cache / "cache", max_size=10**9).stats()
    assert (held.pages, held.files) == (1, 1)
    assert held.access_records <= 4  # with the wheel's core metadata record (none here)
    on_disk = b"".join(p.read_bytes() for p in (cache / "cache").rglob("*") if p.is_file())
    for password in passwords:
        secret = base64.b64encode(f"user:{password}".encode())
        assert secret not in on_disk
        assert password.encode() not in on_disk


async def test_a_members_own_records_are_kept_where_anyone_gets_less(
    serve: Serve, gitlab_api: respx.MockRouter, tmp_path: Path
) -> None:
    """A credential that GitLab shows more than anyone (a private project) gets its own page."""
    auth = basic("alice", "glpat-alice")

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == auth["Authorization"]:
            return httpx.Response(200, content=page_with(WHEEL_NAME))
        return httpx.Response(401, json={"message": "401 Unauthorized"})

    route = gitlab_api.get(GITLAB + PAGE.rstrip("/")).mock(side_effect=answer)
    async with serve(PASSTHROUGH) as client:
        first = await client.get(PAGE, headers=auth)
        again = await client.get(PAGE, headers=auth)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
    assert route.call_count == 2  # alice's, and the anonymous one that GitLab refused
    assert Store(tmp_path / "cache", max_size=10**9).stats().pages == 1


async def test_a_metadata_name_without_its_own_record_is_never_the_wheel(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Even bound to the wheel's sha256 (as a followed page binds core metadata), a
    `.metadata` name with no record of its own hash is GitLab's 404, never the wheel."""
    metadata = f"{API}/files/{SHA}/{WHEEL_NAME}.metadata"
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(
        200, content=page_with(WHEEL_NAME, WHEEL_NAME + ".metadata")
    )
    gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    gitlab_api.head(GITLAB + metadata).respond(404)
    async with serve() as client:
        await client.get(PAGE)
        assert (await client.get(FILE)).content == WHEEL
        response = await client.get(metadata)
    assert response.status_code == 404
    assert WHEEL not in response.content


async def test_a_cached_range_across_read_chunks_is_exact(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """A HIT's Range spanning several read chunks brings exactly its bytes, and the whole
    file after it is intact."""
    big = bytes(range(251)) * (3 * HIT_CHUNK // 251 + 7)
    sha = hashlib.sha256(big).hexdigest()
    url = f"{API}/files/{sha}/big-1.0-py3-none-any.whl"
    gitlab_api.get(GITLAB + url).respond(200, content=big)
    start, last = HIT_CHUNK - 5, 2 * HIT_CHUNK + 9
    async with serve() as client:
        assert (await client.get(url)).content == big
        ranged = await client.get(url, headers={"Range": f"bytes={start}-{last}"})
        whole = await client.get(url)
    assert (ranged.status_code, ranged.headers["x-cache"]) == (206, "HIT")
    assert ranged.content == big[start : last + 1]
    assert whole.content == big


async def test_a_small_file_hit_again_comes_from_memory_until_a_file_is_dropped(
    serve: Serve, gitlab_api: respx.MockRouter, tmp_path: Path
) -> None:
    """The second hit on a small file is answered from memory; once the cache drops a file
    (here from another process's view of it), the next request goes back to GitLab."""
    gitlab_api.get(GITLAB + PAGE.rstrip("/")).respond(200, content=page_with(WHEEL_NAME))
    download = gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    async with serve() as client:
        await client.get(PAGE)
        caches = [(await client.get(FILE)).headers["x-cache"] for _ in range(3)]
        assert caches == ["MISS", "HIT", "HIT"]
        assert memory_hits((await client.get("/-/metrics")).text) == 1
        assert Store(tmp_path / "cache", max_size=10**9).remove(SHA)
        again = await client.get(FILE)
        assert (again.headers["x-cache"], again.content) == ("MISS", WHEEL)
        assert memory_hits((await client.get("/-/metrics")).text) == 1
    assert download.call_count == 2


async def test_a_file_in_memory_for_one_member_is_never_anothers(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Passthrough: alice's repeated hits come from memory; bob, whom GitLab refuses, gets
    GitLab's answer and no byte, however often he asks."""
    alice, bob = basic("alice", "glpat-alice"), basic("bob", "glpat-bob")

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == alice["Authorization"]:
            return httpx.Response(200, content=WHEEL)
        return httpx.Response(404, json={"message": "404 Package Not Found"})

    gitlab_api.get(GITLAB + FILE).mock(side_effect=answer)
    gitlab_api.head(GITLAB + FILE).mock(side_effect=answer)
    async with serve(PASSTHROUGH) as client:
        for _ in range(3):
            assert (await client.get(FILE, headers=alice)).content == WHEEL
        assert memory_hits((await client.get("/-/metrics")).text) >= 1
        for headers in (bob, {}, bob):
            response = await client.get(FILE, headers=headers)
            assert response.status_code == 404
            assert WHEEL not in response.content


async def test_a_passthrough_member_s_memory_hits_end_with_auth_ttl(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """With auth_ttl over, GitLab is asked again for every read: memory never outlives it."""
    alice = basic("alice", "glpat-alice")
    gitlab_api.get(GITLAB + FILE).respond(200, content=WHEEL)
    check = gitlab_api.head(GITLAB + FILE).respond(200)
    async with serve({**PASSTHROUGH, "access.auth_ttl": 0}) as client:
        for _ in range(4):
            assert (await client.get(FILE, headers=alice)).content == WHEEL
        assert memory_hits((await client.get("/-/metrics")).text) == 0
    assert check.call_count >= 3  # each read after the first asked GitLab
