"""A fake GitLab PyPI registry (plus its object storage) served over real HTTP on loopback."""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import http
import http.server
import json
import re
import secrets
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from email.utils import collapse_rfc2231_value
from types import TracebackType
from typing import TypeVar

# guest < reporter < developer < maintainer < owner (Gitlab::Access levels).
ROLES = {"guest": 10, "reporter": 20, "developer": 30, "maintainer": 40, "owner": 50}
_GUEST, _DEVELOPER = ROLES["guest"], ROLES["developer"]
_CHUNK = 64 * 1024
_PAGE_CACHE = "max-age=0, private, must-revalidate"  # Rack::ETag/ConditionalGet default
_JSON_TYPES = ("application/vnd.pypi.simple.v1+json", "application/vnd.pypi.simple.latest+json")
_FLIP = bytes(b ^ 0xFF for b in range(256))
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
_Request = socket.socket | tuple[bytes, socket.socket]  # socketserver's request type


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


@dataclass(eq=False)
class _Response(Exception):
    """An answer to send: returned on success, raised to bail out with an error."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    download: bool = False  # file bytes: Range, truncate_files and corrupt_files apply


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> _Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _Response(status, body, {"Content-Type": "application/json", **(headers or {})})


def _not_found(message: str = "404 Not Found") -> _Response:
    return _json(404, {"message": message})


def _unauthorized() -> _Response:
    # unauthorized! is overridden to add this header; the body is Grape's JSON error.
    realm = {"WWW-Authenticate": 'Basic realm="GitLab Packages Registry"'}
    return _json(401, {"message": "401 Unauthorized"}, realm)


def _escape(text: str) -> str:
    # ERB::Util.html_escape: & < > " '  ->  &amp; &lt; &gt; &quot; &#39;
    for raw, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;")):
        text = text.replace(raw, entity)
    return text.replace("'", "&#39;")


def _normalize(name: str) -> str:
    # normalized_pypi_name = name.gsub(/[-_.]+/o, '-').downcase
    return re.sub(r"[-_.]+", "-", name).lower()


def _html(title: str, links: list[str]) -> bytes:
    # simple_presenter_base.rb: a <<-HTML heredoc (indentation kept) with .lstrip.
    return (
        "<!DOCTYPE html>\n"
        "        <html>\n"
        "          <head>\n"
        f"            <title>Links for {_escape(title)}</title>\n"
        "          </head>\n"
        "          <body>\n"
        f"            <h1>Links for {_escape(title)}</h1>\n"
        f"            {''.join(links)}\n"
        "          </body>\n"
        "        </html>\n"
    ).encode()


def _anchor(url: str, requires_python: str, text: str) -> str:
    # data-requires-python "always present" and escaped; the anchor text is not escaped.
    return f'<a href="{url}" data-requires-python="{_escape(requires_python)}">{text}</a>'


def _json_file(filename: str, url: str, sha256: str, requires_python: str) -> dict[str, object]:
    # PEP 691 file entry; "requires-python is included only when present".
    entry: dict[str, object] = {"filename": filename, "url": url, "hashes": {"sha256": sha256}}
    if requires_python:
        entry["requires-python"] = requires_python
    return entry


def _sanitize(filename: str) -> str:
    # CarrierWave: basename, [^[:word:].\-+] -> "_", dots-only gets "_", empty -> "unnamed".
    name = re.sub(r"[^\w.\-+]", "_", filename.replace("\\", "/").rsplit("/", 1)[-1])
    if name and set(name) == {"."}:
        name = "_" + name
    return name or "unnamed"


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Map each form field name to (filename or None, raw value)."""
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        return {}
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if part.startswith(b"--"):
            break
        head, found, value = part.partition(b"\r\n\r\n")
        if not found:
            continue
        disposition = Message()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, text = line.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition["Content-Disposition"] = text.strip()
        name = disposition.get_param("name", header="content-disposition")
        if name is not None:
            value = value.removesuffix(b"\r\n")
            fields[collapse_rfc2231_value(name)] = (disposition.get_filename(), value)
    return fields


