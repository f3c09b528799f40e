"""A fake GitLab PyPI registry (plus its object storage) served over real HTTP on loopback."""

from __future__ import annotations

import collections
import functools
import hashlib
import http
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass
from email.message import Message
from types import TracebackType

from tests import fakepages
from tests.fakehttp import (
    Faults,
    LoopbackServer,
    Request,
    Response,
    json_response,
    parse_multipart,
)
from tests.fakemodel import (
    ROLES,
    Caller,
    GitLabModel,
    Package,
    RejectedCredentials,
    Space,
    StoredFile,
    normalize,
    with_normalized_pypi_name,
)

__all__ = ["ROLES", "FakeGitLab", "Recorded", "StoredFile"]

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
# The package REST API: GET /projects/:id/packages, /groups/:id/packages and
# /projects/:id/packages/:package_id/package_files (lib/api/{project,group}_packages.rb,
# package_files.rb).
_REST_ROUTE = re.compile(r"/api/v4/(projects|groups)/([^/]+)/packages(?:/([0-9]+)/package_files)?")


@dataclass(frozen=True)
class Recorded:
    """One request as received: raw path, lower-cased header names, which server."""

    method: str
    path: str
    headers: dict[str, str]
    server: str  # "gitlab" | "object"


def _not_found(message: str = "404 Not Found") -> Response:
    return json_response(404, {"message": message})


def _unauthorized() -> Response:
    # unauthorized! is overridden to add this header; the body is Grape's JSON error.
    realm = {"WWW-Authenticate": 'Basic realm="GitLab Packages Registry"'}
    return json_response(401, {"message": "401 Unauthorized"}, realm)


