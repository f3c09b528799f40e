"""The fake GitLab's model: users, tokens, groups, projects, packages, and who may do what."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field, replace

# guest < reporter < developer < maintainer < owner (Gitlab::Access levels).
ROLES = {"guest": 10, "reporter": 20, "developer": 30, "maintainer": 40, "owner": 50}
_GUEST, _DEVELOPER = ROLES["guest"], ROLES["developer"]


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
    created_at: float = 0.0  # packages_package_files.created_at, seconds since the epoch
    id: int = 0


@dataclass
class Package:
    """A package record: one exact (name, version) in one project, with its files."""

    id: int
    project: int
    name: str
    version: str
    requires_python: str  # package-level metadatum: "upserted on each upload"
    files: list[StoredFile] = field(default_factory=list)
    created_at: float = 0.0


@dataclass(frozen=True)
class Space:
    """A group or a project: `parent` is the enclosing group's id."""

    id: int
    path: str
    name: str  # the display name, the title of index pages
    visibility: str  # "public" | "internal" | "private"
    parent: int | None


@dataclass(frozen=True)
class Token:
    """A personal or CI job token acting as `user`, or a deploy token of a project or group."""

    kind: str  # "personal" | "job" | "deploy"
    user: str | None
    project: int | None
    group: int | None


@dataclass(frozen=True)
class Caller:
    """Who a request acts as: a user, a deploy token, or (neither) anonymous."""

    user: str | None = None
    deploy: Token | None = None

    @property
    def authenticated(self) -> bool:
        return self.user is not None or self.deploy is not None


@dataclass(eq=False)
class RejectedCredentials(Exception):
    """Credentials GitLab answers with 401 instead of treating the caller as anonymous."""

    bearer: bool  # the API guard's Bearer challenge, not the Packages Registry's Basic one


def normalize(name: str) -> str:
    """PEP 503 normalization, as GitLab computes `normalized_pypi_name`."""
    # normalized_pypi_name = name.gsub(/[-_.]+/o, '-').downcase
    return re.sub(r"[-_.]+", "-", name).lower()


def with_normalized_pypi_name(packages: list[Package], requested: str) -> list[Package]:
    """The packages a `simple/<requested>` page lists, in the order given."""
    # "The stored name is normalized; the request name is only lower-cased."
    return [p for p in packages if normalize(p.name) == requested.lower()]


