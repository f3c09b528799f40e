"""The status page: what each viewer is shown under each access mode, and how it is sent."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
from pathlib import Path

import httpx
import pytest
import respx

from proxy.tokens import add_token
from tests.fakegitlab import FakeGitLab
from tests.inproc import GITLAB, Serve, gitlab_page
from tests.scenario import SERVICE as SCENARIO_SERVICE
from tests.scenario import Start, acme, publish
from tests.scenario import serve as serve_process

pytestmark = pytest.mark.anyio

API = "/api/v4/projects/42/packages/pypi"
PAGE = f"{API}/simple/my-pkg/"
UPSTREAM_PAGE = f"{API}/simple/my-pkg"
WHEEL_NAME = "my_pkg-1.0-py3-none-any.whl"
SHA = hashlib.sha256(b"wheel").hexdigest()
SERVICE = "glpat-service-0123456789"
JSON = {"accept": "application/json"}
FACTS = {
    "version", "upstream", "mode", "credentials", "offline", "gitlab", "usage", "traffic",
    "started", "fills", "errors", "scopes", "hidden_scopes", "now",
}  # fmt: skip


def basic(user: str, token: str) -> str:
    """An `Authorization: Basic` value."""
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


ALICE = basic("alice", "alice-gitlab-token")
MALLORY = basic("mallory", "mallory-gitlab-token")


def package_page() -> httpx.Response:
    """GitLab's page of my-pkg in project 42."""
    anchor = f'<a href="{GITLAB}{API}/files/{SHA}/{WHEEL_NAME}#sha256={SHA}">{WHEEL_NAME}</a>'
    body = gitlab_page("my-pkg", anchor)
    return httpx.Response(200, content=body, headers={"content-type": "text/html"})


def only_for(authorization: str) -> object:
    """GitLab's answer to a private project's page: the page for one credential, else 404."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == authorization:
            return package_page()
        return httpx.Response(404, json={"message": "404 Not Found"})

    return answer


def text(response: httpx.Response) -> str:
    """The page's words, without tags."""
    return re.sub(r"<[^>]+>", " ", response.text)


