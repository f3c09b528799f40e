"""The fake GitLab behaves as gitlab-pypi-api.md says the real one does."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.distfactory import make_sdist, make_wheel
from tests.fakegitlab import FakeGitLab

WHEEL_NAME, WHEEL = make_wheel("my.package", "1.0", requires_python=">=3.8")
WHEEL2_NAME, WHEEL2 = make_wheel("my.package", "2.0")
SHA = hashlib.sha256(WHEEL).hexdigest()
INVALID = "400 Bad request - Validation failed:"
AUTH = {
    "alice": ("alice", "alice-pat"),  # developer of acme/sub/tools (42)
    "gary": ("gary", "gary-pat"),  # guest of 42
    "bob": ("bob", "bob-pat"),  # valid user, member of nothing
    "wrong": ("alice", "not-a-token"),
    "job": ("gitlab-ci-token", "alice-job"),
    "deploy42": ("any-name", "deploy-42"),
    "deploy7": ("any-name", "deploy-7"),
}


def populate(fake: FakeGitLab) -> None:
    """acme (7, public) > sub (8, private) > tools (42, private); acme/pub (43, public)."""
    for user in ("alice", "gary", "bob", "carol"):
        fake.add_user(user)
        fake.add_token(f"{user}-pat", user=user)
    fake.add_token("alice-job", user="alice", kind="job")
    fake.add_token("deploy-42", kind="deploy", project=42)
    fake.add_token("deploy-7", kind="deploy", group=7)
    fake.add_group(7, "acme", name="ACME", visibility="public")
    fake.add_group(8, "sub", parent=7)
    fake.add_project(42, "tools", name="My Tools", group=8)
    fake.add_project(43, "pub", visibility="public", group=7)
    fake.add_project(44, "secret", group=7)
    fake.add_member("alice", project=42)
    fake.add_member("gary", project=42, role="guest")
    fake.add_member("carol", project=44, role="reporter")
    fake.add_file(42, "my.package", "1.0", WHEEL_NAME, WHEEL, requires_python=">=3.8")
    fake.add_file(42, "my.package", "2.0", WHEEL2_NAME, WHEEL2)
    fake.add_file(43, "pub-lib", "1.0", "pub_lib-1.0.tar.gz", b"pub")
    fake.add_file(44, "Secret", "1.0", "secret-1.0.tar.gz", b"secret")


@pytest.fixture
def fake() -> Iterator[FakeGitLab]:
    """A started, populated fake GitLab."""
    with FakeGitLab() as server:
        populate(server)
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """A plain httpx client that does not follow redirects."""
    with loopback_client() as c:
        yield c


def loopback_client() -> httpx.Client:
    # Plain HTTP to 127.0.0.1 only: no proxies from the environment, no CA bundle to load.
    return httpx.Client(timeout=10, trust_env=False, verify=False)


def project(fake: FakeGitLab, rest: str = "simple", ident: str = "42") -> str:
    return f"{fake.url}/api/v4/projects/{ident}/packages/pypi/{rest}"


def group(fake: FakeGitLab, rest: str = "simple", ident: str = "7") -> str:
    return f"{fake.url}/api/v4/groups/{ident}/-/packages/pypi/{rest}"


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.002)


def html(title: str, links: str) -> bytes:
    return (
        "<!DOCTYPE html>\n        <html>\n          <head>\n"
        f"            <title>Links for {title}</title>\n          </head>\n          <body>\n"
        f"            <h1>Links for {title}</h1>\n            {links}\n"
        "          </body>\n        </html>\n"
    ).encode()


def upload(
    client: httpx.Client, url: str, auth: tuple[str, str] | None, **fields: str | bytes | None
) -> httpx.Response:
    """POST a twine-like multipart form; a field given as None is left out."""
    content = fields.pop("content", WHEEL)
    filename = fields.pop("filename", WHEEL_NAME)
    assert isinstance(content, bytes)
    assert isinstance(filename, str)
    defaults: dict[str, str | bytes | None] = {"name": "up", "version": "1.0", "sha256_digest": SHA}
    data = {k: v for k, v in (defaults | fields).items() if v is not None}
    files = {"content": (filename, content, "application/octet-stream")}
    return client.post(url, data=data, files=files, auth=auth or httpx.USE_CLIENT_DEFAULT)


# --- lifecycle -------------------------------------------------------------------------


def test_start_and_stop_are_fast() -> None:
    """Starting and stopping both servers takes well under 100 ms."""
    began = time.perf_counter()
    with FakeGitLab() as server, loopback_client() as c:
        c.get(project(server))
    assert time.perf_counter() - began < 0.1


def test_set_down_refuses_connections_then_listens_on_the_same_port(
    fake: FakeGitLab, client: httpx.Client
) -> None:
    """While down, connecting fails; back up, the same URL answers."""
    fake.set_down(True)
    with pytest.raises(httpx.ConnectError):
        client.get(project(fake, ident="43"))
    fake.set_down(False)
    assert client.get(project(fake, ident="43")).status_code == 200


def test_set_down_drops_kept_alive_connections(fake: FakeGitLab) -> None:
    """Going down closes connections that were idle in keep-alive."""
    connection = http.client.HTTPConnection(fake.url.removeprefix("http://"), timeout=5)
    connection.request("GET", "/api/v4/projects/43/packages/pypi/simple")
    response = connection.getresponse()
    assert (response.status, response.getheader("connection")) == (200, None)
    response.read()
    assert connection.sock is not None
    fake.set_down(True)
    assert connection.sock.recv(1) == b""
    connection.close()


# --- pages -----------------------------------------------------------------------------


def test_project_page_is_byte_exact(fake: FakeGitLab, client: httpx.Client) -> None:
    """A package page is GitLab's template with one escaped, absolute link per file."""
    base = f"{fake.url}/api/v4/projects/42/packages/pypi/files"
    sha2 = hashlib.sha256(WHEEL2).hexdigest()
    links = (
        f'<a href="{base}/{SHA}/{WHEEL_NAME}#sha256={SHA}" data-requires-python="&gt;=3.8">'
        f"{WHEEL_NAME}</a>"
        f'<a href="{base}/{sha2}/{WHEEL2_NAME}#sha256={sha2}" data-requires-python="">'
        f"{WHEEL2_NAME}</a>"
    )
    response = client.get(project(fake, "simple/my-package/"), auth=AUTH["alice"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.content == html("my.package", links)


def test_index_has_one_anchor_per_version(fake: FakeGitLab, client: httpx.Client) -> None:
    """The index repeats a name per version, links the normalized name and shows the raw one."""
    href = f"{fake.url}/api/v4/projects/42/packages/pypi/simple/my-package"
    links = (
        f'<a href="{href}" data-requires-python="&gt;=3.8">my.package</a>'
        f'<a href="{href}" data-requires-python="">my.package</a>'
    )
    response = client.get(project(fake), auth=AUTH["alice"])
    assert response.content == html("My Tools", links)


def test_empty_index_keeps_the_links_line(client: httpx.Client) -> None:
    """An empty index is 200 with twelve spaces on the links line."""
    with FakeGitLab() as server:
        server.add_project(1, "empty", visibility="public")
        assert client.get(project(server, ident="1")).content == html("empty", "")


def test_requires_python_is_html_escaped(fake: FakeGitLab, client: httpx.Client) -> None:
    """data-requires-python escapes & < > " and ' like ERB does."""
    fake.add_file(43, "odd", "1.0", "odd-1.0.tar.gz", b"x", requires_python="<4,'\"&")
    page = client.get(project(fake, "simple/odd", ident="43")).text
    assert 'data-requires-python="&lt;4,&#39;&quot;&amp;"' in page


@pytest.mark.parametrize("ident", ["acme%2Fsub%2Ftools", "ACME%2Fsub%2Ftools"])
def test_full_path_id_resolves_and_links_use_numeric_id(
    fake: FakeGitLab, client: httpx.Client, ident: str
) -> None:
    """An encoded full path finds the project; hrefs still use the numeric id."""
    response = client.get(project(fake, "simple/my-package", ident), auth=AUTH["alice"])
    assert response.status_code == 200
    assert f"{fake.url}/api/v4/projects/42/packages/pypi/files/" in response.text


@pytest.mark.parametrize("rest", ["simple/", "simple//my-package/", "/simple/my-package//"])
def test_trailing_and_double_slashes_are_tolerated(
    fake: FakeGitLab, client: httpx.Client, rest: str
) -> None:
    """Grape strips trailing slashes and squeezes //."""
    assert client.get(project(fake, rest), auth=AUTH["alice"]).status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "/api/v4/projects/999/packages/pypi/simple",
        "/api/v4/projects/acme%2Fnope/packages/pypi/simple",
        "/api/v4/groups/999/-/packages/pypi/simple",
        "/api/v4/groups/42/-/packages/pypi/simple",
    ],
)
def test_unknown_id_is_404_even_for_anonymous(
    fake: FakeGitLab, client: httpx.Client, url: str
) -> None:
    """find_project/find_group fail before any authentication."""
    response = client.get(fake.url + url)
    assert (response.status_code, response.json()) == (404, {"message": "404 Not Found"})


