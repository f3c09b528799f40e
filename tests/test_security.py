"""Lets no one in where they don't belong, end to end: modes, scope binding, uploads, secrets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from proxy.tokens import add_token
from tests.clients import ProxyProcess, clean_env, free_port, new_venv, pip_install, run
from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab
from tests.scenario import Start, serve

pytestmark = pytest.mark.e2e

SERVICE = "svc-token-0123456789"
"""The proxy's own read token: user bot, reporter in acme (projects 42 and 43)."""
ALICE = "alice-token-0123456789"
"""A member's token: alice, developer in acme."""
MALLORY = "mallory-token-0123456789"
"""A valid token of a user who is no member of anything."""
WRONG = "wrong-token-0123456789"
"""A token GitLab does not know."""
PROXY_REALM = 'Basic realm="gitlab-pypi-proxy"'
GITLAB_REALM = 'Basic realm="GitLab Packages Registry"'


def basic(user: str, token: str) -> dict[str, str]:
    """Headers carrying `Authorization: Basic user:token`."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


AS_ALICE = basic("alice", ALICE)
AS_MALLORY = basic("mallory", MALLORY)
AS_WRONG = basic("alice", WRONG)
ANONYMOUS: dict[str, str] = {}


@dataclass(frozen=True)
class Wheel:
    """A real wheel held by one project of the fake GitLab."""

    project: int
    name: str
    filename: str
    content: bytes

    @property
    def sha256(self) -> str:
        """What GitLab stores and the URL carries."""
        return hashlib.sha256(self.content).hexdigest()

    @property
    def page(self) -> str:
        """The package page's path."""
        return f"/api/v4/projects/{self.project}/packages/pypi/simple/{self.name}/"

    def file(self, through: int | None = None) -> str:
        """The file's path, through its own project or through another one's URL."""
        project = self.project if through is None else through
        return f"/api/v4/projects/{project}/packages/pypi/files/{self.sha256}/{self.filename}"


@dataclass(frozen=True)
class World:
    """acme (group 7) with private projects 42 and 43, public project 50, and their wheels."""

    private: Wheel
    public: Wheel


def build_world(gitlab: FakeGitLab) -> World:
    """Users alice (developer in acme), mallory (no member) and bot (the service, reporter)."""
    gitlab.add_group(7, "acme", name="Acme")
    gitlab.add_project(42, "tools", name="Tools", group=7)
    gitlab.add_project(43, "lib", name="Lib", group=7)
    gitlab.add_project(50, "open", name="Open", visibility="public")
    for user, token in (("alice", ALICE), ("mallory", MALLORY), ("bot", SERVICE)):
        gitlab.add_user(user)
        gitlab.add_token(token, user=user)
    gitlab.add_member("alice", group=7, role="developer")
    gitlab.add_member("bot", group=7, role="reporter")
    wheels = []
    for project, name in ((42, "secret-pkg"), (50, "open-pkg")):
        filename, content = make_wheel(name, "1.0")
        gitlab.add_file(project, name, "1.0", filename, content)
        wheels.append(Wheel(project, name, filename, content))
    return World(*wheels)


@pytest.fixture
def world(gitlab: FakeGitLab) -> World:
    """The fake GitLab, populated."""
    return build_world(gitlab)


def passthrough(start: Start, gitlab: FakeGitLab, cache: Path, **env: str) -> ProxyProcess:
    """A proxy without a service token, forwarding each client's own credentials."""
    return serve(start, gitlab, cache, GITLAB_PYPI_PROXY_ACCESS_MODE="passthrough", **env)


def tokens_mode(
    start: Start, gitlab: FakeGitLab, tmp_path: Path, **env: str
) -> tuple[ProxyProcess, str]:
    """A proxy with the service token that admits one proxy token (named ci); and the token."""
    tokens = tmp_path / "tokens"
    token = add_token(str(tokens), "ci")
    proxy = serve(
        start,
        gitlab,
        tmp_path / "cache",
        token=SERVICE,
        GITLAB_PYPI_PROXY_ACCESS_MODE="tokens",
        GITLAB_PYPI_PROXY_ACCESS_TOKENS_FILE=str(tokens),
        **env,
    )
    return proxy, token


def read(proxy: ProxyProcess, path: str, headers: dict[str, str]) -> httpx.Response:
    """GET from the proxy."""
    return httpx.get(proxy.url + path, headers=headers, timeout=20)


