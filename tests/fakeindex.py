"""A fake public index (pypi.org and its file host in one) on loopback, recording every request."""

from __future__ import annotations

import hashlib
import html
import io
import json
import threading
import zipfile
from dataclasses import dataclass
from types import TracebackType

from tests.distfactory import make_wheel
from tests.fakehttp import Faults, LoopbackServer, Request, Response
from tests.fakemodel import normalize

JSON_TYPE = "application/vnd.pypi.simple.v1+json"


@dataclass(frozen=True)
class PublicFile:
    """One file the index lists."""

    project: str
    filename: str
    content: bytes
    upload_time: str | None
    requires_python: str | None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def metadata(self) -> bytes:
        """The wheel's METADATA (PEP 658 serves it as <filename>.metadata)."""
        with zipfile.ZipFile(io.BytesIO(self.content)) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            return archive.read(name)


class FakeIndex:
    """PEP 503 HTML and PEP 691 JSON pages with sha256 fragments, PEP 700 upload times,
    PEP 658 metadata files; `redirect_pages_to` sends every page request elsewhere."""

    def __init__(self, *, json_pages: bool = True) -> None:
        self.json_pages = json_pages
        self.redirect_pages_to: str | None = None
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self._files: list[PublicFile] = []
        self._lock = threading.Lock()
        self._server: LoopbackServer | None = None
        self._port = 0

    def __enter__(self) -> FakeIndex:
        self._server = LoopbackServer(0, self._serve, Faults)
        self._port = self._server.server_port
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the server and every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None

    @property
    def host(self) -> str:
        """host:port, as forwarding.allowed_hosts names it."""
        return f"127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def add(
        self,
        name: str,
        version: str,
        *,
        upload_time: str | None = "2020-01-01T00:00:00Z",
        requires_python: str | None = None,
        tag: str = "py3-none-any",
        requires: tuple[str, ...] = (),
    ) -> PublicFile:
        """Publish a real wheel of `name` `version` for `tag`, depending on `requires`."""
        filename, content = make_wheel(
            name, version, requires_python=requires_python, tag=tag, requires=requires
        )
        file = PublicFile(normalize(name), filename, content, upload_time, requires_python)
        with self._lock:
            self._files.append(file)
        return file

    def _serve(self, request: Request) -> Response:
        with self._lock:
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            self.paths.append(request.path)
            files = list(self._files)
        path = request.path.split("?", 1)[0]
        if path.startswith("/simple/"):
            if self.redirect_pages_to is not None:
                return Response(302, b"", {"Location": self.redirect_pages_to + path})
            name = normalize(path.removeprefix("/simple/").strip("/"))
            listed = [f for f in files if f.project == name]
            if not listed:
                return Response(404, b"Not Found", {"Content-Type": "text/plain"})
            return self._page(name, listed, request.headers.get("Accept", ""))
        for file in files:
            if path == f"/files/{file.filename}":
                return Response(200, file.content, {"Content-Type": "binary/octet-stream"}, True)
            if path == f"/files/{file.filename}.metadata":
                return Response(200, file.metadata, {"Content-Type": "binary/octet-stream"}, True)
        return Response(404, b"Not Found", {"Content-Type": "text/plain"})

    def _page(self, name: str, files: list[PublicFile], accept: str) -> Response:
        if self.json_pages and JSON_TYPE in accept:
            entries = []
            for f in files:
                entry: dict[str, object] = {
                    "filename": f.filename,
                    "url": f"{self.url}/files/{f.filename}",
                    "hashes": {"sha256": f.sha256},
                    "core-metadata": {"sha256": hashlib.sha256(f.metadata).hexdigest()},
                    "size": len(f.content),
                }
                if f.upload_time:
                    entry["upload-time"] = f.upload_time
                if f.requires_python:
                    entry["requires-python"] = f.requires_python
                entries.append(entry)
            document = {"meta": {"api-version": "1.1"}, "name": name, "files": entries}
            body = json.dumps(document).encode()
            return Response(200, body, {"Content-Type": JSON_TYPE, "ETag": _etag(body)})
        anchors = "".join(
            f'<a href="/files/{f.filename}#sha256={f.sha256}" data-requires-python='
            f'"{html.escape(f.requires_python or "")}">{f.filename}</a><br/>\n'
            for f in files
        )
        body = f"<!DOCTYPE html><html><body>\n{anchors}</body></html>".encode()
        return Response(200, body, {"Content-Type": "text/html", "ETag": _etag(body)})


def _etag(body: bytes) -> str:
    return f'"{hashlib.md5(body).hexdigest()}"'