@pytest.mark.parametrize(
    "url", ["/api/v4/projects/42/packages/npm/x", "/api/v4/version", "/", "/api/v4/projects/42"]
)
def test_other_paths_are_404_and_counted_as_other(
    fake: FakeGitLab, client: httpx.Client, url: str
) -> None:
    """Anything outside the PyPI routes is a JSON 404 counted as "other"."""
    response = client.get(fake.url + url, auth=AUTH["alice"])
    assert (response.status_code, response.json()) == (404, {"message": "404 Not Found"})
    assert fake.counts == {"other": 1}


def test_relative_root_is_in_url_and_links(client: httpx.Client) -> None:
    """With a relative root, routes live under it and hrefs include it."""
    with FakeGitLab(relative_root="/gitlab/") as server:
        populate(server)
        assert server.url.endswith("/gitlab")
        response = client.get(project(server, "simple/my-package"), auth=AUTH["alice"])
        assert f"{server.url}/api/v4/projects/42/packages/pypi/files/" in response.text
        bare = server.url.removesuffix("/gitlab") + "/api/v4/projects/42/packages/pypi/simple"
        assert client.get(bare, auth=AUTH["alice"]).status_code == 404


@pytest.mark.parametrize(
    ("name", "status"),
    [("my-package", 200), ("My-Package", 200), ("my.package", 302), ("my_package", 302)],
)
def test_request_name_is_only_lower_cased(
    fake: FakeGitLab, client: httpx.Client, name: str, status: int
) -> None:
    """Stored names are normalized but the requested one is only lower-cased."""
    assert client.get(project(fake, f"simple/{name}"), auth=AUTH["alice"]).status_code == status