def password(authorization: str | None) -> str | None:
    """The Basic password in an Authorization value GitLab received, or None."""
    if authorization is None or not authorization.startswith("Basic "):
        return None
    return base64.b64decode(authorization[6:]).decode().partition(":")[2]


def gitlab_passwords(gitlab: FakeGitLab, method: str | None = None) -> list[str | None]:
    """The Basic password (or the package API's PRIVATE-TOKEN or JOB-TOKEN) of every
    request GitLab (not object storage) received."""
    return [
        r.headers.get("private-token")
        or r.headers.get("job-token")
        or password(r.headers.get("authorization"))
        for r in gitlab.requests
        if r.server == "gitlab" and method in (None, r.method)
    ]


def assert_no_wheel(response: httpx.Response, wheel: Wheel) -> None:
    """The response is a refusal that neither carries nor lists the wheel."""
    assert response.status_code in (401, 403, 404, 502, 504), response.status_code
    assert wheel.content not in response.content
    assert wheel.filename not in response.text
    assert wheel.sha256 not in response.text


# -- open --------------------------------------------------------------------------------


def test_open_mode_serves_private_packages_to_anonymous_clients(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """On loopback with a service token (auto: open), anyone who reaches the proxy reads."""
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    page = read(proxy, world.private.page, ANONYMOUS)
    assert page.status_code == 200
    assert world.private.filename in page.text
    file = read(proxy, world.private.file(), ANONYMOUS)
    assert (file.status_code, file.content) == (200, world.private.content)


# -- tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(ANONYMOUS, id="none"),
        pytest.param(basic("ci", "gpp_wrong-proxy-token"), id="wrong"),
        pytest.param({"Authorization": "Bearer gpp_wrong-proxy-token"}, id="wrong-bearer"),
        pytest.param(AS_ALICE, id="gitlab-token"),
        pytest.param({"Authorization": "Basic !!!"}, id="malformed"),
    ],
)
def test_tokens_mode_refuses_without_a_proxy_token_before_asking_gitlab(
    gitlab: FakeGitLab,
    world: World,
    start_proxy: Start,
    tmp_path: Path,
    headers: dict[str, str],
) -> None:
    """No, a wrong or a GitLab token: 401 with the proxy's realm, and GitLab is not asked."""
    proxy, _ = tokens_mode(start_proxy, gitlab, tmp_path)
    for path in (world.private.page, world.private.file(), world.public.page):
        response = read(proxy, path, headers)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == PROXY_REALM
        assert world.private.content not in response.content
    assert gitlab.requests == []
    assert sum(gitlab.counts.values()) == 0


@pytest.mark.parametrize("how", ["basic", "basic-any-user", "bearer"])
def test_tokens_mode_admits_the_proxy_token(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path, how: str
) -> None:
    """The proxy token as the Basic password (any username) or as Bearer reads private files."""
    proxy, token = tokens_mode(start_proxy, gitlab, tmp_path)
    headers = {
        "basic": basic("ci", token),
        "basic-any-user": basic("someone-else", token),
        "bearer": {"Authorization": f"Bearer {token}"},
    }[how]
    assert read(proxy, world.private.page, headers).status_code == 200
    file = read(proxy, world.private.file(), headers)
    assert (file.status_code, file.content) == (200, world.private.content)


