"""A fake GitLab PyPI registry (plus its object storage) served over real HTTP on loopback."""

from __future__ import annotations

import base64
import collections
import hashlib
import http
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from types import TracebackType
from typing import TypeVar

from tests import fakepages
from tests.fakehttp import (
    Faults,
    LoopbackServer,
    Request,
    Response,
    json_response,
    parse_multipart,
)

# guest < reporter < developer < maintainer < owner (Gitlab::Access levels).
ROLES = {"guest": 10, "reporter": 20, "developer": 30, "maintainer": 40, "owner": 50}
_GUEST, _DEVELOPER = ROLES["guest"], ROLES["developer"]
_SHA256 = re.compile(r"[0-9a-f]{64}", re.IGNORECASE)
# Gitlab::Regex.pypi_version_regex: the PEP 440 appendix-B regex, leading "v" allowed.
_VERSION = re.compile(
    r"v?(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*"
    r"(?:[-_.]?(?:a|b|c|rc|alpha|beta|pre|preview)[-_.]?[0-9]*)?"
    r"(?:-[0-9]+|[-_.]?(?:post|rev|r)[-_.]?[0-9]*)?"
    r"(?:[-_.]?dev[-_.]?[0-9]*)?"
    r"(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?",
    re.IGNORECASE,
)
# Gitlab::Regex.package_name_regex (approximation): "even allows / and @".
_NAME = re.compile(r"@?(?:[\w\-.+]*/)*[\w\-.]+@?(?:[\w\-.+]*/)*[\w\-.+]*")
_PROJECT_ROUTE = re.compile(r"/api/v4/projects/([^/]+)/packages/pypi(?:/(.*))?")
_GROUP_ROUTE = re.compile(r"/api/v4/groups/([^/]+)/-/packages/pypi(?:/(.*))?")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Recorded:
    """One request as received: raw path, lower-cased header names, which server."""

    method: str
    path: str
    headers: dict[str, str]
    server: str  # "gitlab" | "object"


@dataclass(frozen=True)
class StoredFile:
    """A package file as GitLab's database holds it."""

    project: int
    name: str
    version: str
    filename: str
    sha256: str  # "stored verbatim as file_sha256", never checked against content
    content: bytes
    requires_python: str


@dataclass
class _Package:
    id: int
    project: int
    name: str
    version: str
    requires_python: str  # package-level metadatum: "upserted on each upload"
    files: list[StoredFile] = field(default_factory=list)


@dataclass(frozen=True)
class _Space:
    """A group or a project: `parent` is the enclosing group's id."""

    id: int
    path: str
    name: str  # the display name, the title of index pages
    visibility: str  # "public" | "internal" | "private"
    parent: int | None


@dataclass(frozen=True)
class _Token:
    kind: str
    user: str | None
    project: int | None
    group: int | None


@dataclass(frozen=True)
class _Caller:
    user: str | None = None
    deploy: _Token | None = None

    @property
    def authenticated(self) -> bool:
        return self.user is not None or self.deploy is not None


def _not_found(message: str = "404 Not Found") -> Response:
    return json_response(404, {"message": message})


def _unauthorized() -> Response:
    # unauthorized! is overridden to add this header; the body is Grape's JSON error.
    realm = {"WWW-Authenticate": 'Basic realm="GitLab Packages Registry"'}
    return json_response(401, {"message": "401 Unauthorized"}, realm)


def _normalize(name: str) -> str:
    # normalized_pypi_name = name.gsub(/[-_.]+/o, '-').downcase
    return re.sub(r"[-_.]+", "-", name).lower()


def _sanitize(filename: str) -> str:
    # CarrierWave: basename, [^[:word:].\-+] -> "_", dots-only gets "_", empty -> "unnamed".
    name = re.sub(r"[^\w.\-+]", "_", filename.replace("\\", "/").rsplit("/", 1)[-1])
    if name and set(name) == {"."}:
        name = "_" + name
    return name or "unnamed"


@dataclass(frozen=True)
class _Route:
    kind: str  # "index" | "page" | "file" | "upload" | "other"
    scope: str = ""  # "projects" | "groups"
    ident: str = ""  # the raw :id, numeric or URL-encoded full path
    name: str = ""  # package name (page) or file name (file)
    sha256: str = ""
    allowed: tuple[str, ...] = ("GET", "HEAD")


_OTHER = _Route("other", allowed=())