async def test_open_mode_shows_each_cached_scope_with_its_configuration(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Open mode: anyone sees the scope, its index URL and pip, uv and poetry configuration."""
    gitlab_api.get(GITLAB + UPSTREAM_PAGE).mock(return_value=package_page())
    async with serve(token=SERVICE) as client:
        assert (await client.get(PAGE)).status_code == 200
        page = await client.get("/")
    assert page.status_code == 200
    index = "http://proxy.test/api/v4/projects/42/packages/pypi/simple"
    for shown in ("projects/42", index, "[global]", "[[index]]", "[[tool.uv.index]]"):
        assert shown in page.text
    assert f"poetry source add --priority=primary gitlab {index}" in page.text
    assert "open: anyone" in text(page)


async def test_json_gives_the_same_facts(serve: Serve, gitlab_api: respx.MockRouter) -> None:
    """`Accept: application/json` gives every fact, with the cache's use and the traffic."""
    gitlab_api.get(GITLAB + UPSTREAM_PAGE).mock(return_value=package_page())
    async with serve(token=SERVICE) as client:
        await client.get(PAGE)
        facts = (await client.get("/", headers=JSON)).json()
    assert set(facts) == FACTS
    assert facts["mode"] == "open"
    assert facts["credentials"] == "none"
    assert facts["usage"]["pages"] == 1
    assert facts["usage"]["max_size"] > 0
    assert facts["traffic"]["page_requests"] == 1
    assert facts["gitlab"]["answers"] is True
    assert facts["scopes"] == [
        {"scope": "projects/42", "index_url": f"http://proxy.test{API}/simple"}
    ]


async def test_page_has_a_strict_policy_and_no_inline_script_or_style(serve: Serve) -> None:
    """The page sends a strict CSP; its script and style come from their own paths."""
    async with serve() as client:
        page = await client.get("/")
        css = await client.get("/-/status.css")
        js = await client.get("/-/status.js")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="-/status.js" defer>']
    assert "<style" not in page.text
    assert " style=" not in page.text
    assert css.headers["content-type"].startswith("text/css")
    assert js.headers["content-type"].startswith("text/javascript")
    assert "prefers-color-scheme:dark" in css.text
    assert len(page.content) + len(css.content) + len(js.content) < 8 * 1024


async def test_status_page_asks_gitlab_nothing(serve: Serve, gitlab_api: respx.MockRouter) -> None:
    """Loading the page (HTML and JSON) sends no request to GitLab."""
    async with serve(token=SERVICE) as client:
        await client.get("/")
        await client.get("/", headers=JSON)
    assert not gitlab_api.calls


async def test_tokens_mode_shows_only_aggregates_without_a_proxy_token(
    serve: Serve, gitlab_api: respx.MockRouter, tmp_path: Path
) -> None:
    """Tokens mode: no scope without a valid proxy token, every scope with one."""
    tokens = str(tmp_path / "tokens")
    token = add_token(tokens, "ci")
    gitlab_api.get(GITLAB + UPSTREAM_PAGE).mock(return_value=package_page())
    overrides = {"access.mode": "tokens", "access.tokens_file": tokens}
    async with serve(overrides, token=SERVICE) as client:
        await client.get(PAGE, headers={"authorization": f"Bearer {token}"})
        anonymous = await client.get("/", headers=JSON)
        wrong = await client.get("/", headers={**JSON, "authorization": "Bearer nope"})
        admitted = await client.get("/", headers={**JSON, "authorization": f"Bearer {token}"})
        html = await client.get("/")
    for hidden in (anonymous.json(), wrong.json()):
        assert hidden["scopes"] == []
        assert hidden["hidden_scopes"] == 1
        assert hidden["usage"]["pages"] == 1
    assert [s["scope"] for s in admitted.json()["scopes"]] == ["projects/42"]
    assert "projects/42" not in html.text
    assert "shown to viewers with a proxy token" in html.text


async def test_passthrough_shows_a_private_scope_only_to_a_credential_gitlab_accepted(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Passthrough: a private project is shown to the credential GitLab gave its page to,
    not to another credential nor to an anonymous viewer."""
    gitlab_api.get(GITLAB + UPSTREAM_PAGE).mock(side_effect=only_for(ALICE))
    async with serve({"access.mode": "passthrough"}) as client:
        assert (await client.get(PAGE, headers={"authorization": ALICE})).status_code == 200
        alice = (await client.get("/", headers={**JSON, "authorization": ALICE})).json()
        mallory = (await client.get("/", headers={**JSON, "authorization": MALLORY})).json()
        anonymous = (await client.get("/", headers=JSON)).json()
    assert [s["scope"] for s in alice["scopes"]] == ["projects/42"]
    for other in (mallory, anonymous):
        assert other["scopes"] == []
        assert other["hidden_scopes"] == 1


async def test_passthrough_shows_a_public_scope_to_anyone(
    serve: Serve, gitlab_api: respx.MockRouter
) -> None:
    """Passthrough: a project whose page GitLab gives anonymous clients is shown to anyone."""
    gitlab_api.get(GITLAB + UPSTREAM_PAGE).mock(return_value=package_page())
    async with serve({"access.mode": "passthrough"}) as client:
        await client.get(PAGE)
        facts = (await client.get("/", headers=JSON)).json()
    assert [s["scope"] for s in facts["scopes"]] == ["projects/42"]
    assert facts["credentials"] == "GitLab token"


async def test_an_outage_shows_with_its_error(serve: Serve, gitlab_api: respx.MockRouter) -> None:
    """A request GitLab does not answer shows GitLab as not answering, and the error."""

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    gitlab_api.get(GITLAB + UPSTREAM_PAGE).mock(side_effect=refused)
    gitlab_api.routes["package_api"].mock(side_effect=refused)  # asked beside a cold page
    async with serve(token=SERVICE) as client:
        assert (await client.get(PAGE)).status_code == 502
        facts = (await client.get("/", headers=JSON)).json()
        page = await client.get("/")
    assert facts["gitlab"]["answers"] is False
    assert "could not be reached (ConnectError)" in facts["gitlab"]["reason"]
    assert [(e["route"], "502" in e["line"]) for e in facts["errors"]] == [("page", True)]
    assert "could not be reached (ConnectError)" in text(page)


async def test_errors_of_a_scope_are_hidden_from_viewers_who_may_not_read_it(
    serve: Serve, gitlab_api: respx.MockRouter, tmp_path: Path
) -> None:
    """Tokens mode: a viewer without a token sees when and where an error was, not its line."""
    tokens = str(tmp_path / "tokens")
    token = add_token(tokens, "ci")
    gitlab_api.get(GITLAB + UPSTREAM_PAGE).mock(return_value=httpx.Response(503))
    overrides = {"access.mode": "tokens", "access.tokens_file": tokens}
    async with serve(overrides, token=SERVICE) as client:
        await client.get(PAGE, headers={"authorization": f"Bearer {token}"})
        hidden = (await client.get("/", headers=JSON)).json()
        shown = (await client.get("/", headers={**JSON, "authorization": f"Bearer {token}"})).json()
    assert [(e["route"], e["line"]) for e in hidden["errors"]] == [("page", None)]
    assert "my-pkg" in shown["errors"][0]["line"]


async def test_no_secret_reaches_the_page(serve: Serve, gitlab_api: respx.MockRouter) -> None:
    """Neither the service token, a viewer's credential nor a password in a logged URL is shown."""
    gitlab_api.get(GITLAB + UPSTREAM_PAGE).mock(return_value=package_page())
    async with serve(token=SERVICE) as client:
        await client.get(PAGE, headers={"authorization": ALICE})
        logging.getLogger("proxy.test").warning("GET http://user:log-secret-7@x/ failed")
        shown = ""
        for headers in ({}, JSON, {"authorization": ALICE}, {**JSON, "authorization": ALICE}):
            shown += (await client.get("/", headers=headers)).text
    for secret in (SERVICE, ALICE, ALICE.split()[1], "alice-gitlab-token", "log-secret-7"):
        assert secret not in shown
    assert "https://git.example.com/gitlab" in shown


async def test_logged_text_is_escaped(serve: Serve) -> None:
    """An error line with markup is shown as text, never as markup."""
    async with serve() as client:
        logging.getLogger("proxy.test").warning("bad <script>alert(1)</script> & co")
        page = await client.get("/")
    assert "bad &lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page.text
    assert "<script>alert" not in page.text


async def test_offline_says_so_and_asks_nothing(serve: Serve) -> None:
    """Offline: the page says the proxy is offline and that GitLab is not asked."""
    async with serve({"cache.offline": True}) as client:
        facts = (await client.get("/", headers=JSON)).json()
        page = await client.get("/")
    assert facts["offline"] is True
    assert "Mode offline" in " ".join(text(page).split())
    assert "not asked: the proxy is offline" in page.text


@pytest.mark.e2e
def test_a_download_shows_its_file_name_only_to_a_viewer_who_may_read_it(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """Tokens mode: a download in progress shows as "a file" without a proxy token, by its
    name with one."""
    acme(gitlab)
    filename, sha256 = publish(gitlab, 42, "demo-pkg", "1.0")
    gitlab.stall_files_after = 100
    tokens = str(tmp_path / "tokens")
    token = add_token(tokens, "ci")
    proxy = serve_process(
        start_proxy,
        gitlab,
        tmp_path / "cache",
        token=SCENARIO_SERVICE,
        GITLAB_PYPI_PROXY_ACCESS_MODE="tokens",
        GITLAB_PYPI_PROXY_ACCESS_TOKENS_FILE=tokens,
    )
    bearer = {"authorization": f"Bearer {token}"}
    path = f"{API}/files/{sha256}/{filename}"
    download = threading.Thread(target=lambda: httpx.get(proxy.url + path, headers=bearer))
    download.start()
    try:
        assert gitlab.stalled.wait(30)
        hidden = httpx.get(proxy.url + "/", headers=JSON).json()["fills"]
        shown = httpx.get(proxy.url + "/", headers={**JSON, **bearer}).json()["fills"]
    finally:
        gitlab.stall_release.set()
        download.join(60)
    assert [f["filename"] for f in hidden] == [None]
    assert [f["filename"] for f in shown] == [filename]