class GitLabModel:
    """GitLab's tables and its permission rules, with no HTTP in sight.

    Every method may be called from any thread; hold `lock` across several calls to see
    one consistent state (the server does, for each request it answers).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._users: set[str] = set()
        self._tokens: dict[str, Token] = {}
        self._groups: dict[int, Space] = {}
        self._projects: dict[int, Space] = {}
        self._members: dict[tuple[str, str, int], int] = {}  # (user, kind, id) -> level
        self._packages: list[Package] = []
        self._uploads: list[StoredFile] = []

    # --- building ----------------------------------------------------------------------
    def add_user(self, username: str) -> None:
        with self.lock:
            self._users.add(username)

    def add_token(
        self, token: str, *, user: str | None, kind: str, project: int | None, group: int | None
    ) -> None:
        """Register a token; ValueError for an unknown kind, owner or user."""
        if kind not in ("personal", "deploy", "job"):
            raise ValueError(f"unknown token kind {kind!r}")
        if kind == "deploy" and (project is None) == (group is None):
            raise ValueError("a deploy token belongs to exactly one project or group")
        with self.lock:
            if kind != "deploy" and user not in self._users:
                raise ValueError(f"{kind} token needs a known user, got {user!r}")
            self._tokens[token] = Token(kind, user, project, group)

    def add_group(
        self, gid: int, path: str, *, name: str | None, visibility: str, parent: int | None
    ) -> None:
        with self.lock:
            self._groups[gid] = Space(gid, path, name or path, visibility, parent)

    def add_project(
        self, pid: int, path: str, *, name: str | None, visibility: str, group: int | None
    ) -> None:
        with self.lock:
            self._projects[pid] = Space(pid, path, name or path, visibility, group)

    def add_member(self, user: str, *, project: int | None, group: int | None, role: str) -> None:
        """Give `user` a role in one project or group; ValueError otherwise."""
        if (project is None) == (group is None) or role not in ROLES:
            raise ValueError("give exactly one of project/group and a role in ROLES")
        with self.lock:
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
        sha256: str | None,
        requires_python: str,
        created_at: float | None = None,
    ) -> str:
        """Store a file as given (no sanitizing) and return its stored sha256; created
        now unless `created_at` (seconds since the epoch) says when.

        ValueError for an unknown project, or for a file name already in the (name, version)
        record, with GitLab's validation message.
        """
        stored = hashlib.sha256(content).hexdigest() if sha256 is None else sha256
        when = time.time() if created_at is None else created_at
        with self.lock:
            if pid not in self._projects:
                raise ValueError(f"unknown project {pid}")
            key = (pid, name, version)
            package = next(
                (p for p in self._packages if (p.project, p.name, p.version) == key), None
            )
            if package is None:
                # "Package records are found or created by exact (name, version)."
                package = Package(len(self._packages) + 1, pid, name, version, requires_python)
                package.created_at = when
                self._packages.append(package)
            if any(f.filename == filename for f in package.files):
                raise ValueError("File name has already been taken")
            package.requires_python = requires_python  # the metadatum row is upserted
            file = StoredFile(
                pid,
                name,
                version,
                filename,
                stored,
                content,
                requires_python,
                when,
                len(self._uploads) + 1,
            )
            package.files.append(file)
            self._uploads.append(file)
        return stored

    def backdate(self, filename: str, created_at: float) -> None:
        """Say that every stored file of this name was created at `created_at`."""
        with self.lock:
            for package in self._packages:
                package.files = [
                    replace(f, created_at=created_at) if f.filename == filename else f
                    for f in package.files
                ]
            self._uploads = [
                replace(f, created_at=created_at) if f.filename == filename else f
                for f in self._uploads
            ]

    def package(self, pid: int, package_id: int) -> Package | None:
        """The package record of this id in this project."""
        with self.lock:
            return next(
                (p for p in self._packages if p.id == package_id and p.project == pid), None
            )

    def files(self, pid: int) -> list[StoredFile]:
        """Every stored file of a project, in upload order."""
        with self.lock:
            return [f for f in self._uploads if f.project == pid]

    # --- lookups -----------------------------------------------------------------------
    def caller(self, authorization: str) -> Caller:
        """Resolve an Authorization header value; RejectedCredentials when GitLab says 401."""
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() == "bearer":
            # "OAuth/PAT `Authorization: Bearer`" also works on these generic API paths.
            token = self._token(credential.strip())
            if token is None or token.kind != "personal":
                raise RejectedCredentials(bearer=True)
            return Caller(user=token.user)
        if scheme.lower() != "basic":
            return Caller()
        try:
            decoded = base64.b64decode(credential, validate=True).decode()
        except ValueError:
            return Caller()
        username, _, password = decoded.partition(":")
        token = self._token(password)
        if username == "gitlab-ci-token":
            # "CI job token: only if the username is exactly `gitlab-ci-token`. A wrong
            # token with that username -> 401."
            if token is None or token.kind != "job":
                raise RejectedCredentials(bearer=False)
            return Caller(user=token.user)
        if token is not None and token.kind == "deploy":
            return Caller(deploy=token)  # "Deploy token: any username, the token as password."
        if token is not None and token.kind == "personal":
            return Caller(user=token.user)  # "Personal ... access token: the username is ignored."
        return Caller()  # "A wrong token is treated as anonymous, not as 401."

    def rest_caller(self, *, private_token: str, job_token: str, authorization: str) -> Caller:
        """The caller of GitLab's REST API (the package API): PRIVATE-TOKEN, JOB-TOKEN or a
        Bearer token; RejectedCredentials for one it does not know. Basic is not read."""
        if authorization.lower().startswith("bearer "):
            return self.caller(authorization)
        for secret, kind in ((private_token, "personal"), (job_token, "job")):
            if secret:
                token = self._token(secret)
                if token is None or token.kind != kind:
                    raise RejectedCredentials(bearer=True)
                return Caller(user=token.user)
        return Caller()

    def _token(self, secret: str) -> Token | None:
        with self.lock:
            return self._tokens.get(secret)

    def find_project(self, ident: str) -> Space | None:
        """find_project: a numeric id or a URL-encoded full path (case-insensitive)."""
        with self.lock:
            return self._find(self._projects, ident, self._project_path)

    def find_group(self, ident: str) -> Space | None:
        """find_group: a numeric id or a URL-encoded full path (case-insensitive)."""
        with self.lock:
            return self._find(self._groups, ident, self._group_path)

    def group_projects(self, gid: int) -> list[int]:
        """The projects of a group and all its subgroups, in creation order."""
        with self.lock:
            subtree = self._subtree(gid)
            return [p.id for p in self._projects.values() if p.parent in subtree]

    def visible_packages(self, caller: Caller, pids: list[int]) -> list[Package]:
        """The package records of these projects that the caller may read, oldest first."""
        with self.lock:
            return [
                p for p in self._packages if p.project in pids and self.can_read(caller, p.project)
            ]

    def file_by_name_and_sha256(
        self, pids: list[int], filename: str, sha256: str
    ) -> StoredFile | None:
        """The newest file of these projects with exactly this name and stored sha256."""
        # by_file_name_and_sha256(...).last!: equality on (file_name, stored file_sha256).
        with self.lock:
            found = [
                f
                for p in self._packages
                if p.project in pids
                for f in p.files
                if (f.filename, f.sha256) == (filename, sha256)
            ]
        return found[-1] if found else None

    # --- permissions -------------------------------------------------------------------
    def can_read(self, caller: Caller, pid: int) -> bool:
        """Whether the caller may read the project's packages."""
        with self.lock:
            project = self._projects[pid]
            # "public | anyone, including anonymous and a *wrong* token | 200"
            if project.visibility == "public" or (project.visibility == "internal" and caller.user):
                return True
            if caller.deploy is not None:
                return self._deploy_covers(caller.deploy, project)
            # "member (guest+) with a valid token | 200 (guests can pull ...)"
            return self._role(caller, project) >= _GUEST

    def can_upload(self, caller: Caller, pid: int) -> bool:
        """Whether the caller may upload to the project, once it may read it."""
        with self.lock:
            project = self._projects[pid]
            if caller.deploy is not None and self._deploy_covers(caller.deploy, project):
                return True
            # "developer+ | 201"; "guest, or public-project non-member | 403"
            return self._role(caller, project) >= _DEVELOPER

    def can_read_group(self, caller: Caller, gid: int) -> bool:
        """Whether the caller may see the group (find_authorized_group!'s :read_group)."""
        with self.lock:
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

    # --- helpers (call with `lock` held) ------------------------------------------------
    @staticmethod
    def _find(table: dict[int, Space], ident: str, full_path: Callable[[int], str]) -> Space | None:
        if ident.isdigit():
            return table.get(int(ident))
        wanted = urllib.parse.unquote(ident).lower()
        return next((v for k, v in table.items() if full_path(k).lower() == wanted), None)

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

    def _role(self, caller: Caller, project: Space) -> int:
        if caller.user is None:
            return 0
        levels = [self._members.get((caller.user, "project", project.id), 0)]
        levels += [
            self._members.get((caller.user, "group", g), 0) for g in self._ancestors(project.parent)
        ]
        return max(levels)

    def _deploy_covers(self, token: Token, project: Space) -> bool:
        # "A deploy token sees its `accessible_projects`": its project, or its group's tree.
        return token.project == project.id or token.group in self._ancestors(project.parent)