def test_unknown_name_redirects_to_forwarding_url(fake: FakeGitLab, client: httpx.Client) -> None:
    """A miss is a 302 to pypi.org with the name as requested and a text/plain body."""
    response = client.get(project(fake, "simple/Requests"), auth=AUTH["alice"])
    assert response.status_code == 302
    assert response.headers["location"] == "https://pypi.org/simple/Requests/"
    assert response.headers["content-type"] == "text/plain"
    assert response.text == (
        "This resource has been moved temporarily to https://pypi.org/simple/Requests/."
    )


def test_unknown_name_is_404_without_forwarding(client: httpx.Client) -> None:
    """With forwarding off, a miss is 404 Package Not Found."""
    with FakeGitLab(forwarding_url=None) as server:
        server.add_project(1, "p", visibility="public")
        response = client.get(project(server, "simple/requests", "1"))
        assert response.json() == {"message": "404 Package Not Found"}


def test_forwarding_happens_after_auth(fake: FakeGitLab, client: httpx.Client) -> None:
    """An anonymous miss on a private project is 401, not a redirect."""
    assert client.get(project(fake, "simple/requests")).status_code == 401


def test_head_returns_headers_without_body(fake: FakeGitLab, client: httpx.Client) -> None:
    """HEAD answers every GET route with the same headers and no body."""
    got = client.get(project(fake, "simple/my-package"), auth=AUTH["alice"])
    head = client.head(project(fake, "simple/my-package"), auth=AUTH["alice"])
    assert head.content == b""
    assert head.headers["content-length"] == str(len(got.content))
    assert head.headers["etag"] == got.headers["etag"]


