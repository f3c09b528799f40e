"""Access control: modes, proxy tokens, credential keys, and hostile paths never leaving the API."""

from __future__ import annotations

import base64
import os
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy import __main__ as cli
from proxy.access import (
    REALM,
    Gate,
    Keeper,
    presented_secret,
    resolve_mode,
)
from proxy.app import create_app
from proxy.config import load
from proxy.errors import ConfigError
from proxy.grants import Grants
from proxy.models import Scope as PyPIScope
from proxy.models import valid_filename, valid_scope_id, valid_sha256
from proxy.records import Records
from proxy.tokens import token_hash

TOKEN = "gpp_s3cr3t-proxy-token-0123456789"
OTHER = "gpp_another-proxy-token-9876543210"
GITLAB_TOKEN = "glpat-s3cr3t-gitlab-token"
GITLAB = "https://git.example.com"
SHA = "0123456789abcdef" * 4
WHEEL_NAME = "my_pkg-1.0-py3-none-any.whl"


def basic(username: str, password: str) -> str:
    """An `Authorization: Basic` value."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GITLAB_PYPI_PROXY_* variable of the developer's leaks in; caches go to tmp_path."""
    for name in list(os.environ):
        if name.startswith("GITLAB_PYPI_PROXY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))


# -- resolve_mode ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "host", "service_token", "expected"),
    [
        ("auto", "127.0.0.1", True, "open"),
        ("auto", "::1", True, "open"),
        ("auto", "[::1]", True, "open"),
        ("auto", "localhost", True, "open"),
        ("auto", "127.0.0.1", False, "open"),
        ("auto", "0.0.0.0", False, "passthrough"),
        ("auto", "10.1.2.3", False, "passthrough"),
        ("open", "0.0.0.0", True, "open"),
        ("tokens", "0.0.0.0", True, "tokens"),
        ("tokens", "127.0.0.1", False, "tokens"),
        ("passthrough", "0.0.0.0", False, "passthrough"),
        ("passthrough", "127.0.0.1", False, "passthrough"),
    ],
)
def test_resolve_mode_gives_the_mode_in_force(
    mode: str, host: str, service_token: bool, expected: str
) -> None:
    """auto is open on loopback and passthrough elsewhere without a token; explicit modes stay."""
    assert resolve_mode(mode, host=host, service_token=service_token) == expected


@pytest.mark.parametrize(
    ("mode", "host"),
    [
        ("auto", "0.0.0.0"),
        ("auto", "10.1.2.3"),
        ("auto", "::"),
        ("auto", "proxy.internal"),
        ("passthrough", "127.0.0.1"),
        ("passthrough", "0.0.0.0"),
    ],
)
def test_resolve_mode_refuses_in_one_line_naming_access_mode(mode: str, host: str) -> None:
    """auto off loopback with a service token, and passthrough with one, stop start-up in a line."""
    with pytest.raises(ConfigError) as refused:
        resolve_mode(mode, host=host, service_token=True)
    message = str(refused.value)
    assert message.startswith("access.mode: ")
    assert "\n" not in message


# -- presented_secret --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "secret"),
    [
        (basic("ci", TOKEN), TOKEN),
        (basic("anyone at all", TOKEN), TOKEN),
        (basic("", TOKEN), TOKEN),
        (basic("ci", "pass:with:colons"), "pass:with:colons"),
        ("basic " + basic("ci", TOKEN).split(" ")[1], TOKEN),
        (f"Bearer {TOKEN}", TOKEN),
        (f"bearer   {TOKEN}  ", TOKEN),
        ("Basic !!!not-base64!!!", None),
        ("Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), None),
        ("Basic " + base64.b64encode(b"no-colon-at-all").decode(), None),
        (basic("ci", ""), None),
        ("Basic ", None),
        ("Bearer ", None),
        (f"Token {TOKEN}", None),
        (f"Digest {TOKEN}", None),
        (TOKEN, None),
        ("", None),
        (None, None),
    ],
)
def test_presented_secret(authorization: str | None, secret: str | None) -> None:
    """The Basic password (any username) or the Bearer token; anything else is no secret."""
    assert presented_secret(authorization) == secret


# -- Gate --------------------------------------------------------------------------------

TOKENS = {token_hash(TOKEN): "ci"}


