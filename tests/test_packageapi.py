"""GitLab's package API: listings asked once per search term and credentials, kept briefly."""

from __future__ import annotations

import anyio
import httpx
import pytest
import respx

from proxy.models import Scope, normalize
from proxy.packageapi import PER_PAGE, PackageAPI, search_term
from proxy.upstream import GitLab, basic_authorization

pytestmark = pytest.mark.anyio
BASE = "https://git.example.com/gitlab"
LISTING = BASE + "/api/v4/projects/42/packages"
SCOPE = Scope("projects", "42")
ALICE = basic_authorization("alice", "alice-token")
BOB = basic_authorization("bob", "bob-token")
PACKAGES = [
    {"id": 5, "name": "My_Pkg", "version": "1.0", "package_type": "pypi"},
    {"id": 6, "name": "pkg", "version": "2.0", "package_type": "pypi"},
]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _api(clock: Clock | None = None) -> PackageAPI:
    upstream = GitLab(url=BASE, connect_timeout=1.0, read_timeout=1.0)
    return PackageAPI(upstream=upstream, budget=1.0, clock=clock or Clock())


@pytest.mark.parametrize(
    ("name", "term"), [("my-pkg", "pkg"), ("pkg", "pkg"), ("bench-dep-0", "bench")]
)
def test_the_search_term_is_the_longest_part_of_the_name(name: str, term: str) -> None:
    """GitLab matches package_name as a substring of the name as uploaded."""
    assert search_term(normalize(name)) == term


@respx.mock
async def test_names_sharing_a_search_term_share_one_listing() -> None:
    """my-pkg and pkg are both found by "pkg": the second is answered from the first listing,
    each with only its own packages."""
    route = respx.get(LISTING).respond(200, json=PACKAGES)
    api = _api()
    mine = await api.packages(SCOPE, normalize("my-pkg"), ALICE)
    theirs = await api.packages(SCOPE, normalize("pkg"), ALICE)
    assert [(p.id, p.version) for p in mine] == [(5, "1.0")]
    assert [(p.id, p.version) for p in theirs] == [(6, "2.0")]
    assert route.call_count == 1


@respx.mock
async def test_a_kept_listing_serves_only_the_credentials_that_read_it() -> None:
    """Another caller's credentials get their own listing, read with their own token."""
    route = respx.get(LISTING).respond(200, json=PACKAGES)
    api = _api()
    await api.packages(SCOPE, normalize("pkg"), ALICE)
    await api.packages(SCOPE, normalize("pkg"), BOB)
    tokens = [call.request.headers["private-token"] for call in route.calls]
    assert tokens == ["alice-token", "bob-token"]


@respx.mock
async def test_listings_asked_at_once_are_one_request() -> None:
    """Pages asked for together (a resolver's parallel requests) wait for one listing."""
    route = respx.get(LISTING).respond(200, json=PACKAGES)
    api = _api()
    async with anyio.create_task_group() as group:
        for name in ("pkg", "my-pkg", "pkg"):
            group.start_soon(api.packages, SCOPE, normalize(name), ALICE)
    assert route.call_count == 1


@respx.mock
@pytest.mark.parametrize(
    ("seconds", "fresh", "asked"), [(59.0, False, 1), (60.0, False, 2), (0.0, True, 2)]
)
async def test_a_listing_is_asked_again_when_old_or_when_fresh_is_wanted(
    seconds: float, fresh: bool, asked: int
) -> None:
    """A kept listing serves for LISTING_TTL seconds, and never a caller that wants it fresh."""
    route = respx.get(LISTING).respond(200, json=PACKAGES)
    clock = Clock()
    api = _api(clock)
    await api.packages(SCOPE, normalize("pkg"), ALICE)
    clock.now += seconds
    await api.packages(SCOPE, normalize("pkg"), ALICE, fresh=fresh)
    assert route.call_count == asked


@respx.mock
async def test_a_refusal_is_not_kept() -> None:
    """A listing GitLab refused raises ValueError and is asked for again next time."""
    route = respx.get(LISTING).mock(
        side_effect=[httpx.Response(403, json={}), httpx.Response(200, json=PACKAGES)]
    )
    api = _api()
    with pytest.raises(ValueError, match="403"):
        await api.packages(SCOPE, normalize("pkg"), ALICE)
    assert [p.id for p in await api.packages(SCOPE, normalize("pkg"), ALICE)] == [6]
    assert route.call_count == 2


@respx.mock
async def test_a_scope_that_fits_one_page_is_listed_once_for_every_name() -> None:
    """Names with different search terms are answered from one listing of the whole scope
    (no package_name): a resolver's later pages need only their files."""
    others = [*PACKAGES, {"id": 7, "name": "other-lib", "version": "3.0", "package_type": "pypi"}]
    route = respx.get(LISTING).respond(200, json=others)
    api = _api()
    mine = await api.packages(SCOPE, normalize("my-pkg"), ALICE)
    theirs = await api.packages(SCOPE, normalize("other-lib"), ALICE)
    assert [p.id for p in mine] == [5]
    assert [p.id for p in theirs] == [7]
    assert route.call_count == 1
    assert "package_name" not in route.calls[0].request.url.params


@respx.mock
async def test_a_scope_past_one_page_is_searched_by_name() -> None:
    """A whole listing that fills a page may lack the name: the search term decides, and
    the scope is not listed again while that answer is kept."""
    full = [
        {"id": n, "name": f"p{n}", "version": "1.0", "package_type": "pypi"}
        for n in range(PER_PAGE)
    ]
    whole = respx.get(LISTING, params={"page": "1"}).mock(
        side_effect=lambda request: httpx.Response(
            200, json=PACKAGES if "package_name" in request.url.params else full
        )
    )
    api = _api()
    assert [p.id for p in await api.packages(SCOPE, normalize("my-pkg"), ALICE)] == [5]
    assert [p.id for p in await api.packages(SCOPE, normalize("pkg"), ALICE)] == [6]
    asked = [call.request.url.params.get("package_name") for call in whole.calls]
    assert asked == [None, "pkg"]


@respx.mock
async def test_a_name_missing_from_the_whole_listing_is_searched() -> None:
    """A package uploaded after the scope was listed is found by its search term."""
    route = respx.get(LISTING).mock(
        side_effect=lambda request: httpx.Response(
            200, json=PACKAGES if "package_name" in request.url.params else PACKAGES[1:]
        )
    )
    api = _api()
    assert [p.id for p in await api.packages(SCOPE, normalize("my-pkg"), ALICE)] == [5]
    assert [call.request.url.params.get("package_name") for call in route.calls] == [None, "pkg"]