def test_pages_carry_weak_etag_and_answer_304(fake: FakeGitLab, client: httpx.Client) -> None:
    """Pages get W/"md5" and Rails' Cache-Control, and a matching If-None-Match gets 304."""
    first = client.get(project(fake, ident="43"))
    assert first.headers["etag"] == f'W/"{hashlib.md5(first.content).hexdigest()}"'
    assert first.headers["cache-control"] == "max-age=0, private, must-revalidate"
    again = client.get(project(fake, ident="43"), headers={"If-None-Match": first.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")


@pytest.mark.parametrize(
    "accept",
    [
        "application/vnd.pypi.simple.v1+json",
        "text/html, application/vnd.pypi.simple.v1+json;q=0",
        "application/vnd.pypi.simple.latest+json",
    ],
)
def test_pep691_json_when_any_accept_item_asks(accept: str, client: httpx.Client) -> None:
    """With the flag on, any Accept item starting with the v1+json type gets JSON."""
    with FakeGitLab(pep691=True) as server:
        populate(server)
        url = project(server, "simple/my-package")
        response = client.get(url, headers={"Accept": accept}, auth=AUTH["alice"])
    assert response.headers["content-type"] == "application/vnd.pypi.simple.v1+json; charset=utf-8"
    assert response.headers["vary"] == "Accept"
    body = response.json()
    assert (body["meta"], body["name"]) == ({"api-version": "1.0"}, "my-package")
    assert body["files"][0]["requires-python"] == ">=3.8"
    assert "requires-python" not in body["files"][1]
    assert body["files"][0]["url"].endswith(f"/{SHA}/{WHEEL_NAME}#sha256={SHA}")


def test_pep691_index_lists_unique_sorted_normalized_names(client: httpx.Client) -> None:
    """The JSON index is de-duplicated and sorted, unlike the HTML one."""
    with FakeGitLab(pep691=True) as server:
        populate(server)
        server.add_file(42, "A_B", "1", "a_b-1.tar.gz", b"x")
        accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
        body = client.get(project(server), headers=accept, auth=AUTH["alice"]).json()
    assert body["projects"] == [{"name": "a-b"}, {"name": "my-package"}]


@pytest.mark.parametrize(("pep691", "vary"), [(True, "Accept"), (False, None)])
def test_plain_json_accept_still_gets_html(
    client: httpx.Client, pep691: bool, vary: str | None
) -> None:
    """application/json is not the PEP 691 type; Vary appears only with the flag."""
    with FakeGitLab(pep691=pep691) as server:
        server.add_project(1, "p", visibility="public")
        response = client.get(project(server, ident="1"), headers={"Accept": "application/json"})
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers.get("vary") == vary


# --- auth ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pid", "who", "status"),
    [
        ("43", None, 200),
        ("43", "wrong", 200),
        ("43", "bob", 200),
        ("42", "alice", 200),
        ("42", "gary", 200),
        ("42", "job", 200),
        ("42", "deploy42", 200),
        ("42", "deploy7", 200),
        ("42", None, 401),
        ("42", "wrong", 401),
        ("42", "bob", 404),
        ("44", "deploy42", 404),
    ],
)
def test_project_read_access(
    fake: FakeGitLab, client: httpx.Client, pid: str, who: str | None, status: int
) -> None:
    """Public: anyone; private: members and covering deploy tokens, else 401 or 404."""
    response = client.get(project(fake, ident=pid), auth=AUTH[who] if who else None)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"] == 'Basic realm="GitLab Packages Registry"'
        assert response.json() == {"message": "401 Unauthorized"}


def test_wrong_job_token_is_401_even_on_a_public_project(
    fake: FakeGitLab, client: httpx.Client
) -> None:
    """The gitlab-ci-token username makes a wrong password a 401, not anonymous."""
    response = client.get(project(fake, ident="43"), auth=("gitlab-ci-token", "nope"))
    assert response.status_code == 401


def test_bearer_personal_token_reads(fake: FakeGitLab, client: httpx.Client) -> None:
    """Authorization: Bearer with a personal token acts as its user."""
    headers = {"Authorization": "Bearer alice-pat"}
    assert client.get(project(fake), headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("who", "names"),
    [
        (None, ["pub-lib"]),
        ("alice", ["my.package", "my.package", "pub-lib"]),
        ("deploy7", ["my.package", "my.package", "pub-lib", "Secret"]),
    ],
)
def test_group_index_lists_visible_projects_of_the_subtree(
    fake: FakeGitLab, client: httpx.Client, who: str | None, names: list[str]
) -> None:
    """A group index covers subgroups but only projects the caller may read."""
    text = client.get(group(fake), auth=AUTH[who] if who else None).text
    assert [a.split("</a>")[0] for a in text.split('">')[1:]] == names
    assert "<title>Links for ACME</title>" in text


def test_group_page_links_point_at_the_group_route(fake: FakeGitLab, client: httpx.Client) -> None:
    """Group pages link downloads through groups/<gid>/-/packages/pypi/files."""
    text = client.get(group(fake, "simple/my-package"), auth=AUTH["alice"]).text
    assert f'href="{fake.url}/api/v4/groups/7/-/packages/pypi/files/{SHA}/{WHEEL_NAME}#' in text


@pytest.mark.parametrize(("who", "status"), [(None, 401), ("bob", 404), ("alice", 200)])
def test_private_group_access(
    fake: FakeGitLab, client: httpx.Client, who: str | None, status: int
) -> None:
    """A private subgroup: anonymous 401, a stranger 404, a member of a project in it 200."""
    response = client.get(group(fake, ident="acme%2Fsub"), auth=AUTH[who] if who else None)
    assert response.status_code == status


# --- downloads -------------------------------------------------------------------------


def test_download_serves_the_bytes(fake: FakeGitLab, client: httpx.Client) -> None:
    """A matching (sha, filename) is 200 octet-stream as an attachment with ranges."""
    response = client.get(project(fake, f"files/{SHA}/{WHEEL_NAME}"), auth=AUTH["alice"])
    assert response.content == WHEEL
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment;")
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == str(len(WHEEL))
    assert fake.counts["file"] == 1


def test_group_download_finds_files_of_subgroup_projects(
    fake: FakeGitLab, client: httpx.Client
) -> None:
    """The group files route serves any matching file in the group's subtree."""
    response = client.get(group(fake, f"files/{SHA}/{WHEEL_NAME}"), auth=AUTH["alice"])
    assert (response.status_code, response.content) == (200, WHEEL)


@pytest.mark.parametrize(
    ("url", "message"),
    [(project, "404 Package Not Found"), (group, "404 Not found")],
)
def test_download_miss_is_404(
    fake: FakeGitLab, client: httpx.Client, url: Callable[..., str], message: str
) -> None:
    """A wrong sha for an existing name is a 404 with the scope's own message."""
    response = client.get(url(fake, f"files/{'0' * 64}/{WHEEL_NAME}"), auth=AUTH["alice"])
    assert (response.status_code, response.json()) == (404, {"message": message})


def test_download_file_name_may_contain_plus(fake: FakeGitLab, client: httpx.Client) -> None:
    """Everything after files/<sha>/ is the name, '+' and dots included."""
    sha = fake.add_file(43, "p", "1.0+local", "p-1.0+local.tar.gz", b"local")
    assert client.get(project(fake, f"files/{sha}/p-1.0+local.tar.gz", "43")).content == b"local"


@pytest.mark.parametrize(
    ("header", "span", "content_range"),
    [
        ("bytes=0-9", (0, 10), "bytes 0-9/N"),
        ("bytes=10-", (10, None), "bytes 10-M/N"),
        ("bytes=-5", (-5, None), "bytes K-M/N"),
    ],
)
def test_single_range_is_honoured(
    fake: FakeGitLab,
    client: httpx.Client,
    header: str,
    span: tuple[int, int | None],
    content_range: str,
) -> None:
    """A single byte range gets 206 with Content-Range."""
    size = len(WHEEL)
    url = project(fake, f"files/{SHA}/{WHEEL_NAME}")
    response = client.get(url, headers={"Range": header}, auth=AUTH["alice"])
    assert response.status_code == 206
    assert response.content == WHEEL[span[0] : span[1]]
    expected = content_range.replace("N", str(size)).replace("M", str(size - 1))
    assert response.headers["content-range"] == expected.replace("K", str(size - 5))


def test_unsatisfiable_range_is_416(fake: FakeGitLab, client: httpx.Client) -> None:
    """A range starting past the end is 416 with the size in Content-Range."""
    url = project(fake, f"files/{SHA}/{WHEEL_NAME}")
    response = client.get(url, headers={"Range": "bytes=99999-"}, auth=AUTH["alice"])
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(WHEEL)}"