@pytest.mark.parametrize(
    ("mode", "authorization", "admitted"),
    [
        ("open", None, True),
        ("open", basic("x", "anything"), True),
        ("passthrough", None, True),
        ("passthrough", basic("alice", GITLAB_TOKEN), True),
        ("tokens", None, False),
        ("tokens", basic("ci", "gpp_wrong"), False),
        ("tokens", basic("ci", GITLAB_TOKEN), False),
        ("tokens", basic("ci", token_hash(TOKEN)), False),
        ("tokens", basic("ci", ""), False),
        ("tokens", f"Token {TOKEN}", False),
        ("tokens", basic("ci", TOKEN), True),
        ("tokens", basic("whoever", TOKEN), True),
        ("tokens", f"Bearer {TOKEN}", True),
    ],
)
def test_gate_admits(mode: str, authorization: str | None, admitted: bool) -> None:
    """Only tokens mode asks anything: a known proxy token as Basic password or Bearer."""
    gate = Gate(mode, TOKENS if mode == "tokens" else {})  # type: ignore[arg-type]
    assert gate.admits(authorization) is admitted


def test_gate_in_tokens_mode_without_tokens_admits_nobody() -> None:
    """An empty tokens file lets no one in, whatever they send."""
    gate = Gate("tokens", {})
    assert not any(gate.admits(a) for a in (None, basic("ci", TOKEN), f"Bearer {TOKEN}"))


SALT = b"\x01" * 32
ALICE = basic("alice", GITLAB_TOKEN)


def test_gate_credential_is_stable() -> None:
    """The same scope, credential and salt give the same key (an offline laptop finds it again)."""
    first, again = Gate("passthrough", {}, SALT), Gate("passthrough", {}, SALT)
    assert first.credential("projects/42", ALICE) == again.credential("projects/42", ALICE)


@pytest.mark.parametrize(
    ("scope", "authorization", "salt"),
    [
        ("projects/43", ALICE, SALT),
        ("groups/42", ALICE, SALT),
        ("projects/42", basic("mallory", GITLAB_TOKEN), SALT),
        ("projects/42", basic("alice", GITLAB_TOKEN + "x"), SALT),
        ("projects/42", f"Bearer {GITLAB_TOKEN}", SALT),
        ("projects/42", None, SALT),
        ("projects/42", ALICE, b"\x02" * 32),
    ],
)
def test_gate_credential_differs_by_scope_credential_and_salt(
    scope: str, authorization: str | None, salt: bytes
) -> None:
    """Changing the scope, the credential or the salt changes the remembered key."""
    reference = Gate("passthrough", {}, SALT).credential("projects/42", ALICE)
    assert Gate("passthrough", {}, salt).credential(scope, authorization) != reference


@pytest.mark.parametrize("authorization", [ALICE, f"Bearer {GITLAB_TOKEN}"])
def test_gate_credential_never_contains_the_token(authorization: str) -> None:
    """The key is a keyed hash: neither the token, the header nor its base64 is in it."""
    key = Gate("passthrough", {}, SALT).credential("projects/42", authorization)
    assert GITLAB_TOKEN not in key
    assert authorization.split(" ")[1] not in key
    assert len(key) == 64
    assert int(key, 16) >= 0


def test_gate_repr_shows_no_token_hash_or_salt() -> None:
    """repr and str of a Gate give the mode and a count, never a token, its hash or the salt."""
    gate = Gate("tokens", TOKENS, SALT)
    for shown in (repr(gate), str(gate)):
        assert TOKEN not in shown
        assert token_hash(TOKEN) not in shown
        assert repr(SALT) not in shown
        assert SALT.hex() not in shown
    assert repr(gate) == "Gate(mode='tokens', tokens=1)"


def test_realm_is_the_proxys_own() -> None:
    """A 401 of the proxy names its own realm, so clients don't send GitLab's credentials."""
    assert REALM == 'Basic realm="gitlab-pypi-proxy"'


# -- Keeper ------------------------------------------------------------------------------

SERVICE = basic("gitlab-pypi-proxy", GITLAB_TOKEN)
PROJECT = PyPIScope("projects", "42")
OTHER_PROJECT = PyPIScope("projects", "43")
FILE = (SHA, WHEEL_NAME)


def grants(directory: Path) -> Grants:
    """Access records in `directory`, as the proxy keeps them."""
    return Grants(Records(directory / "access", size_limit=1 << 30))


def keeper(
    tmp_path: Path,
    mode: str,
    *,
    service: str | None = None,
    auth_ttl: float = 300.0,
    clock: Callable[[], float] = time.time,
) -> Keeper:
    """A Keeper over fresh access records."""
    gate = Gate(mode, TOKENS if mode == "tokens" else {}, SALT, auth_ttl)  # type: ignore[arg-type]
    return Keeper(gate, grants(tmp_path), service=service, clock=clock)


