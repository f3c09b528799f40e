"""File responses: conditional GET and byte ranges, from a request and a file to serve."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, MutableMapping
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import anyio
import pytest
from starlette.requests import Request

from proxy.errors import HashMismatch
from proxy.filereplies import FileReply
from proxy.fillreads import Body, Spans
from proxy.metrics import Metrics
from proxy.responses import serve_file
from proxy.zerocopy import EXTENSION

CONTENT = bytes(range(256)) * 4
SIZE = len(CONTENT)
SHA = hashlib.sha256(CONTENT).hexdigest()
NAME = "a-1.0-py3-none-any.whl"
LONG = "9" * 5000
"""More digits than int() takes from a string."""


def _request(method: str = "GET", extensions: Any = None, **headers: str) -> Request:
    return Request(
        {
            "type": "http",
            "method": method,
            "path": f"/files/{SHA}/{NAME}",
            "query_string": b"",
            "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
            "state": {"metrics": Metrics()},
            "extensions": extensions,
        }
    )


def _file() -> FileReply:
    async def chunks(start: int, end: int | None) -> AsyncGenerator[bytes, None]:
        yield CONTENT[start:end]

    return FileReply(SIZE, "HIT", lambda start, end: Body(chunks(start, end), lambda: None))


@pytest.mark.parametrize(
    ("wanted", "status", "content_range"),
    [
        pytest.param(f"bytes={LONG}-", 416, f"bytes */{SIZE}", id="first-beyond-any-size"),
        pytest.param(f"bytes=10-{LONG}", 206, f"bytes 10-{SIZE - 1}/{SIZE}", id="last-clamped"),
        pytest.param(f"bytes=-{LONG}", 200, None, id="suffix-is-everything"),
        pytest.param(f"bytes={'0' * 5000}5-9", 206, f"bytes 5-9/{SIZE}", id="leading-zeros"),
    ],
)
def test_a_range_bound_of_thousands_of_digits_is_a_number_beyond_any_size(
    wanted: str, status: int, content_range: str | None
) -> None:
    """A huge range bound is read as larger than the file, never an error of the proxy."""
    response = serve_file(_request(range=wanted), _file(), NAME, SHA, public=True)
    assert (response.status_code, response.headers.get("content-range")) == (
        status,
        content_range,
    )


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    ("tags", "status"),
    [
        pytest.param("*", 304, id="any"),
        pytest.param(f'"{SHA}"', 304, id="strong"),
        pytest.param(f'W/"{SHA}"', 304, id="weak"),
        pytest.param(f'"x,y", W/"{SHA}"', 304, id="in-a-list"),
        pytest.param(f'"{SHA[:-1]}"', 200, id="another-tag"),
        pytest.param(SHA, 200, id="unquoted-is-no-tag"),
    ],
)
def test_if_none_match_is_a_list_of_entity_tags_or_any(method: str, tags: str, status: int) -> None:
    """`*` or a (weakly compared) tag of the file gives 304; anything else gives the file."""
    response = serve_file(_request(method, if_none_match=tags), _file(), NAME, SHA, public=True)
    assert response.status_code == status


def _on_disk(tmp_path: Path) -> FileReply:
    """A cached file: its bytes readable in chunks, and its open file."""
    path = tmp_path / SHA
    path.write_bytes(CONTENT)
    handle = path.open("rb")

    async def chunks(start: int, end: int | None) -> AsyncGenerator[bytes, None]:
        try:
            yield CONTENT[start:end]
        finally:
            handle.close()

    return FileReply(
        SIZE,
        "HIT",
        lambda start, end: Body(chunks(start, end), handle.close),
        handle.close,
        file=handle,
    )


async def _sent(request: Request, reply: FileReply) -> list[MutableMapping[str, Any]]:
    """The ASGI messages of serve_file's response to `request`."""
    messages: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        await anyio.sleep_forever()  # a client that stays
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    response = serve_file(request, reply, NAME, SHA, public=True)
    await response(request.scope, receive, send)
    return messages


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("wanted", "offset", "count"),
    [("", 0, SIZE), ("bytes=10-19", 10, 10), ("bytes=-4", SIZE - 4, 4)],
)
async def test_a_server_offering_zero_copy_is_handed_the_file_and_its_range(
    tmp_path: Path, wanted: str, offset: int, count: int
) -> None:
    """With the extension offered, the body is one zero-copy message of the file's range."""
    reply = _on_disk(tmp_path)
    headers = {"range": wanted} if wanted else {}
    messages = await _sent(_request(extensions={EXTENSION: {}}, **headers), reply)
    assert messages[1] == {
        "type": EXTENSION,
        "file": reply.file,
        "offset": offset,
        "count": count,
        "more_body": False,
    }
    assert reply.file is not None
    assert reply.file.closed


@pytest.mark.anyio
@pytest.mark.parametrize("extensions", [None, {}, {"http.response.pathsend": {}}])
async def test_without_zero_copy_the_file_is_streamed(tmp_path: Path, extensions: Any) -> None:
    """A server that does not offer the extension gets the bytes in body messages."""
    messages = await _sent(_request(extensions=extensions, range="bytes=10-19"), _on_disk(tmp_path))
    body = b"".join(m.get("body", b"") for m in messages[1:])
    assert {m["type"] for m in messages[1:]} == {"http.response.body"}
    assert body == CONTENT[10:20]


def _filling(tmp_path: Path, *, fails: bool = False) -> FileReply:
    """A file being filled: two spans of its file, or one and then a failed hash."""
    path = tmp_path / SHA
    path.write_bytes(CONTENT)
    handle = path.open("rb")

    async def spans(start: int, end: int | None) -> AsyncGenerator[tuple[int, int], None]:
        try:
            yield start, 10
            if fails:
                raise HashMismatch("wrong bytes")
            yield start + 10, (SIZE if end is None else end) - start - 10
        finally:
            handle.close()

    return FileReply(
        SIZE,
        "MISS",
        _file().chunks,
        follow=lambda start, end: Spans(handle, spans(start, end), handle.close),
    )


@pytest.mark.anyio
async def test_a_fill_goes_to_a_zero_copy_server_span_by_span_then_ends(tmp_path: Path) -> None:
    """A file being filled is one zero-copy message (more_body) per span, then a clean end."""
    reply = _filling(tmp_path)
    messages = await _sent(_request(extensions={EXTENSION: {}}, range="bytes=5-99"), reply)
    span = {"type": EXTENSION, "file": ANY, "more_body": True}
    assert messages[1:] == [
        {**span, "offset": 5, "count": 10},
        {**span, "offset": 15, "count": 85},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]


@pytest.mark.anyio
async def test_a_fill_that_fails_its_hash_never_ends_its_zero_copy_response(
    tmp_path: Path,
) -> None:
    """When the fill fails, no final body message follows its spans: the server breaks off."""
    messages = await _sent(_request(extensions={EXTENSION: {}}), _filling(tmp_path, fails=True))
    assert [m["type"] for m in messages] == ["http.response.start", EXTENSION]
    assert messages[-1]["more_body"] is True