def test_tokens_mode_never_sends_the_proxy_token_to_gitlab(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """GitLab sees the service credential on every read, never the client's proxy token."""
    proxy, token = tokens_mode(start_proxy, gitlab, tmp_path)
    for headers in (basic("ci", token), {"Authorization": f"Bearer {token}"}):
        for path in (world.private.page, world.private.file(), world.public.page):
            assert read(proxy, path, headers).status_code == 200
    assert gitlab.requests
    assert set(gitlab_passwords(gitlab)) == {SERVICE}
    assert not any(token in value for r in gitlab.requests for value in r.headers.values())


def test_pip_installs_through_tokens_mode_with_the_token_in_the_index_url(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """pip sends the token from user:token@ in the index URL and installs the private package."""
    proxy, token = tokens_mode(start_proxy, gitlab, tmp_path)
    index = f"http://ci:{token}@127.0.0.1:{proxy.port}/api/v4/projects/42/packages/pypi/simple"
    result = pip_install(new_venv(tmp_path / "venv"), index, world.private.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert gitlab.counts["file"] == 1  # through the proxy, which read as the service
    assert set(gitlab_passwords(gitlab)) == {SERVICE}


# -- passthrough -------------------------------------------------------------------------


def test_passthrough_member_reads_and_caches_the_private_page_and_file(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """alice's own token reads the private project through the proxy, which keeps the file."""
    proxy = passthrough(start_proxy, gitlab, tmp_path / "cache")
    page = read(proxy, world.private.page, AS_ALICE)
    assert page.status_code == 200
    assert world.private.filename in page.text
    file = read(proxy, world.private.file(), AS_ALICE)
    assert (file.status_code, file.content) == (200, world.private.content)
    # alice's token, or none at all: whether GitLab gives the same to anyone.
    assert set(gitlab_passwords(gitlab)) == {ALICE, None}
    again = read(proxy, world.private.file(), AS_ALICE)
    assert (again.headers["x-cache"], again.content) == ("HIT", world.private.content)


@pytest.mark.parametrize("which", ["page", "file"])
def test_passthrough_anonymous_gets_gitlabs_401(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path, which: str
) -> None:
    """Without credentials the private project is GitLab's 401, its WWW-Authenticate passed on."""
    proxy = passthrough(start_proxy, gitlab, tmp_path / "cache")
    read(proxy, world.private.page, AS_ALICE)
    read(proxy, world.private.file(), AS_ALICE)
    path = world.private.page if which == "page" else world.private.file()
    response = read(proxy, path, ANONYMOUS)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == GITLAB_REALM
    assert_no_wheel(response, world.private)


@pytest.mark.parametrize("which", ["page", "file"])
def test_passthrough_non_member_cannot_read_what_a_member_cached(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path, which: str
) -> None:
    """mallory's valid token does not get alice's cached page or file: GitLab says 404."""
    proxy = passthrough(start_proxy, gitlab, tmp_path / "cache")
    assert read(proxy, world.private.page, AS_ALICE).status_code == 200
    assert read(proxy, world.private.file(), AS_ALICE).status_code == 200
    path = world.private.page if which == "page" else world.private.file()
    response = read(proxy, path, AS_MALLORY)
    assert response.status_code == 404
    assert_no_wheel(response, world.private)
    assert gitlab_passwords(gitlab)[-1] == MALLORY


def test_passthrough_wrong_token_on_a_public_project_is_not_vouched_for_a_private_one(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """GitLab lets a wrong token read the public project; it still gets 401 on the private one."""
    proxy = passthrough(start_proxy, gitlab, tmp_path / "cache")
    assert read(proxy, world.public.page, AS_WRONG).status_code == 200
    public = read(proxy, world.public.file(), AS_WRONG)
    assert (public.status_code, public.content) == (200, world.public.content)
    assert read(proxy, world.private.page, AS_ALICE).status_code == 200
    assert read(proxy, world.private.file(), AS_ALICE).status_code == 200
    for path in (world.private.page, world.private.file()):
        response = read(proxy, path, AS_WRONG)
        assert response.status_code == 401, path
        assert_no_wheel(response, world.private)


def test_passthrough_member_is_served_from_the_cache_within_auth_ttl(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """Once GitLab accepted alice for the project, her repeat reads are hits that ask nobody."""
    proxy = passthrough(start_proxy, gitlab, tmp_path / "cache")
    read(proxy, world.private.page, AS_ALICE)
    read(proxy, world.private.file(), AS_ALICE)
    gitlab.reset_counts()
    page = read(proxy, world.private.page, AS_ALICE)
    file = read(proxy, world.private.file(), AS_ALICE)
    assert (page.status_code, page.headers["x-cache"]) == (200, "HIT")
    assert (file.status_code, file.headers["x-cache"], file.content) == (
        200,
        "HIT",
        world.private.content,
    )
    assert gitlab.requests == []


def test_passthrough_member_keeps_reading_the_cache_while_gitlab_is_down(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """Offline laptop: auth_ttl over and GitLab down, alice still gets her page and file."""
    proxy = passthrough(
        start_proxy, gitlab, tmp_path / "cache", GITLAB_PYPI_PROXY_ACCESS_AUTH_TTL="0"
    )
    read(proxy, world.private.page, AS_ALICE)
    read(proxy, world.private.file(), AS_ALICE)
    gitlab.set_down(True)
    page = read(proxy, world.private.page, AS_ALICE)
    assert page.status_code == 200
    assert world.private.filename in page.text
    file = read(proxy, world.private.file(), AS_ALICE)
    assert (file.status_code, file.content) == (200, world.private.content)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(AS_MALLORY, id="non-member"),
        pytest.param(ANONYMOUS, id="anonymous"),
        pytest.param(AS_WRONG, id="wrong-token"),
        pytest.param(basic("mallory", ALICE + "x"), id="near-miss"),
    ],
)
def test_passthrough_others_get_no_wheel_while_gitlab_is_down(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path, headers: dict[str, str]
) -> None:
    """With GitLab down nobody but alice is served what alice cached."""
    proxy = passthrough(start_proxy, gitlab, tmp_path / "cache")
    read(proxy, world.private.page, AS_ALICE)
    read(proxy, world.private.file(), AS_ALICE)
    gitlab.set_down(True)
    for path in (world.private.page, world.private.file()):
        assert_no_wheel(read(proxy, path, headers), world.private)


def test_passthrough_non_member_cannot_join_a_members_download(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """While alice's download is still running, mallory asking for the same file gets no bytes."""
    proxy = passthrough(start_proxy, gitlab, tmp_path / "cache")
    gitlab.stall_files_after = 100
    alice = threading.Thread(target=read, args=(proxy, world.private.file(), AS_ALICE))
    alice.start()
    try:
        assert gitlab.stalled.wait(10)
        with httpx.stream(
            "GET", proxy.url + world.private.file(), headers=AS_MALLORY, timeout=20
        ) as response:
            gitlab.stall_release.set()
            response.read()
    finally:
        gitlab.stall_release.set()
        alice.join(20)
    assert_no_wheel(response, world.private)


def test_passthrough_does_not_serve_pages_cached_in_another_mode(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """A cache filled in open mode and reopened in passthrough shows an anonymous caller nothing."""
    cache = tmp_path / "cache"
    opened = serve(start_proxy, gitlab, cache, token=SERVICE)
    assert read(opened, world.private.page, ANONYMOUS).status_code == 200
    assert read(opened, world.private.file(), ANONYMOUS).status_code == 200
    opened.stop()
    proxy = passthrough(start_proxy, gitlab, cache, GITLAB_PYPI_PROXY_CACHE_OFFLINE="true")
    json_accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
    assert_no_wheel(read(proxy, world.private.page, json_accept), world.private)


# -- scope binding -----------------------------------------------------------------------


def test_a_file_cached_through_one_project_is_not_served_through_another(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """The same sha256 and name through project 43's URL: GitLab is asked (HEAD) and says 404."""
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    assert read(proxy, world.private.file(), ANONYMOUS).status_code == 200
    gitlab.reset_counts()
    response = read(proxy, world.private.file(through=43), ANONYMOUS)
    assert response.status_code == 404
    assert response.content != world.private.content
    asked = [(r.method, r.path) for r in gitlab.requests]
    assert ("HEAD", world.private.file(through=43)) in asked


def test_an_offline_restart_does_not_serve_a_file_through_a_project_that_never_had_it(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """Offline, the file is served through project 42, which had it, and 404 through 43."""
    cache = tmp_path / "cache"
    online = serve(start_proxy, gitlab, cache, token=SERVICE)
    assert read(online, world.private.file(), ANONYMOUS).status_code == 200
    online.stop()
    asked = len(gitlab.requests)
    proxy = serve(start_proxy, gitlab, cache, "--offline", token=SERVICE)
    response = read(proxy, world.private.file(through=43), ANONYMOUS)
    assert response.status_code == 404
    assert response.content != world.private.content
    assert read(proxy, world.private.file(), ANONYMOUS).content == world.private.content
    assert len(gitlab.requests) == asked


def test_a_file_being_filled_through_one_project_is_not_served_through_another(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """While a download through project 42 runs, the same file through 43's URL is still 404."""
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    gitlab.stall_files_after = 100
    first = threading.Thread(target=read, args=(proxy, world.private.file(), ANONYMOUS))
    first.start()
    try:
        assert gitlab.stalled.wait(10)
        with httpx.stream(
            "GET", proxy.url + world.private.file(through=43), timeout=20
        ) as response:
            gitlab.stall_release.set()
            response.read()
    finally:
        gitlab.stall_release.set()
        first.join(20)
    assert response.status_code == 404
    assert response.content != world.private.content


# -- uploads -----------------------------------------------------------------------------

UPLOAD = "/api/v4/projects/42/packages/pypi"


def upload(proxy: ProxyProcess, headers: dict[str, str], name: str = "new-pkg") -> httpx.Response:
    """A twine-style multipart upload of a real wheel to project 42."""
    filename, content = make_wheel(name, "2.0")
    fields = {
        ":action": "file_upload",
        "name": name,
        "version": "2.0",
        "sha256_digest": hashlib.sha256(content).hexdigest(),
    }
    files = {"content": (filename, content, "application/octet-stream")}
    return httpx.post(proxy.url + UPLOAD, data=fields, files=files, headers=headers, timeout=20)


def test_upload_without_credentials_is_401_when_a_service_token_is_set(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """The service token is for reads: an anonymous upload is the proxy's 401, GitLab unasked."""
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    response = upload(proxy, ANONYMOUS)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == PROXY_REALM
    assert gitlab.counts["upload"] == 0
    assert gitlab.upload_bytes_received == 0
    assert len(gitlab.files(42)) == 1


def test_service_upload_when_allowed_goes_with_the_service_credential(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """With access.allow_service_upload an anonymous upload reaches GitLab as the service."""
    gitlab.add_member("bot", project=42, role="developer")  # the bot may publish here
    proxy = serve(
        start_proxy,
        gitlab,
        tmp_path / "cache",
        token=SERVICE,
        GITLAB_PYPI_PROXY_ACCESS_ALLOW_SERVICE_UPLOAD="true",
    )
    response = upload(proxy, ANONYMOUS)
    assert response.status_code == 201, response.text
    assert gitlab_passwords(gitlab, "POST") == [SERVICE]
    assert [f.name for f in gitlab.files(42)] == ["secret-pkg", "new-pkg"]


def test_upload_goes_with_the_clients_credentials_not_the_service_token(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """alice's upload reaches GitLab with alice's token even though a service token is set."""
    proxy = serve(
        start_proxy,
        gitlab,
        tmp_path / "cache",
        token=SERVICE,
        GITLAB_PYPI_PROXY_ACCESS_ALLOW_SERVICE_UPLOAD="true",
    )
    response = upload(proxy, AS_ALICE)
    assert response.status_code == 201, response.text
    assert gitlab_passwords(gitlab, "POST") == [ALICE]


def test_tokens_mode_asks_for_a_proxy_token_before_a_service_upload(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """In tokens mode an upload without a proxy token is 401 even when service uploads are on."""
    gitlab.add_member("bot", project=42, role="developer")
    proxy, _ = tokens_mode(
        start_proxy, gitlab, tmp_path, GITLAB_PYPI_PROXY_ACCESS_ALLOW_SERVICE_UPLOAD="true"
    )
    response = upload(proxy, ANONYMOUS)
    assert response.status_code == 401
    assert gitlab.counts["upload"] == 0


def test_tokens_mode_never_sends_the_proxy_token_to_gitlab_on_upload(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """An upload carrying the proxy token does not hand that token to GitLab."""
    proxy, token = tokens_mode(start_proxy, gitlab, tmp_path)
    upload(proxy, basic("ci", token))
    assert not any(token in value for r in gitlab.requests for value in r.headers.values())
    assert token not in gitlab_passwords(gitlab)


# -- secrets -----------------------------------------------------------------------------


@pytest.fixture
def redirecting() -> Iterator[FakeGitLab]:
    """A fake GitLab whose downloads are 302s to presigned object-storage URLs."""
    with FakeGitLab(redirect_downloads=True) as fake:
        yield fake


def busy_run(gitlab: FakeGitLab, start: Start, tmp_path: Path) -> tuple[list[ProxyProcess], str]:
    """Reads, refusals and uploads with every kind of secret, through a tokens-mode proxy and a
    passthrough one, at debug level; returns the proxies and the proxy token."""
    world = build_world(gitlab)
    proxy, token = tokens_mode(start, gitlab, tmp_path, GITLAB_PYPI_PROXY_CACHE_PAGE_TTL="0")
    for headers in (basic("ci", token), {"Authorization": f"Bearer {token}"}):
        for path in (world.private.page, world.private.file(), world.public.file()):
            assert read(proxy, path, headers).status_code == 200
    assert read(proxy, world.private.page, basic("ci", token + "x")).status_code == 401
    other = passthrough(start, gitlab, tmp_path / "cache2", GITLAB_PYPI_PROXY_ACCESS_AUTH_TTL="0")
    for headers in (AS_ALICE, AS_MALLORY, AS_WRONG, {"Authorization": f"Bearer {ALICE}"}):
        for path in (world.private.page, world.private.file(), world.public.file()):
            read(other, path, headers)
    assert upload(other, AS_ALICE, "alice-pkg").status_code == 201
    assert upload(other, AS_MALLORY, "mallory-pkg").status_code == 404
    assert gitlab.counts["object"] > 0
    assert gitlab.object_auth_violations == 0
    return [proxy, other], token


def secrets_of(token: str) -> list[str]:
    """Every secret of a busy run, also as the base64 a Basic header would carry."""
    raw = [SERVICE, ALICE, MALLORY, WRONG, token]
    encoded = [base64.b64encode(f"{u}:{t}".encode()).decode() for u in ("ci", "alice") for t in raw]
    return [*raw, *encoded, "X-Amz-Signature", "Authorization: "]


def test_the_log_holds_no_secret(
    redirecting: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """After a busy run at debug level the proxies' logs hold no token and no presigned URL."""
    proxies, token = busy_run(redirecting, start_proxy, tmp_path)
    for proxy in proxies:
        proxy.stop()
        assert proxy.log is not None
        log = proxy.log.read_text()
        assert "GET /api/v4/projects/42/packages/pypi/files/" in log  # the access log is on
        for secret in secrets_of(token):
            assert secret not in log, secret


def test_the_metrics_hold_no_secret(
    redirecting: FakeGitLab, start_proxy: Start, tmp_path: Path
) -> None:
    """After a busy run /-/metrics holds no token and no presigned URL."""
    proxies, token = busy_run(redirecting, start_proxy, tmp_path)
    for proxy in proxies:
        metrics = httpx.get(proxy.url + "/-/metrics", timeout=20)
        assert metrics.status_code == 200
        for secret in secrets_of(token):
            assert secret not in metrics.text, secret


def test_a_token_in_the_query_string_is_not_logged(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """GitLab's private_token and job_token query parameters never reach the log."""
    proxy = serve(start_proxy, gitlab, tmp_path / "cache", token=SERVICE)
    for query in (f"?private_token={ALICE}", f"?job_token={MALLORY}"):
        assert read(proxy, world.private.page + query, ANONYMOUS).status_code == 200
    proxy.stop()
    assert proxy.log is not None
    log = proxy.log.read_text()
    assert "GET /api/v4/projects/42/packages/pypi/simple/secret-pkg/" in log
    assert ALICE not in log
    assert MALLORY not in log


@pytest.mark.parametrize(
    ("http", "logged"),
    [
        ("h11", "GET http://***@127.0.0.1/api/v4/"),
        # httptools hands uvicorn the absolute form's path alone.
        ("httptools", "GET /api/v4/projects/42/packages/pypi/simple/x/"),
    ],
)
def test_credentials_in_an_absolute_form_target_are_not_logged(
    gitlab: FakeGitLab, start_proxy: Start, tmp_path: Path, http: str, logged: str
) -> None:
    """A request line like `GET http://user:token@host/...` is logged without its user:token."""
    proxy = serve(
        start_proxy, gitlab, tmp_path / "cache", token=SERVICE, GITLAB_PYPI_PROXY_SERVER_HTTP=http
    )
    target = f"http://alice:{ALICE}@127.0.0.1/api/v4/projects/42/packages/pypi/simple/x/"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert conn.recv(4096).startswith(b"HTTP/1.1 404")
    proxy.stop()
    assert proxy.log is not None
    log = proxy.log.read_text()
    assert logged in log
    assert ALICE not in log


def test_a_world_readable_token_file_gives_a_warning_without_the_token(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path
) -> None:
    """upstream.token_file with mode 0644 is used, with a warning that does not show the token."""
    secret = tmp_path / "token"
    secret.write_text(SERVICE + "\n")
    secret.chmod(0o644)
    proxy = serve(
        start_proxy, gitlab, tmp_path / "cache", GITLAB_PYPI_PROXY_UPSTREAM_TOKEN_FILE=str(secret)
    )
    assert read(proxy, world.private.page, ANONYMOUS).status_code == 200
    assert set(gitlab_passwords(gitlab)) == {SERVICE}
    assert proxy.log is not None
    log = proxy.log.read_text()
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    assert any(str(secret) in line and "644" in line for line in warnings), log
    assert SERVICE not in log


def test_auto_mode_on_a_network_address_with_a_token_refuses_to_start(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """serve --listen 0.0.0.0 with a service token: exit 2, one line naming access.mode, no port."""
    port = free_port()
    result = run(
        [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--listen",
            f"0.0.0.0:{port}",
            "--upstream",
            gitlab.url,
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        env=clean_env(GITLAB_PYPI_PROXY_TOKEN=SERVICE),
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "access.mode" in lines[0]
    assert SERVICE not in result.stderr
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    assert gitlab.requests == []


def test_token_file_is_read_only_by_its_owner_after_token_add(tmp_path: Path) -> None:
    """The tokens file `token add` creates (through the CLI) is mode 0600 and holds no token."""
    path = tmp_path / "tokens"
    result = run(
        [sys.executable, "-m", "proxy", "token", "add", "ci", "--tokens-file", str(path)],
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert token not in path.read_text()
    assert token not in result.stderr


# -- races (passthrough) -----------------------------------------------------------------

RACE_ROUNDS = 12
RACERS = 16


async def _race(
    proxy: ProxyProcess, path: str, first: dict[str, str], rest: dict[str, str]
) -> tuple[httpx.Response, list[httpx.Response]]:
    """One request as `first` and RACERS as `rest`, all sent at once."""
    async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as client:
        leader = client.get(path, headers=first)
        racers = [client.get(path, headers=rest) for _ in range(RACERS)]
        answers = await asyncio.gather(leader, *racers)
    return answers[0], list(answers[1:])


def _race_rounds(
    gitlab: FakeGitLab, proxy: ProxyProcess, first: dict[str, str], rest: dict[str, str]
) -> Iterator[tuple[Wheel, httpx.Response, list[httpx.Response]]]:
    """RACE_ROUNDS rounds, each on a new private wheel nobody has fetched yet."""
    for round_ in range(RACE_ROUNDS):
        filename, content = make_wheel("secret-pkg", f"2.{round_}")
        gitlab.add_file(42, "secret-pkg", f"2.{round_}", filename, content)
        wheel = Wheel(42, "secret-pkg", filename, content)
        leader, racers = asyncio.run(_race(proxy, wheel.file(), first, rest))
        yield wheel, leader, racers


@pytest.mark.parametrize("workers", ["1", "2"])
def test_passthrough_non_members_racing_a_members_first_fetch_get_nothing(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path, workers: str
) -> None:
    """Non-members hammering a private file while a member fetches it first are never served
    it, and are not remembered as allowed afterwards."""
    proxy = passthrough(
        start_proxy, gitlab, tmp_path / "cache", GITLAB_PYPI_PROXY_SERVER_WORKERS=workers
    )
    gitlab.delay = 0.005
    for wheel, member, racers in _race_rounds(gitlab, proxy, AS_ALICE, AS_MALLORY):
        assert member.status_code == 200
        assert member.content == wheel.content
        for response in racers:
            assert_no_wheel(response, wheel)
        assert_no_wheel(read(proxy, wheel.file(), AS_MALLORY), wheel)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_passthrough_a_non_members_refused_fetch_never_becomes_a_members_answer(
    gitlab: FakeGitLab, world: World, start_proxy: Start, tmp_path: Path, workers: str
) -> None:
    """Members racing a non-member's first fetch of a private file all get the file."""
    proxy = passthrough(
        start_proxy, gitlab, tmp_path / "cache", GITLAB_PYPI_PROXY_SERVER_WORKERS=workers
    )
    gitlab.delay = 0.005
    for wheel, mallory, members in _race_rounds(gitlab, proxy, AS_MALLORY, AS_ALICE):
        assert_no_wheel(mallory, wheel)
        assert [r.status_code for r in members] == [200] * RACERS
        assert all(r.content == wheel.content for r in members)