@pytest.mark.parametrize(
    ("mode", "service", "client", "sent"),
    [
        ("open", SERVICE, ALICE, SERVICE),
        ("open", None, ALICE, ALICE),
        ("open", None, None, None),
        ("tokens", SERVICE, basic("ci", TOKEN), SERVICE),
        ("tokens", None, basic("ci", TOKEN), None),
        ("passthrough", None, ALICE, ALICE),
        ("passthrough", None, None, None),
    ],
)
def test_keeper_sends_gitlab_the_service_or_the_clients_own_credentials(
    tmp_path: Path, mode: str, service: str | None, client: str | None, sent: str | None
) -> None:
    """Reads carry the service credential, else the client's; a proxy token never goes on."""
    assert keeper(tmp_path, mode, service=service).caller(PROJECT, client).upstream == sent


@pytest.mark.parametrize("mode", ["open", "tokens"])
def test_keeper_shares_pages_by_scope_outside_passthrough(tmp_path: Path, mode: str) -> None:
    """With a service token every client is the same owner of a scope, fresh for page_ttl."""
    guard = keeper(tmp_path, mode, service=SERVICE)
    owners = {guard.caller(PROJECT, client).owner for client in (ALICE, None)}
    assert owners == {"projects/42"}
    assert guard.page_ttl(300.0) == 300.0


def test_keeper_gives_each_passthrough_credential_its_own_owner(tmp_path: Path) -> None:
    """Passthrough owners belong to one credential, never name the token, last auth_ttl,
    and differ from every owner of the other modes."""
    guard = keeper(tmp_path, "passthrough", auth_ttl=60.0)
    callers = [guard.caller(PROJECT, a) for a in (ALICE, None, f"Bearer {GITLAB_TOKEN}")]
    owners = {caller.owner for caller in callers}
    assert len(owners) == 3
    assert "projects/42" not in owners
    assert all(GITLAB_TOKEN not in owner for owner in owners)
    assert {caller.public_owner for caller in callers} == {callers[1].owner}
    assert guard.page_ttl(300.0) == 60.0


def test_a_caller_shows_no_credential() -> None:
    """A Caller's repr and fields carry hashes, never the header it was made from."""
    caller = Keeper(Gate("passthrough", {}, SALT), grants_stub(), service=None).caller(
        PROJECT, ALICE
    )
    shown = repr(caller) + caller.owner + caller.origin
    assert GITLAB_TOKEN not in shown
    assert ALICE.split(" ")[1] not in shown


def grants_stub() -> Grants:
    """Grants that must not be touched by what is tested."""
    return Grants(None)  # type: ignore[arg-type]


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_keeper_vouches_for_a_passthrough_credential_within_auth_ttl(tmp_path: Path) -> None:
    """Accepted by GitLab: served now for auth_ttl; after it, only while GitLab can't be asked."""
    clock = Clock()
    guard = keeper(tmp_path, "passthrough", clock=clock)
    alice = guard.caller(PROJECT, ALICE)
    assert guard.vouched_now(alice, *FILE) == (False, False)
    await guard.vouch(alice, [FILE])
    assert guard.vouched_now(alice, *FILE) == (True, True)
    clock.now += 301
    assert guard.vouched_now(alice, *FILE) == (False, True)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("scope", "client", "file"),
    [
        (OTHER_PROJECT, ALICE, FILE),
        (PROJECT, basic("mallory", "glpat-mallory"), FILE),
        (PROJECT, None, FILE),
        (PROJECT, ALICE, ("f" * 64, WHEEL_NAME)),
        (PROJECT, ALICE, (SHA, WHEEL_NAME + ".metadata")),
        (PROJECT, ALICE, (SHA, "my_pkg-1.0.tar.gz")),
    ],
)
async def test_keeper_vouches_for_nobody_else(
    tmp_path: Path, scope: PyPIScope, client: str | None, file: tuple[str, str]
) -> None:
    """Another scope, another credential, no credential, an unlisted file or another name
    for the same sha256: not vouched for."""
    guard = keeper(tmp_path, "passthrough")
    await guard.vouch(guard.caller(PROJECT, ALICE), [FILE])
    assert guard.vouched_now(guard.caller(scope, client), *file) == (False, False)