@pytest.fixture
def redirecting() -> Iterator[FakeGitLab]:
    """A populated fake whose downloads redirect to object storage."""
    with FakeGitLab(redirect_downloads=True) as server:
        populate(server)
        yield server


def test_redirected_download_is_served_by_object_storage(
    redirecting: FakeGitLab, client: httpx.Client
) -> None:
    """Downloads 302 to a presigned URL that serves the bytes without credentials."""
    url = project(redirecting, f"files/{SHA}/{WHEEL_NAME}")
    response = client.get(url, auth=AUTH["alice"])
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(f"{redirecting.object_storage_url}/bucket/")
    assert "X-Amz-Signature=" in location
    assert client.head(location).headers["content-length"] == str(len(WHEEL))
    assert client.get(location).content == WHEEL
    assert redirecting.counts["object"] == 2


def test_head_download_redirect_is_303(redirecting: FakeGitLab, client: httpx.Client) -> None:
    """A HEAD on a redirected download gets 303, as Grape does for non-GET."""
    url = project(redirecting, f"files/{SHA}/{WHEEL_NAME}")
    assert client.head(url, auth=AUTH["alice"]).status_code == 303


def test_object_storage_refuses_authorization(
    redirecting: FakeGitLab, client: httpx.Client
) -> None:
    """A presigned URL fetched with Authorization is a 403 and a counted violation."""
    url = project(redirecting, f"files/{SHA}/{WHEEL_NAME}")
    location = client.get(url, auth=AUTH["alice"]).headers["location"]
    assert client.get(location, auth=AUTH["alice"]).status_code == 403
    assert redirecting.object_auth_violations == 1