def _byte_range(header: str | None, total: int) -> tuple[int, int] | None:
    """A single "bytes=a-b" / "a-" / "-n" range as [start, end); None to send it all."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not match or match[1] == match[2] == "":
        return None  # absent, malformed or multiple ranges: ignored, as RFC 9110 allows
    if match[1] == "":
        start, end = max(0, total - int(match[2])), total
        if int(match[2]) == 0:
            start = total
    else:
        start = int(match[1])
        end = min(total, int(match[2]) + 1) if match[2] else total
        if match[2] and int(match[2]) < start:
            return None
    if start >= total:
        unsatisfiable = {"Content-Range": f"bytes */{total}", "Accept-Ranges": "bytes"}
        raise _json(416, {"message": "416 Range Not Satisfiable"}, unsatisfiable)
    return start, end


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, port: int, fake: FakeGitLab, kind: str) -> None:
        self.fake, self.kind = fake, kind
        self.connections: set[_Request] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def server_bind(self) -> None:
        # Skip HTTPServer's socket.getfqdn(), a reverse DNS lookup that can be slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def process_request(self, request: _Request, client_address: object) -> None:
        with self._connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: _Request) -> None:
        with self._connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: _Request, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client hanging up is not a bug
            super().handle_error(request, client_address)

    def close(self) -> None:
        """Stop accepting, close the listening socket and cut every open connection."""
        self.shutdown()
        self.server_close()
        with self._connections_lock:
            open_connections = list(self.connections)
        for connection in open_connections:
            with contextlib.suppress(OSError):
                if isinstance(connection, socket.socket):
                    connection.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes; do not wait for ACKs
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet: tests read `FakeGitLab.requests` instead."""

    def do_GET(self) -> None:
        fake, kind = self.server.fake, self.server.kind
        headers = {key.lower(): value for key, value in self.headers.items()}
        fake._observe(request=Recorded(self.command, self.path, headers, kind))
        try:
            response = self._object() if kind == "object" else self._gitlab()
        except _Response as error:
            response = error
        self._send(response)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _gitlab(self) -> _Response:
        fake = self.server.fake
        route = fake._route(self.path, self.command)
        fake._observe(kind=route.kind)
        body = self._read_body(count=route.kind == "upload")
        if fake.delay:
            time.sleep(fake.delay)
        if fake.fail_status is not None:
            raise fake._failure()
        with fake._lock:
            return fake._answer(route, self.headers, body, self.command)

    def _object(self) -> _Response:
        fake = self.server.fake
        fake._observe(kind="object")
        self._read_body(count=False)
        return fake._object_answer(self.path, self.command, "Authorization" in self.headers)

    def _read_body(self, *, count: bool) -> bytes:
        """Read the request body incrementally, Content-Length or chunked."""
        pieces: list[bytes] = []

        def take(size: int) -> None:
            while size > 0:
                piece = self.rfile.read(min(_CHUNK, size))
                if not piece:
                    raise ConnectionError("client closed the connection mid-body")
                pieces.append(piece)
                size -= len(piece)
                if count:
                    self.server.fake._observe(upload=len(piece))

        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                while size := int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16):
                    take(size)
                    self.rfile.readline()  # the CRLF after each chunk
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields
            else:
                take(int(self.headers.get("Content-Length", "0")))
        except ValueError:  # a malformed length: the connection cannot be trusted any more
            self.close_connection = True
            raise _json(400, {"message": "400 Bad request"}) from None
        return b"".join(pieces)

    def _send(self, response: _Response) -> None:
        fake, body, headers = self.server.fake, response.body, dict(response.headers)
        status = response.status
        if response.download:
            try:
                span = _byte_range(self.headers.get("Range"), len(body))
            except _Response as error:
                status, body, headers = error.status, error.body, error.headers
            else:
                if span is not None:
                    status, body = 206, body[span[0] : span[1]]
                    headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{len(response.body)}"
                if fake.corrupt_files:
                    body = body.translate(_FLIP)
        self.send_response(status)
        headers.setdefault("Cache-Control", "no-cache")
        headers["X-Content-Type-Options"] = "nosniff"
        if self.close_connection:
            headers["Connection"] = "close"
        if status != 304:
            headers["Content-Length"] = str(len(body))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD" or status == 304:
            return
        if response.download and status in (200, 206) and fake.truncate_files:
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        stall = fake.stall_files_after
        if response.download and status in (200, 206) and stall is not None:
            # A download in progress, for as long as the test wants: the first bytes,
            # then nothing until stall_release is set (or 60 s pass).
            self.wfile.write(body[:stall])
            self.wfile.flush()
            fake.stalled.set()
            fake.stall_release.wait(60)
            body = body[stall:]
        self.wfile.write(body)


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
        self._gitlab: _Server | None = None
        self._object: _Server | None = None
        self._port = 0

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Listen on two random loopback ports: GitLab and its object storage."""
        self._object = _Server(0, self, "object")
        self._gitlab = _Server(0, self, "gitlab")
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
            self._gitlab = _Server(self._port, self, "gitlab")

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

    # --- observation (called from handler threads) -------------------------------------
    def _observe(self, *, request: Recorded | None = None, kind: str = "", upload: int = 0) -> None:
        with self._lock:
            self.requests.extend([request] if request else [])
            self.counts.update([kind] if kind else [])
            self.upload_bytes_received += upload

    def _failure(self) -> _Response:
        status = self.fail_status or 500
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        if status == 429:
            # Rack::Attack: text/plain rate_limiting_response_text, default "Retry later".
            return _Response(status, b"Retry later\n", {"Content-Type": "text/plain", **headers})
        return _json(status, {"message": f"{status} {http.HTTPStatus(status).phrase}"}, headers)

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

    def _answer(self, route: _Route, headers: Message, body: bytes, method: str) -> _Response:
        if route.kind == "other":
            if route.allowed:
                allow = {"Allow": ", ".join(route.allowed)}
                return _json(405, {"message": "405 Method Not Allowed"}, allow)
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
        want_json = self.pep691 and any(
            item.strip().startswith(_JSON_TYPES) for item in headers.get("Accept", "").split(",")
        )
        if route.kind == "index":
            if want_json:
                names = sorted({_normalize(p.name) for p in visible})
                return self._page(headers, {"projects": [{"name": n} for n in names]})
            links = [
                _anchor(f"{base}/simple/{_normalize(p.name)}", p.requires_python, p.name)
                for p in visible
            ]
            return self._page(headers, _html(title, links))
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
            entries = [_json_file(f.filename, href(f), f.sha256, rp) for f, rp in files]
            return self._page(headers, {"name": _normalize(matching[0].name), "files": entries})
        links = [_anchor(href(f), rp, f.filename) for f, rp in files]
        return self._page(headers, _html(matching[0].name, links))

    def _page(self, request: Message, content: bytes | dict[str, object]) -> _Response:
        if isinstance(content, dict):
            body = json.dumps({"meta": {"api-version": "1.0"}, **content}, separators=(",", ":"))
            headers = {"Content-Type": "application/vnd.pypi.simple.v1+json; charset=utf-8"}
            content = body.encode()
        else:
            headers = {"Content-Type": "text/html; charset=utf-8"}
        if self.pep691:
            headers["Vary"] = "Accept"  # present_pypi_html_with_vary / present_simple_json
        headers["ETag"] = etag = f'W/"{hashlib.md5(content).hexdigest()}"'
        headers["Cache-Control"] = _PAGE_CACHE
        candidates = [tag.strip() for tag in request.get("If-None-Match", "").split(",")]
        if etag in candidates or "*" in candidates:
            del headers["Content-Type"]
            return _Response(304, b"", headers)
        return _Response(200, content, headers)

    def _forward(self, name: str, method: str) -> _Response:
        if self.forwarding_url is None:
            raise _not_found("404 Package Not Found")
        # "Location: https://pypi.org/simple/<name as requested, not normalized, not escaped>/"
        return self._redirect(f"{self.forwarding_url}{name}/", method)

    @staticmethod
    def _redirect(location: str, method: str) -> _Response:
        # Grape's redirect: text/plain body; a non-GET (HEAD) redirect on HTTP/1.1 is 303.
        body = f"This resource has been moved temporarily to {location}.".encode()
        headers = {"Location": location, "Content-Type": "text/plain"}
        return _Response(302 if method == "GET" else 303, body, headers)

    def _download(self, route: _Route, pids: list[int], method: str) -> _Response:
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
    def _file_response(filename: str, content: bytes, extra: dict[str, str]) -> _Response:
        quoted = urllib.parse.quote(filename, safe="")
        disposition = f"attachment; filename=\"{filename}\"; filename*=UTF-8''{quoted}"
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": disposition,
            "Accept-Ranges": "bytes",
            **extra,
        }
        return _Response(200, content, headers, download=True)

    def _object_answer(self, raw: str, method: str, has_authorization: bool) -> _Response:
        def s3_error(status: int, code: str) -> _Response:
            body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code></Error>'
            return _Response(status, body.encode(), {"Content-Type": "application/xml"})

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
    def _upload(self, caller: _Caller, project: _Space, headers: Message, body: bytes) -> _Response:
        if not caller.authenticated:
            raise _unauthorized()
        if not self._can_read(caller, project.id):  # project!(action: :read_project)
            raise _not_found()
        deploy = caller.deploy is not None and self._deploy_covers(caller.deploy, project)
        if not deploy and self._role(caller, project) < _DEVELOPER:
            raise _json(403, {"message": "403 Forbidden"})
        fields = _parse_multipart(headers.get("Content-Type", ""), body)
        content = fields.get("content")
        missing = [key for key in ("content", "name", "version") if key not in fields]
        if content is not None and content[0] is None:
            missing.insert(0, "content")  # a plain text field is no WorkhorseFile
        if missing:
            raise _json(400, {"error": ", ".join(f"{key} is missing" for key in missing)})
        text = {key: value.decode("utf-8", "replace") for key, (_, value) in fields.items()}
        sha256 = text.get("sha256_digest")
        if sha256 is not None and not _SHA256.fullmatch(sha256):
            raise _json(400, {"error": "sha256_digest is invalid"})
        assert content is not None
        assert content[0] is not None
        if len(content[1]) > self.max_file_size:
            raise _json(400, {"message": "400 Bad request - File is too large"})
        for key, pattern in (("name", _NAME), ("version", _VERSION)):
            if not pattern.fullmatch(text[key]):
                message = f"400 Bad request - Validation failed: {key.capitalize()} is invalid"
                raise _json(400, {"message": message})
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
            raise _json(400, {"message": f"400 Bad request - Validation failed: {error}"}) from None
        return _json(201, {"message": "201 Created"})

    # --- auth ----------------------------------------------------------------------------
    def _caller(self, headers: Message) -> _Caller:
        scheme, _, credential = headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            token = self._tokens.get(credential.strip())
            if token is None or token.kind != "personal":
                # The API guard's OAuth-style responder, not the Basic realm.
                raise _json(
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
