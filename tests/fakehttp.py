"""HTTP/1.1 plumbing for the fakes: a loopback server, request bodies, forms, ranges, replies."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from email.utils import collapse_rfc2231_value

_CHUNK = 64 * 1024
_FLIP = bytes(b ^ 0xFF for b in range(256))
_Socket = socket.socket | tuple[bytes, socket.socket]  # socketserver's request type


@dataclass(eq=False)
class Response(Exception):
    """An answer to send: returned on success, raised to bail out with an error."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    download: bool = False  # file bytes: Range and the server's Faults apply


@dataclass(frozen=True)
class Faults:
    """How to misdeliver file bytes (a `Response` with `download`), read as each is sent."""

    truncate: bool = False  # send the first half, then close the connection
    corrupt: bool = False  # flip every bit
    stall_after: int | None = None  # send this many bytes, then wait for `release`
    stalled: threading.Event = field(default_factory=threading.Event)  # set on reaching it
    release: threading.Event = field(default_factory=threading.Event)  # waited on, up to 60 s


_NO_FAULTS = Faults()  # only file bytes are misdelivered


class Request:
    """One request as received: request line and headers; the body is read on demand."""

    def __init__(self, handler: _Handler) -> None:
        self.method: str = handler.command
        self.path: str = handler.path  # the raw request target, query included
        self.headers: Message = handler.headers
        self._handler = handler

    def read_body(self, on_piece: Callable[[int], None] | None = None) -> bytes:
        """Read the body incrementally (Content-Length or chunked), reporting each piece's size.

        A malformed length raises a 400 `Response` and closes the connection afterwards.
        """
        rfile = self._handler.rfile
        pieces: list[bytes] = []

        def take(size: int) -> None:
            while size > 0:
                piece = rfile.read(min(_CHUNK, size))
                if not piece:
                    raise ConnectionError("client closed the connection mid-body")
                pieces.append(piece)
                size -= len(piece)
                if on_piece is not None:
                    on_piece(len(piece))

        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                while size := int(rfile.readline(65537).split(b";")[0].strip() or b"0", 16):
                    take(size)
                    rfile.readline()  # the CRLF after each chunk
                while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields
            else:
                take(int(self.headers.get("Content-Length", "0")))
        except ValueError:  # a malformed length: the connection cannot be trusted any more
            self._handler.close_connection = True
            raise json_response(400, {"message": "400 Bad request"}) from None
        return b"".join(pieces)


Respond = Callable[[Request], Response]  # returns or raises the answer to one request


def json_response(status: int, payload: object, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON body with `Content-Type: application/json` plus `headers`."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, {"Content-Type": "application/json", **(headers or {})})


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
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


def byte_range(header: str | None, total: int) -> tuple[int, int] | None:
    """A single "bytes=a-b" / "a-" / "-n" range as [start, end); None to send it all.

    An unsatisfiable range raises a 416 `Response`.
    """
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
        raise json_response(416, {"message": "416 Range Not Satisfiable"}, unsatisfiable)
    return start, end


class LoopbackServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP/1.1 server on 127.0.0.1, serving from its own thread once built."""

    daemon_threads = True
    block_on_close = False
    # socketserver's listen backlog is 5: a burst of new connections (a resolver's parallel
    # pages) overflows it and waits for the 1 s SYN retransmit. A real GitLab's nginx: 511.
    request_queue_size = 511

    def __init__(self, port: int, respond: Respond, faults: Callable[[], Faults]) -> None:
        """Listen on `port` (0 for a random one); `faults` is asked as each download is sent."""
        self.respond, self.faults = respond, faults
        self.connections: set[_Socket] = set()
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

    def process_request(self, request: _Socket, client_address: object) -> None:
        with self._connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: _Socket) -> None:
        with self._connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: _Socket, client_address: object) -> None:
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
    server: LoopbackServer

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet: the fakes record requests themselves."""

    def do_GET(self) -> None:
        try:
            response = self.server.respond(Request(self))
        except Response as error:
            response = error
        self._send(response)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _send(self, response: Response) -> None:
        body, headers, status = response.body, dict(response.headers), response.status
        faults = self.server.faults() if response.download else _NO_FAULTS
        if response.download:
            try:
                span = byte_range(self.headers.get("Range"), len(body))
            except Response as error:
                status, body, headers = error.status, error.body, error.headers
            else:
                if span is not None:
                    status, body = 206, body[span[0] : span[1]]
                    headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{len(response.body)}"
                if faults.corrupt:
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
        delivering = status in (200, 206)  # not a 416 for an unsatisfiable Range
        if delivering and faults.truncate:
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        if delivering and faults.stall_after is not None:
            # A download in progress, for as long as the test wants: the first bytes,
            # then nothing until `release` is set (or 60 s pass).
            self.wfile.write(body[: faults.stall_after])
            self.wfile.flush()
            faults.stalled.set()
            faults.release.wait(60)
            body = body[faults.stall_after :]
        self.wfile.write(body)