@pytest.mark.parametrize("redirect", [False, True])
def test_truncated_download_breaks_mid_body(client: httpx.Client, redirect: bool) -> None:
    """truncate_files announces the full length, sends half and hangs up."""
    with FakeGitLab(redirect_downloads=redirect) as server:
        populate(server)
        server.truncate_files = True
        url = project(server, f"files/{SHA}/{WHEEL_NAME}")
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(url, auth=AUTH["alice"], follow_redirects=True)


def test_corrupt_download_has_the_length_but_not_the_hash(
    fake: FakeGitLab, client: httpx.Client
) -> None:
    """corrupt_files keeps the length and changes the bytes."""
    fake.corrupt_files = True
    body = client.get(project(fake, f"files/{SHA}/{WHEEL_NAME}"), auth=AUTH["alice"]).content
    assert len(body) == len(WHEEL)
    assert hashlib.sha256(body).hexdigest() != SHA


# --- upload ----------------------------------------------------------------------------


def test_upload_adds_a_file_to_the_page(fake: FakeGitLab, client: httpx.Client) -> None:
    """A developer's upload is 201 and its file is listed with the sent sha256 and metadata."""
    response = upload(
        client, project(fake, ""), AUTH["alice"], name="my.package", version="1.0",
        content=b"other", filename="my_package-1.0.tar.gz", requires_python=">=3.9",
    )  # fmt: skip
    assert (response.status_code, response.json()) == (201, {"message": "201 Created"})
    stored = fake.files(42)[-1]
    assert (stored.version, stored.sha256, stored.content) == ("1.0", SHA, b"other")
    page = client.get(project(fake, "simple/my-package"), auth=AUTH["alice"]).text
    assert f"/files/{SHA}/my_package-1.0.tar.gz#sha256={SHA}" in page
    assert page.count('data-requires-python="&gt;=3.9"') == 1
    assert fake.counts["upload"] == 1
    assert fake.upload_bytes_received == int(response.request.headers["content-length"])


@pytest.mark.parametrize(
    ("fields", "body"),
    [
        ({"name": None}, {"error": "name is missing"}),
        ({"name": None, "version": None}, {"error": "name is missing, version is missing"}),
        ({"sha256_digest": "xyz"}, {"error": "sha256_digest is invalid"}),
        ({"version": "not a version"}, {"message": f"{INVALID} Version is invalid"}),
        ({"content": b"x" * 101}, {"message": "400 Bad request - File is too large"}),
    ],
)
def test_upload_validation_errors(
    client: httpx.Client, fields: dict[str, str | bytes | None], body: dict[str, str]
) -> None:
    """Missing fields, a malformed sha256, a bad version and a big file are 400s."""
    with FakeGitLab(max_file_size=100) as server:
        populate(server)
        response = upload(client, project(server, ""), AUTH["alice"], **{"content": b"x"} | fields)
    assert (response.status_code, response.json()) == (400, body)


def test_duplicate_file_name_is_400(fake: FakeGitLab, client: httpx.Client) -> None:
    """The same file name twice in one (name, version) is a 400, not 409."""
    url = project(fake, "")
    kwargs = {"name": "my.package", "version": "1.0"}
    response = upload(client, url, AUTH["alice"], **kwargs)
    message = f"{INVALID} File name has already been taken"
    assert (response.status_code, response.json()) == (400, {"message": message})