@pytest.mark.anyio
async def test_keeper_vouches_for_everyone_what_gitlab_gives_anyone(tmp_path: Path) -> None:
    """A file GitLab serves anonymously is vouched for every caller of the scope, and the
    credential that fetched it is not recorded."""
    guard = keeper(tmp_path, "passthrough")
    mallory = guard.caller(PROJECT, basic("mallory", "glpat-mallory"))
    await guard.vouch(mallory, [FILE], public=True)
    for client in (None, ALICE):
        assert guard.vouched_now(guard.caller(PROJECT, client), *FILE) == (True, True)
    records, _ = grants(tmp_path).size()
    assert records == 2  # the binding and the anonymous acceptance; nothing of mallory's


@pytest.mark.anyio
async def test_keeper_outside_passthrough_binds_files_to_scopes(tmp_path: Path) -> None:
    """With a service token any client may have a file its scope listed, and only through it."""
    guard = keeper(tmp_path, "open", service=SERVICE)
    await guard.vouch(guard.caller(PROJECT, None), [FILE])
    assert guard.vouched_now(guard.caller(PROJECT, ALICE), *FILE) == (True, True)
    assert guard.vouched_now(guard.caller(OTHER_PROJECT, None), *FILE) == (False, False)


@pytest.mark.anyio
async def test_keeper_remembers_refusals_of_the_service_only(tmp_path: Path) -> None:
    """GitLab's 404 to the service credential is kept; a client's own is not (it says
    nothing about other clients)."""
    guard = keeper(tmp_path, "open", service=SERVICE)
    await guard.refuse(guard.caller(PROJECT, ALICE), *FILE, ttl=60)
    assert await guard.refused(guard.caller(PROJECT, None), *FILE)
    passthrough = keeper(tmp_path / "p", "passthrough")
    alice = passthrough.caller(PROJECT, ALICE)
    await passthrough.refuse(alice, *FILE, ttl=60)
    assert not await passthrough.refused(alice, *FILE)


@pytest.mark.anyio
async def test_keeper_remembers_across_restarts(tmp_path: Path) -> None:
    """A new Keeper on the same cache (and so the same salt) still knows what GitLab allowed."""
    first = grants(tmp_path)
    gate = Gate("passthrough", {}, first.salt())
    before = Keeper(gate, first, service=None)
    await before.vouch(before.caller(PROJECT, ALICE), [FILE])
    first.close()
    again = grants(tmp_path)
    assert again.salt() == gate.salt
    guard = Keeper(Gate("passthrough", {}, again.salt()), again, service=None)
    assert guard.vouched_now(guard.caller(PROJECT, ALICE), *FILE) == (True, True)


# -- command line ------------------------------------------------------------------------