class FakeGitLab:
    """GitLab's PyPI API as gitlab-pypi-api.md describes it, with switches to misbehave."""

    def __init__(
        self,
        *,
        relative_root: str = "",
        redirect_downloads: bool = False,
        forwarding_url: str | None = "https://pypi.org/simple/",
        pep691: bool = False,
        max_file_size: int = 3 * 1024**3,
    ) -> None:
        root = relative_root.strip("/")
        self.relative_root = f"/{root}" if root else ""
        self.redirect_downloads = redirect_downloads
        self.forwarding_url = forwarding_url
        self.pep691 = pep691
        self.max_file_size = max_file_size
        self.delay = 0.0
        self.fail_status: int | None = None
        self.retry_after: int | None = None
        self.truncate_files = False
        self.corrupt_files = False
        self.stall_files_after: int | None = None  # send this many bytes, then wait
        self.stalled = threading.Event()  # set when a download reached the stall
        self.stall_release = threading.Event()  # set it to let stalled downloads finish
        self.counts: collections.Counter[str] = collections.Counter()
        self.requests: list[Recorded] = []
        self.upload_bytes_received = 0
        self.object_auth_violations = 0
        self._lock = threading.RLock()
        self._users: set[str] = set()
        self._tokens: dict[str, _Token] = {}
        self._groups: dict[int, _Space] = {}
        self._projects: dict[int, _Space] = {}
        self._members: dict[tuple[str, str, int], int] = {}
        self._packages: list[_Package] = []
        self._uploads: list[StoredFile] = []
        self._links: dict[str, tuple[StoredFile, str]] = {}  # key -> (file, signature)
        self._gitlab: LoopbackServer | None = None
        self._object: LoopbackServer | None = None
        self._port = 0

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Listen on two random loopback ports: GitLab and its object storage."""
        self._object = LoopbackServer(0, self._serve_object, self._faults)
        self._gitlab = LoopbackServer(0, self._serve_gitlab, self._faults)
        self._port = self._gitlab.server_port

    def stop(self) -> None:
        """Close both servers and every open connection."""
        self.stall_release.set()
        for server in (self._gitlab, self._object):
            if server is not None:
                server.close()
        self._gitlab = self._object = None

    def __enter__(self) -> FakeGitLab:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """GitLab's external URL including the relative root, without a trailing slash."""
        if not self._port:
            raise RuntimeError("FakeGitLab is not started")
        return f"http://127.0.0.1:{self._port}{self.relative_root}"

    @property
    def object_storage_url(self) -> str:
        """Base URL of the object storage server that presigned download links point at."""
        if self._object is None:
            raise RuntimeError("FakeGitLab is not started")
        return f"http://127.0.0.1:{self._object.server_port}"

    def set_down(self, down: bool) -> None:
        """Refuse connections (and cut open ones) when down; listen on the same port when up."""
        if down and self._gitlab is not None:
            self._gitlab.close()
            self._gitlab = None
        elif not down and self._gitlab is None and self._object is not None:
            self._gitlab = LoopbackServer(self._port, self._serve_gitlab, self._faults)

    # --- model ---------------------------------------------------------------------------
    def add_user(self, username: str) -> None:
        with self._lock:
            self._users.add(username)

    def add_token(
        self,
        token: str,
        *,
        user: str | None = None,
        kind: str = "personal",
        project: int | None = None,
        group: int | None = None,
    ) -> None:
        """Register a personal/job token acting as `user`, or a deploy token for a project/group."""
        if kind not in ("personal", "deploy", "job"):
            raise ValueError(f"unknown token kind {kind!r}")
        if kind == "deploy" and (project is None) == (group is None):
            raise ValueError("a deploy token belongs to exactly one project or group")
        if kind != "deploy" and user not in self._users:
            raise ValueError(f"{kind} token needs a known user, got {user!r}")
        with self._lock:
            self._tokens[token] = _Token(kind, user, project, group)

    def add_group(
        self,
        gid: int,
        path: str,
        *,
        name: str | None = None,
        visibility: str = "private",
        parent: int | None = None,
    ) -> None:
        with self._lock:
            self._groups[gid] = _Space(gid, path, name or path, visibility, parent)

    def add_project(
        self,
        pid: int,
        path: str,
        *,
        name: str | None = None,
        visibility: str = "private",
        group: int | None = None,
    ) -> None:
        with self._lock:
            self._projects[pid] = _Space(pid, path, name or path, visibility, group)

    def add_member(
        self,
        user: str,
        *,
        project: int | None = None,
        group: int | None = None,
        role: str = "developer",
    ) -> None:
        if (project is None) == (group is None) or role not in ROLES:
            raise ValueError("give exactly one of project/group and a role in ROLES")
        with self._lock:
            if project is not None:
                self._members[(user, "project", project)] = ROLES[role]
            if group is not None:
                self._members[(user, "group", group)] = ROLES[role]

    def add_file(
        self,
        pid: int,
        name: str,
        version: str,
        filename: str,
        content: bytes,
        *,
        sha256: str | None = None,
        requires_python: str = "",
    ) -> str:
        """Store a file as an upload would (no sanitizing); return its stored sha256."""
        stored = hashlib.sha256(content).hexdigest() if sha256 is None else sha256
        with self._lock:
            if pid not in self._projects:
                raise ValueError(f"unknown project {pid}")
            package = next(
                (
                    p
                    for p in self._packages
                    if (p.project, p.name, p.version) == (pid, name, version)
                ),
                None,
            )
            if package is None:
                # "Package records are found or created by exact (name, version)."
                package = _Package(len(self._packages) + 1, pid, name, version, requires_python)
                self._packages.append(package)
            if any(f.filename == filename for f in package.files):
                raise ValueError("File name has already been taken")
            package.requires_python = requires_python  # the metadatum row is upserted
            file = StoredFile(pid, name, version, filename, stored, content, requires_python)
            package.files.append(file)
            self._uploads.append(file)
        return stored

    def files(self, pid: int) -> list[StoredFile]:
        """Every stored file of a project, in upload order."""
        with self._lock:
            return [f for f in self._uploads if f.project == pid]

    def reset_counts(self) -> None:
        """Forget counts, recorded requests, upload bytes and auth violations."""
        with self._lock:
            self.counts.clear()
            self.requests.clear()
            self.upload_bytes_received = 0
            self.object_auth_violations = 0

    # --- serving (called from handler threads) -----------------------------------------
    def _serve_gitlab(self, request: Request) -> Response:
        self._record(request, "gitlab")
        route = self._route(request.path, request.method)
        self._observe(kind=route.kind)
        body = request.read_body(self._received if route.kind == "upload" else None)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_status is not None:
            raise self._failure()
        with self._lock:
            return self._answer(route, request.headers, body, request.method)

    def _serve_object(self, request: Request) -> Response:
        self._record(request, "object")
        self._observe(kind="object")
        request.read_body()
        has_authorization = "Authorization" in request.headers
        return self._object_answer(request.path, request.method, has_authorization)

    def _faults(self) -> Faults:
        return Faults(
            truncate=self.truncate_files,
            corrupt=self.corrupt_files,
            stall_after=self.stall_files_after,
            stalled=self.stalled,
            release=self.stall_release,
        )

    def _received(self, size: int) -> None:
        self._observe(upload=size)

    def _record(self, request: Request, server: str) -> None:
        headers = {key.lower(): value for key, value in request.headers.items()}
        self._observe(request=Recorded(request.method, request.path, headers, server))

    def _observe(self, *, request: Recorded | None = None, kind: str = "", upload: int = 0) -> None:
        with self._lock:
            self.requests.extend([request] if request else [])
            self.counts.update([kind] if kind else [])
            self.upload_bytes_received += upload

    def _failure(self) -> Response:
        status = self.fail_status or 500
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        if status == 429:
            # Rack::Attack: text/plain rate_limiting_response_text, default "Retry later".
            return Response(status, b"Retry later\n", {"Content-Type": "text/plain", **headers})
        return json_response(
            status, {"message": f"{status} {http.HTTPStatus(status).phrase}"}, headers
        )

    # --- routing -------------------------------------------------------------------------
    def _route(self, raw: str, method: str) -> _Route:
        # Grape "strips trailing slashes and squeezes //"; ids match [^/]+ on the raw path.
        path = re.sub("/+", "/", raw.split("?", 1)[0]).rstrip("/")
        if self.relative_root:
            if path != self.relative_root and not path.startswith(self.relative_root + "/"):
                return _OTHER
            path = path[len(self.relative_root) :]
        route = _OTHER
        for scope, pattern in (("projects", _PROJECT_ROUTE), ("groups", _GROUP_ROUTE)):
            match = pattern.fullmatch(path)
            if match:
                route = self._route_tail(scope, match[1], (match[2] or "").split("/"))
        if route.kind != "other" and method not in route.allowed:
            return _Route("other", allowed=route.allowed)
        return route

    @staticmethod
    def _route_tail(scope: str, ident: str, tail: list[str]) -> _Route:
        unquote = urllib.parse.unquote
        if tail == [""] and scope == "projects":
            return _Route("upload", scope, ident, allowed=("POST",))  # no PUT route
        if tail == ["simple"]:
            return _Route("index", scope, ident)
        if tail[0] == "simple":
            return _Route("page", scope, ident, name=unquote("/".join(tail[1:])))
        if tail[0] == "files" and len(tail) >= 3:
            # files/:sha256/*file_identifier: everything after the sha is the file name.
            return _Route("file", scope, ident, unquote("/".join(tail[2:])), unquote(tail[1]))
        return _OTHER

    def _answer(self, route: _Route, headers: Message, body: bytes, method: str) -> Response:
        if route.kind == "other":
            if route.allowed:
                allow = {"Allow": ", ".join(route.allowed)}
                return json_response(405, {"message": "405 Method Not Allowed"}, allow)
            return _not_found()
        caller = self._caller(headers)
        if route.scope == "groups":
            group = self._find(self._groups, route.ident, self._group_path)
            if not self._can_read_group(caller, group.id):
                # find_authorized_group!: anonymous -> 401, authenticated -> 404.
                raise _not_found() if caller.authenticated else _unauthorized()
            subtree = self._subtree(group.id)
            pids = [p.id for p in self._projects.values() if p.parent in subtree]
            base = f"{self.url}/api/v4/groups/{group.id}/-/packages/pypi"
            title = group.name
        else:
            project = self._find(self._projects, route.ident, self._project_path)
            if route.kind == "upload":
                return self._upload(caller, project, headers, body)
            if not self._can_read(caller, project.id):
                raise _not_found() if caller.authenticated else _unauthorized()
            pids, base, title = (
                [project.id],
                f"{self.url}/api/v4/projects/{project.id}/packages/pypi",
                project.name,
            )
        if route.kind == "file":
            return self._download(route, pids, method)
        visible = [
            p for p in self._packages if p.project in pids and self._can_read(caller, p.project)
        ]
        want_json = self.pep691 and fakepages.wants_json(headers.get("Accept", ""))
        if route.kind == "index":
            if want_json:
                names = sorted({_normalize(p.name) for p in visible})
                return self._page(headers, {"projects": [{"name": n} for n in names]})
            links = [
                fakepages.anchor(f"{base}/simple/{_normalize(p.name)}", p.requires_python, p.name)
                for p in visible
            ]
            return self._page(headers, fakepages.html(title, links))
        # "The stored name is normalized; the request name is only lower-cased."
        matching = [p for p in visible if _normalize(p.name) == route.name.lower()]
        if not matching:
            return self._forward(route.name, method)
        # The newest presenter: per-file requires_python first, else the package-level value.
        files = [(f, f.requires_python or p.requires_python) for p in matching for f in p.files]

        def href(f: StoredFile) -> str:  # "the path helper drops blank segments"
            path = "/".join(s for s in ("files", f.sha256, f.filename) if s)
            return f"{base}/{path}#sha256={f.sha256}"

        if want_json:
            entries = [fakepages.json_file(f.filename, href(f), f.sha256, rp) for f, rp in files]
            return self._page(headers, {"name": _normalize(matching[0].name), "files": entries})
        links = [fakepages.anchor(href(f), rp, f.filename) for f, rp in files]
        return self._page(headers, fakepages.html(matching[0].name, links))

    def _page(self, request: Message, content: bytes | dict[str, object]) -> Response:
        return fakepages.page(request, content, vary=self.pep691)

    def _forward(self, name: str, method: str) -> Response:
        if self.forwarding_url is None:
            raise _not_found("404 Package Not Found")
        # "Location: https://pypi.org/simple/<name as requested, not normalized, not escaped>/"
        return self._redirect(f"{self.forwarding_url}{name}/", method)

    @staticmethod
    def _redirect(location: str, method: str) -> Response:
        # Grape's redirect: text/plain body; a non-GET (HEAD) redirect on HTTP/1.1 is 303.
        body = f"This resource has been moved temporarily to {location}.".encode()
        headers = {"Location": location, "Content-Type": "text/plain"}
        return Response(302 if method == "GET" else 303, body, headers)

    def _download(self, route: _Route, pids: list[int], method: str) -> Response:
        # by_file_name_and_sha256(...).last!: equality on (file_name, stored file_sha256).
        found = [
            f
            for p in self._packages
            if p.project in pids
            for f in p.files
            if (f.filename, f.sha256) == (route.name, route.sha256)
        ]
        if not found:
            raise _not_found(
                "404 Package Not Found" if route.scope == "projects" else "404 Not found"
            )
        file = found[-1]
        if self.redirect_downloads:
            key, signature = secrets.token_hex(16), secrets.token_hex(32)
            self._links[key] = (file, signature)
            quoted = urllib.parse.quote(file.filename, safe="")
            query = (
                f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=600&X-Amz-Signature={signature}"
            )
            return self._redirect(
                f"{self.object_storage_url}/bucket/{key}/{quoted}?{query}", method
            )
        return self._file_response(
            file.filename, file.content, {"Content-Transfer-Encoding": "binary"}
        )

    @staticmethod
    def _file_response(filename: str, content: bytes, extra: dict[str, str]) -> Response:
        quoted = urllib.parse.quote(filename, safe="")
        disposition = f"attachment; filename=\"{filename}\"; filename*=UTF-8''{quoted}"
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": disposition,
            "Accept-Ranges": "bytes",
            **extra,
        }
        return Response(200, content, headers, download=True)

    def _object_answer(self, raw: str, method: str, has_authorization: bool) -> Response:
        def s3_error(status: int, code: str) -> Response:
            body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code></Error>'
            return Response(status, body.encode(), {"Content-Type": "application/xml"})

        if has_authorization:
            # A presigned URL is its own credential; forwarding GitLab's is a leak.
            with self._lock:
                self.object_auth_violations += 1
            return s3_error(403, "InvalidArgument")
        if method not in ("GET", "HEAD"):
            return s3_error(405, "MethodNotAllowed")
        parts = urllib.parse.urlsplit(raw)
        match = re.fullmatch(r"/bucket/([0-9a-f]+)/([^/]+)", parts.path)
        with self._lock:
            file, expected = self._links.get(match[1] if match else "", (None, ""))
        if file is None or match is None or urllib.parse.unquote(match[2]) != file.filename:
            return s3_error(404, "NoSuchKey")
        signature = urllib.parse.parse_qs(parts.query).get("X-Amz-Signature", [""])[0]
        if not secrets.compare_digest(signature, expected):
            return s3_error(403, "SignatureDoesNotMatch")
        etag = f'"{hashlib.md5(file.content).hexdigest()}"'
        return self._file_response(file.filename, file.content, {"ETag": etag})

    # --- upload --------------------------------------------------------------------------
    def _upload(self, caller: _Caller, project: _Space, headers: Message, body: bytes) -> Response:
        if not caller.authenticated:
            raise _unauthorized()
        if not self._can_read(caller, project.id):  # project!(action: :read_project)
            raise _not_found()
        deploy = caller.deploy is not None and self._deploy_covers(caller.deploy, project)
        if not deploy and self._role(caller, project) < _DEVELOPER:
            raise json_response(403, {"message": "403 Forbidden"})
        fields = parse_multipart(headers.get("Content-Type", ""), body)
        content = fields.get("content")
        missing = [key for key in ("content", "name", "version") if key not in fields]
        if content is not None and content[0] is None:
            missing.insert(0, "content")  # a plain text field is no WorkhorseFile
        if missing:
            raise json_response(400, {"error": ", ".join(f"{key} is missing" for key in missing)})
        text = {key: value.decode("utf-8", "replace") for key, (_, value) in fields.items()}
        sha256 = text.get("sha256_digest")
        if sha256 is not None and not _SHA256.fullmatch(sha256):
            raise json_response(400, {"error": "sha256_digest is invalid"})
        assert content is not None
        assert content[0] is not None
        if len(content[1]) > self.max_file_size:
            raise json_response(400, {"message": "400 Bad request - File is too large"})
        for key, pattern in (("name", _NAME), ("version", _VERSION)):
            if not pattern.fullmatch(text[key]):
                message = f"400 Bad request - Validation failed: {key.capitalize()} is invalid"
                raise json_response(400, {"message": message})
        try:
            # Simplification: real GitLab stores nil without sha256_digest; we store the real one.
            self.add_file(
                project.id,
                text["name"],
                text["version"],
                _sanitize(content[0]),
                content[1],
                sha256=sha256,
                requires_python=text.get("requires_python", "")[:255],
            )
        except ValueError as error:
            raise json_response(
                400, {"message": f"400 Bad request - Validation failed: {error}"}
            ) from None
        return json_response(201, {"message": "201 Created"})

    # --- auth ----------------------------------------------------------------------------
    def _caller(self, headers: Message) -> _Caller:
        scheme, _, credential = headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            token = self._tokens.get(credential.strip())
            if token is None or token.kind != "personal":
                # The API guard's OAuth-style responder, not the Basic realm.
                raise json_response(
                    401,
                    {"message": "401 Unauthorized"},
                    {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'},
                )
            return _Caller(user=token.user)
        if scheme.lower() != "basic":
            return _Caller()
        try:
            username, _, password = (
                base64.b64decode(credential, validate=True).decode().partition(":")
            )
        except ValueError:
            return _Caller()
        token = self._tokens.get(password)
        if username == "gitlab-ci-token":
            # A CI job token only with this username; a wrong one is a 401, not anonymous.
            if token is None or token.kind != "job":
                raise _unauthorized()
            return _Caller(user=token.user)
        if token is not None and token.kind == "deploy":
            return _Caller(deploy=token)
        if token is not None and token.kind == "personal":
            return _Caller(user=token.user)
        return _Caller()  # "A wrong token is treated as anonymous, not as 401."

    @staticmethod
    def _find(table: dict[int, _T], ident: str, full_path: Callable[[int], str]) -> _T:
        # find_project/find_group: a numeric id or a URL-encoded full path, else 404 for all.
        if ident.isdigit():
            found = table.get(int(ident))
        else:
            wanted = urllib.parse.unquote(ident).lower()
            found = next((v for k, v in table.items() if full_path(k).lower() == wanted), None)
        if found is None:
            raise _not_found()
        return found

    def _ancestors(self, gid: int | None) -> list[int]:
        chain: list[int] = []
        while gid is not None and gid in self._groups and gid not in chain:
            chain.append(gid)
            gid = self._groups[gid].parent
        return chain

    def _subtree(self, gid: int) -> set[int]:
        return {g for g in self._groups if gid in self._ancestors(g)}

    def _group_path(self, gid: int) -> str:
        return "/".join(self._groups[g].path for g in reversed(self._ancestors(gid)))

    def _project_path(self, pid: int) -> str:
        project = self._projects[pid]
        prefix = self._group_path(project.parent) if project.parent in self._groups else ""
        return f"{prefix}/{project.path}" if prefix else project.path

    def _role(self, caller: _Caller, project: _Space) -> int:
        if caller.user is None:
            return 0
        levels = [self._members.get((caller.user, "project", project.id), 0)]
        levels += [
            self._members.get((caller.user, "group", g), 0) for g in self._ancestors(project.parent)
        ]
        return max(levels)

    def _deploy_covers(self, token: _Token, project: _Space) -> bool:
        return token.project == project.id or token.group in self._ancestors(project.parent)

    def _can_read(self, caller: _Caller, pid: int) -> bool:
        project = self._projects[pid]
        if project.visibility == "public" or (project.visibility == "internal" and caller.user):
            return True
        if caller.deploy is not None:
            return self._deploy_covers(caller.deploy, project)
        return self._role(caller, project) >= _GUEST

    def _can_read_group(self, caller: _Caller, gid: int) -> bool:
        group = self._groups[gid]
        if group.visibility == "public" or (group.visibility == "internal" and caller.user):
            return True
        if caller.deploy is not None:
            return caller.deploy.group in self._ancestors(gid)
        if caller.user is None:
            return False
        # Members of the group, an ancestor, a subgroup or a project inside can see it.
        subtree = self._subtree(gid)
        groups = set(self._ancestors(gid)) | subtree
        projects = {p.id for p in self._projects.values() if p.parent in subtree}
        return any(
            (user == caller.user and kind == "group" and target in groups)
            or (user == caller.user and kind == "project" and target in projects)
            for user, kind, target in self._members
        )