@pytest.mark.parametrize(
    ("sent", "stored"),
    [("../../evil name!.whl", "evil_name_.whl"), ("..", "_.."), ("C:\\x\\ü.whl", "ü.whl")],
)
def test_upload_sanitizes_the_file_name(
    fake: FakeGitLab, client: httpx.Client, sent: str, stored: str
) -> None:
    """CarrierWave keeps the basename and replaces characters outside [\\w.+-]."""
    assert upload(client, project(fake, ""), AUTH["alice"], filename=sent).status_code == 201
    assert fake.files(42)[-1].filename == stored


def test_upload_without_sha_stores_the_real_one(fake: FakeGitLab, client: httpx.Client) -> None:
    """Without sha256_digest the fake stores the content's real sha256 (a simplification)."""
    upload(client, project(fake, ""), AUTH["alice"], sha256_digest=None, content=b"abc")
    assert fake.files(42)[-1].sha256 == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize(
    ("pid", "who", "status"),
    [
        ("42", "alice", 201),
        ("42", "job", 201),
        ("42", "deploy42", 201),
        ("42", "gary", 403),
        ("43", "bob", 403),
        ("42", None, 401),
        ("43", "wrong", 401),
        ("42", "bob", 404),
    ],
)
def test_upload_access(
    fake: FakeGitLab, client: httpx.Client, pid: str, who: str | None, status: int
) -> None:
    """Developers upload; guests and strangers to public projects get 403."""
    response = upload(client, project(fake, "", pid), AUTH[who] if who else None)
    assert response.status_code == status


def test_chunked_upload_is_read_incrementally(fake: FakeGitLab, client: httpx.Client) -> None:
    """A chunked body is counted while it arrives, before the client has sent it all."""
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nchunky\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="version"\r\n\r\n1.0\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="c.whl"\r\n'
        "\r\n"
    ).encode()
    payload = b"\r\n\x00" * 50_000

    def body() -> Iterator[bytes]:
        yield head + payload
        wait_until(lambda: fake.upload_bytes_received >= len(head) + len(payload))
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = client.post(project(fake, ""), content=body(), headers=headers, auth=AUTH["alice"])
    assert response.status_code == 201
    assert fake.files(42)[-1].content == payload


@pytest.mark.parametrize("length", ["abc", "1x"])
def test_malformed_content_length_is_400(fake: FakeGitLab, length: str) -> None:
    """A Content-Length that is not a number is a 400 and the connection is closed."""
    connection = http.client.HTTPConnection(fake.url.removeprefix("http://"), timeout=5)
    connection.putrequest("POST", "/api/v4/projects/42/packages/pypi")
    connection.putheader("Content-Length", length)
    connection.endheaders()
    response = connection.getresponse()
    assert (response.status, response.getheader("connection")) == (400, "close")
    connection.close()


def test_put_is_not_an_upload_route(fake: FakeGitLab, client: httpx.Client) -> None:
    """There is no PUT route: the fake answers 405 with Allow: POST."""
    response = client.put(project(fake, ""), content=b"x", auth=AUTH["alice"])
    assert (response.status_code, response.headers["allow"]) == (405, "POST")
    assert fake.counts == {"other": 1}


@pytest.mark.e2e
def test_twine_uploads_to_the_fake(fake: FakeGitLab, tmp_path: Path) -> None:
    """twine's real multipart upload is accepted and stored."""
    (tmp_path / WHEEL_NAME).write_bytes(WHEEL)
    fake.add_project(1, "fresh", group=7)
    fake.add_member("alice", project=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINE_", "PIP_"))}
    command = [sys.executable, "-m", "twine", "upload", "--non-interactive"]
    command += ["--disable-progress-bar", "--repository-url", project(fake, "", "acme%2Ffresh")]
    command += ["-u", "gitlab-ci-token", "-p", "alice-job", str(tmp_path / WHEEL_NAME)]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=60)
    stored = fake.files(1)[0]
    assert (stored.name, stored.filename, stored.sha256) == ("my.package", WHEEL_NAME, SHA)
    assert stored.requires_python == ">=3.8"


# --- faults and observation ------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_fail_status_answers_every_request(
    fake: FakeGitLab, client: httpx.Client, status: int
) -> None:
    """fail_status turns every API answer into that status with a JSON message."""
    fake.fail_status, fake.retry_after = status, 7
    response = client.get(project(fake, ident="43"))
    assert (response.status_code, response.headers["retry-after"]) == (status, "7")
    assert response.json()["message"].startswith(str(status))