def test_serve_on_a_network_address_with_a_token_refuses_before_listening(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """auto mode, 0.0.0.0 and a service token: exit 2, one line naming access.mode, no server."""

    def must_not_run(*args: object, **kwargs: object) -> None:
        pytest.fail("server.run was called")

    monkeypatch.setattr("proxy.server.run", must_not_run)
    monkeypatch.setenv("GITLAB_PYPI_PROXY_TOKEN", GITLAB_TOKEN)
    assert cli.main(["serve", "--listen", "0.0.0.0:8080"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("gitlab-pypi-proxy: access.mode: ")
    assert err.count("\n") == 1
    assert GITLAB_TOKEN not in err


# -- hostile paths in process ------------------------------------------------------------


class RawPath:
    """Puts the raw path of header x-raw-path (hex) into the ASGI scope, as a server would
    pass on a request target sent as is (httpx itself would normalize it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if b"x-raw-path" in headers:
                raw, _, query = bytes.fromhex(headers[b"x-raw-path"].decode()).partition(b"?")
                scope = {
                    **scope,
                    "raw_path": raw,
                    "path": unquote(raw.decode("latin-1")),
                    "query_string": query,
                    "headers": [(k, v) for k, v in scope["headers"] if k != b"x-raw-path"],
                }
        await self.app(scope, receive, send)


@dataclass
class InProcess:
    """A proxy in process in front of a mocked git.example.com."""

    client: httpx.AsyncClient
    gitlab: respx.MockRouter

    async def get(self, raw_path: bytes, method: str = "GET") -> tuple[int, list[httpx.Request]]:
        """The status for `raw_path` sent as is, and the requests it caused at GitLab."""
        before = len(self.gitlab.calls)
        response = await self.client.request(
            method, "/api/v4/placeholder", headers={"x-raw-path": raw_path.hex()}
        )
        return response.status_code, [call.request for call in self.gitlab.calls[before:]]


@pytest.fixture
async def in_process(tmp_path: Path) -> AsyncIterator[InProcess]:
    """One proxy for all examples of a property: GitLab answers 404, so nothing is cached."""
    settings = load(
        env={}, overrides={"upstream.url": GITLAB, "cache.dir": str(tmp_path / "cache")}
    )
    app = create_app(settings)
    with respx.mock(assert_all_called=False) as gitlab:
        gitlab.route().respond(404, json={"message": "404 Not Found"})
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=RawPath(manager.app), raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://proxy.test") as c:
                yield InProcess(c, gitlab)


_PIECES = [
    "projects", "groups", "-", "packages", "pypi", "simple", "files", "42", "acme%2Ftools",
    "acme%2F..%2Fx", "..", ".", "%2e%2e", "%2E.", ".%2e", "..%2F..", "%2F", "%2f", "", "?",
    "?x=1", "#", "%00", "%0A", "%0d%0a", "%20", "%", "%zz", "@evil.example", "http:",
    "//evil.example", "\\..\\", "%5C", SHA, SHA.upper(), SHA[:63], WHEEL_NAME, "my-pkg",
    "My_Pkg", "a" * 300, "user", "runners", "..;", ";", "~",
]  # fmt: skip
_SAFE = "/%?:@!$&'()*+,;=-._~"


def _segments(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.one_of(st.sampled_from(_PIECES), alphabet), max_size=7)


_SCOPES = st.one_of(
    st.sampled_from(["projects/", "groups/"]).flatmap(
        lambda kind: st.one_of(st.sampled_from(_PIECES), st.text(max_size=10)).map(
            lambda ident: f"{kind}{ident}{'/-' if kind == 'groups/' else ''}/packages/pypi/"
        )
    ),
    st.just(""),
)
TEXT_PATHS = st.builds(
    lambda scope, parts: "/api/v4/" + scope + "/".join(parts),
    _SCOPES,
    _segments(st.text(max_size=12)),
).map(lambda path: quote(path, safe=_SAFE).encode("ascii"))
"""Paths a client could send: any text, percent-encoded where a URL needs it."""
BYTE_PATHS = st.builds(
    lambda scope, parts: b"/api/v4/" + scope.encode() + b"/".join(parts),
    _SCOPES.map(lambda scope: quote(scope, safe=_SAFE)),
    st.lists(
        st.one_of(st.sampled_from([p.encode() for p in _PIECES]), st.binary(max_size=12)),
        max_size=7,
    ),
)
"""Request targets sent as raw bytes, controls and non-ASCII included."""
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    # One in-process proxy serves every example: GitLab answers 404, so nothing is cached.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _on_the_pypi_api(request: httpx.Request) -> bool:
    path = request.url.raw_path.decode("ascii")
    decoded = unquote(path)
    return (
        request.url.scheme == "https"
        and request.url.host == "git.example.com"
        and path.startswith(("/api/v4/projects/", "/api/v4/groups/"))
        and "/packages/pypi/" in path
        and "//" not in path
        and ".." not in path.split("/")
        and ".." not in decoded.split("/")
        and "." not in decoded.split("/")
        and request.url.query == b""
    )


@pytest.mark.anyio
@PROPERTY
@given(raw=st.one_of(TEXT_PATHS, BYTE_PATHS), method=st.sampled_from(["GET", "HEAD"]))
@example(raw=b"/api/v4/projects/../../user/packages/pypi/simple", method="GET")
@example(raw=b"/api/v4/projects/acme%2F..%2F..%2Fuser/packages/pypi/simple", method="GET")
@example(raw=b"/api/v4/projects/42/packages/pypi/files/../../../../users", method="GET")
@example(raw=b"/api/v4/projects/42/packages/pypi/simple/..%2F..%2Fx", method="GET")
@example(raw=b"/api/v4/projects/42/packages/pypi//simple//my-pkg", method="GET")
@example(raw=f"/api/v4/groups/7/-/packages/pypi/files/{SHA}/{WHEEL_NAME}".encode(), method="GET")
async def test_any_path_reaches_gitlab_only_on_its_pypi_api(
    in_process: InProcess, raw: bytes, method: str
) -> None:
    """Whatever the path, every request GitLab gets is on git.example.com's PyPI API, no dot
    segments, no empty segments and no query."""
    _, upstream = await in_process.get(raw, method)
    assert all(_on_the_pypi_api(request) for request in upstream), [str(r.url) for r in upstream]


@pytest.mark.anyio
@PROPERTY
@given(raw=st.one_of(TEXT_PATHS, BYTE_PATHS), method=st.sampled_from(["GET", "HEAD"]))
@example(raw=b"/api/v4/projects/42/packages/pypi/simple/pkg%0A", method="GET")
async def test_a_path_that_never_reaches_gitlab_is_refused_as_400_404_or_405(
    in_process: InProcess, raw: bytes, method: str
) -> None:
    """A path the proxy does not send to GitLab gets 400, 404 or 405, never a crash."""
    status, upstream = await in_process.get(raw, method)
    assert upstream or status in (400, 404, 405), status


# -- path parameter validators -----------------------------------------------------------

_HOSTILE = ["/", "\\", "..", "\x00", "\n", "\r", "\t", "\x1f", "\x7f", " ", "\u2028", "%2F"]
_FILENAME_CHARS = st.sampled_from(
    [*"abcxyzABCXYZ0189_.+-!", "my_pkg-1.0-py3-none-any.whl", ".tar.gz"]
)


@st.composite
def _with_hostile_piece(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    text = draw(base)
    where = draw(st.integers(0, len(text)))
    return text[:where] + draw(st.sampled_from(_HOSTILE)) + text[where:]


FILENAMES = st.one_of(
    st.text(max_size=300),
    st.lists(_FILENAME_CHARS, min_size=1, max_size=300).map("".join),
    _with_hostile_piece(st.lists(_FILENAME_CHARS, min_size=1, max_size=40).map("".join)),
)


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)


@settings(max_examples=300, deadline=None)
@given(name=FILENAMES)
@example(name="my_pkg-1.0-py3-none-any.whl\n")
def test_an_accepted_filename_is_one_plain_bounded_segment(name: str) -> None:
    """Any filename valid_filename accepts has no /, \\, .., NUL or control characters and at
    most 255 characters."""
    if valid_filename(name):
        assert "/" not in name
        assert "\\" not in name
        assert ".." not in name
        assert "\x00" not in name
        assert not _has_control(name)
        assert len(name) <= 255


@settings(max_examples=300, deadline=None)
@given(name=FILENAMES.filter(lambda n: not n.endswith("\n")))
def test_an_accepted_filename_without_a_final_newline_is_one_plain_bounded_segment(
    name: str,
) -> None:
    """Leaving aside a final line break, accepted filenames are plain bounded segments."""
    if valid_filename(name):
        assert not {"/", "\\", "\x00"} & set(name)
        assert ".." not in name
        assert not _has_control(name)
        assert len(name) <= 255


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        st.text(max_size=70),
        st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=66),
        _with_hostile_piece(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
    )
)
@example(value=SHA + "\n")
def test_an_accepted_sha256_is_64_hex_digits(value: str) -> None:
    """valid_sha256 accepts exactly 64 hexadecimal digits and nothing else."""
    if valid_sha256(value):
        assert len(value) == 64
        assert all(c in "0123456789abcdefABCDEF" for c in value)


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        st.text(max_size=40),
        st.lists(st.sampled_from(["acme", "sub", "42", "%2F", "%2f", ".", "..", "-", "_"]))
        .map("".join)
        .filter(bool),
        _with_hostile_piece(st.sampled_from(["42", "acme%2Ftools", "acme%2Fsub%2Flib"])),
    )
)
@example(value="42\n")
def test_an_accepted_scope_id_is_one_segment_without_dot_segments(value: str) -> None:
    """valid_scope_id accepts one segment that, decoded, has no dot segments or controls."""
    if valid_scope_id(value):
        assert "/" not in value
        assert not _has_control(value)
        decoded = unquote(value).split("/")
        assert "." not in decoded
        assert ".." not in decoded
        assert "" not in decoded


@pytest.mark.parametrize(
    ("mode", "service", "client", "shareable"),
    [
        ("open", None, None, True),
        ("open", SERVICE, None, False),
        ("open", None, ALICE, False),
        ("tokens", None, f"Bearer {TOKEN}", False),
        ("passthrough", None, None, True),
        ("passthrough", None, ALICE, False),
    ],
)
def test_only_what_needed_no_credential_is_shareable(
    tmp_path: Path, mode: str, service: str | None, client: str | None, shareable: bool
) -> None:
    """A shared cache may keep an answer only when GitLab saw no credentials and the proxy
    asked for no token of its own."""
    guard = keeper(tmp_path, mode, service=service)
    assert guard.shareable(guard.caller(PROJECT, client)) is shareable