def _found(space: Space | None) -> Space:
    # project!/find_group: "an unknown project or group ID returns 404 even to anonymous callers".
    if space is None:
        raise _not_found()
    return space


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
        self.api_status: int | None = None  # the package REST API answers this instead
        self.api_delay = 0.0  # seconds the package REST API waits before answering
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
        self._model = GitLabModel()
        self._lock = threading.RLock()  # the counters, recorded requests and links
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

    # --- model (GitLabModel holds the state and the rules) ------------------------------
    def add_user(self, username: str) -> None:
        self._model.add_user(username)

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
        self._model.add_token(token, user=user, kind=kind, project=project, group=group)

    def add_group(
        self,
        gid: int,
        path: str,
        *,
        name: str | None = None,
        visibility: str = "private",
        parent: int | None = None,
    ) -> None:
        self._model.add_group(gid, path, name=name, visibility=visibility, parent=parent)

    def add_project(
        self,
        pid: int,
        path: str,
        *,
        name: str | None = None,
        visibility: str = "private",
        group: int | None = None,
    ) -> None:
        self._model.add_project(pid, path, name=name, visibility=visibility, group=group)

    def add_member(
        self,
        user: str,
        *,
        project: int | None = None,
        group: int | None = None,
        role: str = "developer",
    ) -> None:
        self._model.add_member(user, project=project, group=group, role=role)

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
        created_at: float | None = None,
    ) -> str:
        """Store a file as an upload would (no sanitizing); return its stored sha256."""
        return self._model.add_file(
            pid,
            name,
            version,
            filename,
            content,
            sha256=sha256,
            requires_python=requires_python,
            created_at=created_at,
        )

    def backdate(self, filename: str, created_at: float) -> None:
        """Set the package API's created_at (seconds since the epoch) of files of this name."""
        self._model.backdate(filename, created_at)

    def files(self, pid: int) -> list[StoredFile]:
        """Every stored file of a project, in upload order."""
        return self._model.files(pid)

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
        if route.kind == "rest" and self.api_delay:
            time.sleep(self.api_delay)  # outside the lock: a slow API stalls nothing else
        with self._model.lock:  # one consistent state per answer
            if route.kind == "rest":
                return self._rest(route, request.path, request.headers)
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
        rest = _REST_ROUTE.fullmatch(path)
        if rest:
            route = _Route("rest", rest[1], rest[2], name=rest[3] or "")
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
        model = self._model
        if route.scope == "groups":
            group = _found(model.find_group(route.ident))
            if not model.can_read_group(caller, group.id):
                # find_authorized_group!: anonymous -> 401, authenticated -> 404.
                raise _not_found() if caller.authenticated else _unauthorized()
            pids = model.group_projects(group.id)
            base = f"{self.url}/api/v4/groups/{group.id}/-/packages/pypi"
            title = group.name
        else:
            project = _found(model.find_project(route.ident))
            if route.kind == "upload":
                return self._upload(caller, project, headers, body)
            if not model.can_read(caller, project.id):
                # unauthorized_or! { not_found! }: anonymous -> 401, authenticated -> 404.
                raise _not_found() if caller.authenticated else _unauthorized()
            pids, base, title = (
                [project.id],
                f"{self.url}/api/v4/projects/{project.id}/packages/pypi",
                project.name,
            )
        if route.kind == "file":
            return self._download(route, pids, method)
        visible = model.visible_packages(caller, pids)
        want_json = self.pep691 and fakepages.wants_json(headers.get("Accept", ""))
        if route.kind == "index":
            if want_json:
                names = sorted({normalize(p.name) for p in visible})
                return self._page(headers, {"projects": [{"name": n} for n in names]})
            links = [
                fakepages.anchor(f"{base}/simple/{normalize(p.name)}", p.requires_python, p.name)
                for p in visible
            ]
            return self._page(headers, fakepages.html(title, links))
        matching = with_normalized_pypi_name(visible, route.name)
        if not matching:
            return self._forward(route.name, method)
        # The newest presenter: per-file requires_python first, else the package-level value.
        files = [(f, f.requires_python or p.requires_python) for p in matching for f in p.files]

        def href(f: StoredFile) -> str:  # "the path helper drops blank segments"
            path = "/".join(s for s in ("files", f.sha256, f.filename) if s)
            return f"{base}/{path}#sha256={f.sha256}"

        if want_json:
            entries = [fakepages.json_file(f.filename, href(f), f.sha256, rp) for f, rp in files]
            return self._page(headers, {"name": normalize(matching[0].name), "files": entries})
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
        file = self._model.file_by_name_and_sha256(pids, route.name, route.sha256)
        if file is None:
            raise _not_found(
                "404 Package Not Found" if route.scope == "projects" else "404 Not found"
            )
        if self.redirect_downloads:
            key, signature = secrets.token_hex(16), secrets.token_hex(32)
            with self._lock:
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
    def _upload(self, caller: Caller, project: Space, headers: Message, body: bytes) -> Response:
        if not caller.authenticated:
            raise _unauthorized()  # "anonymous or wrong token | 401"
        if not self._model.can_read(caller, project.id):  # project!(action: :read_project)
            raise _not_found()  # "private | non-member with a valid token | 404"
        if not self._model.can_upload(caller, project.id):  # authorize_upload!(project)
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
            self._model.add_file(
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

    # --- the package REST API ------------------------------------------------------------
    def _rest(self, route: _Route, raw: str, headers: Message) -> Response:
        """A package listing, or a package's files, as GitLab's REST API gives them."""
        if self.api_status is not None:
            return json_response(self.api_status, {"message": f"{self.api_status}"})
        try:
            caller = self._model.rest_caller(
                private_token=headers.get("PRIVATE-TOKEN", ""),
                job_token=headers.get("JOB-TOKEN", ""),
                authorization=headers.get("Authorization", ""),
            )
        except RejectedCredentials:
            return json_response(401, {"message": "401 Unauthorized"})
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(raw).query))
        model = self._model
        if route.scope == "groups":
            group = model.find_group(route.ident)
            if group is None or not model.can_read_group(caller, group.id):
                return _not_found("404 Group Not Found")  # find_group!
            pids = model.group_projects(group.id)
        else:
            project = model.find_project(route.ident)
            if project is None or not model.can_read(caller, project.id):
                return _not_found("404 Project Not Found")  # find_project!
            pids = [project.id]
        if route.name:  # package_files of one package
            package = model.package(pids[0], int(route.name))
            if package is None:
                return _not_found("404 Package Not Found")
            return _paginated([_file_entity(f, package.id) for f in package.files], query)
        wanted = query.get("package_name", "").lower()  # search_by_name: ILIKE %name%
        packages = [
            p
            for p in model.visible_packages(caller, pids)
            if wanted in p.name.lower() and query.get("package_type", "pypi") == "pypi"
        ]
        group_scope = route.scope == "groups"
        return _paginated([_package_entity(p, group_scope) for p in packages], query)

    # --- auth ----------------------------------------------------------------------------
    def _caller(self, headers: Message) -> Caller:
        try:
            return self._model.caller(headers.get("Authorization", ""))
        except RejectedCredentials as rejected:
            if not rejected.bearer:
                raise _unauthorized() from None
            # The API guard's OAuth-style responder, not the Basic realm.
            challenge = {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'}
            raise json_response(401, {"message": "401 Unauthorized"}, challenge) from None


def _iso(when: float) -> str:
    """A time as Rails writes it in JSON (UTC, milliseconds, "Z")."""
    moment = time.gmtime(when)
    return time.strftime("%Y-%m-%dT%H:%M:%S", moment) + f".{int(when * 1000) % 1000:03d}Z"


def _package_entity(package: Package, group: bool) -> dict[str, object]:
    # API::Entities::Package; a group listing also names each package's project.
    entity: dict[str, object] = {
        "id": package.id,
        "name": package.name,
        "version": package.version,
        "package_type": "pypi",
        "status": "default",
        "created_at": _iso(package.created_at),
    }
    if group:
        entity["project_id"] = package.project
    return entity


def _file_entity(file: StoredFile, package_id: int) -> dict[str, object]:
    # API::Entities::PackageFile: id, package_id, created_at, file_name, size, file_md5,
    # file_sha1, file_sha256.
    return {
        "id": file.id,
        "package_id": package_id,
        "created_at": _iso(file.created_at),
        "file_name": file.filename,
        "size": len(file.content),
        "file_md5": _digest("md5", file.content),
        "file_sha1": _digest("sha1", file.content),
        "file_sha256": file.sha256,
    }


@functools.lru_cache(maxsize=256)
def _digest(algorithm: str, content: bytes) -> str:
    # GitLab stores these at upload; hashing a big file on every listing (under the model's
    # lock) would stall the whole fake and so every benchmark that lists package files.
    return hashlib.new(algorithm, content).hexdigest()


def _paginated(items: list[dict[str, object]], query: dict[str, str]) -> Response:
    """One page of a REST listing (per_page at most 100, as GitLab's pagination)."""
    per_page = min(int(query.get("per_page", "20") or 20), 100)
    page = max(int(query.get("page", "1") or 1), 1)
    chosen = items[(page - 1) * per_page : page * per_page]
    headers = {"X-Total": str(len(items)), "X-Per-Page": str(per_page), "X-Page": str(page)}
    if page * per_page < len(items):
        headers["X-Next-Page"] = str(page + 1)
    return json_response(200, chosen, headers)