def test_rate_limit_is_plain_text(fake: FakeGitLab, client: httpx.Client) -> None:
    """A 429 says "Retry later" in text/plain, like Rack::Attack."""
    fake.fail_status = 429
    response = client.get(project(fake, ident="43"))
    assert response.headers["content-type"] == "text/plain"
    assert (response.status_code, response.text.strip()) == (429, "Retry later")
    assert "retry-after" not in response.headers


def test_delay_slows_every_answer(fake: FakeGitLab, client: httpx.Client) -> None:
    """delay holds each API answer back by that many seconds."""
    fake.delay = 0.2
    began = time.perf_counter()
    client.get(project(fake, ident="43"))
    assert time.perf_counter() - began >= 0.2


@pytest.mark.parametrize(
    "rest", ["simple", "simple/pub-lib", "simple/nope", "files/x/y", "", "nothing"]
)
def test_every_response_is_nosniff(fake: FakeGitLab, client: httpx.Client, rest: str) -> None:
    """X-Content-Type-Options: nosniff is on every answer."""
    response = client.get(project(fake, rest, "43"))
    assert response.headers["x-content-type-options"] == "nosniff"


def test_requests_are_recorded_raw_and_reset(fake: FakeGitLab, client: httpx.Client) -> None:
    """Requests keep their raw path and lower-cased headers until reset_counts."""
    client.get(project(fake, "simple/x", "acme%2Fpub"), headers={"X-Trace": "1"})
    recorded = fake.requests[0]
    assert recorded.path == "/api/v4/projects/acme%2Fpub/packages/pypi/simple/x"
    assert (recorded.method, recorded.server, recorded.headers["x-trace"]) == ("GET", "gitlab", "1")
    assert fake.counts == {"page": 1}
    fake.reset_counts()
    assert (fake.requests, fake.counts) == ([], {})


def test_concurrent_requests_are_all_counted(fake: FakeGitLab) -> None:
    """Counters stay exact under concurrent requests."""

    def hit() -> None:
        with loopback_client() as c:
            for _ in range(10):
                c.get(project(fake, ident="43"))

    threads = [threading.Thread(target=hit) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake.counts == {"index": 50}


# --- distfactory -----------------------------------------------------------------------


def test_wheel_has_spec_name_and_correct_record() -> None:
    """Wheel names use underscores and RECORD lists every file with its hash."""
    name, data = make_wheel("My-Pkg", "1.0", requires_python=">=3.8")
    assert name == "my_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        record = archive.read("my_pkg-1.0.dist-info/RECORD").decode().splitlines()
        metadata = archive.read("my_pkg-1.0.dist-info/METADATA").decode()
        for line in record[:-1]:
            path, digest, size = line.split(",")
            content = archive.read(path)
            assert int(size) == len(content)
            encoded = base64.urlsafe_b64encode(hashlib.sha256(content).digest())
            assert digest == "sha256=" + encoded.rstrip(b"=").decode()
    assert "Requires-Python: >=3.8" in metadata
    assert record[-1] == "my_pkg-1.0.dist-info/RECORD,,"


def test_wheel_installs_with_pip(tmp_path: Path) -> None:
    """Real pip installs the wheel offline, and the module has the version."""
    name, data = make_wheel("my-pkg", "1.2")
    wheel = tmp_path / name
    wheel.write_bytes(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    target = tmp_path / "site"
    command = [sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir"]
    command += ["--no-index", "--disable-pip-version-check", "--target", str(target), str(wheel)]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=60)
    assert (target / "my_pkg" / "__init__.py").read_text() == '__version__ = "1.2"\n'
    assert (target / "my_pkg-1.2.dist-info" / "METADATA").exists()


def test_sdist_has_pkg_info_and_pyproject() -> None:
    """The sdist is name-version.tar.gz with PKG-INFO and a setuptools pyproject.toml."""
    name, data = make_sdist("My.Pkg", "1.0")
    assert name == "my_pkg-1.0.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        names = archive.getnames()
        pyproject = archive.extractfile("my_pkg-1.0/pyproject.toml")
        assert pyproject is not None
        text = pyproject.read().decode()
    assert {"my_pkg-1.0/PKG-INFO", "my_pkg-1.0/my_pkg/__init__.py"} <= set(names)
    assert 'build-backend = "setuptools.build_meta"' in text
    assert make_sdist("My.Pkg", "1.0")[1] == data  # reproducible bytes
