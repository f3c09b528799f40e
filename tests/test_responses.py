"""File responses: conditional GET and byte ranges, from a request and a file to serve."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator

import pytest
from starlette.requests import Request

from proxy.downloads import FileReply
from proxy.fills import Body
from proxy.metrics import Metrics
from proxy.responses import serve_file

CONTENT = bytes(range(256)) * 4
SIZE = len(CONTENT)
SHA = hashlib.sha256(CONTENT).hexdigest()
NAME = "a-1.0-py3-none-any.whl"
LONG = "9" * 5000
"""More digits than int() takes from a string."""


def _request(method: str = "GET", **headers: str) -> Request:
    return Request(
        {
            "type": "http",
            "method": method,
            "path": f"/files/{SHA}/{NAME}",
            "query_string": b"",
            "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
            "state": {"metrics": Metrics()},
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
