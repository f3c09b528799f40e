"""Byte ranges (RFC 9110 14.1.2): one `bytes=` range against a file's size."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^bytes=(?:([0-9]+)-([0-9]*)|-([0-9]+))$")
_MAX_DIGITS = 19
"""A range bound longer than this (leading zeros aside) is beyond any file's size."""


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """[start, end) of one `bytes=` range; None if unsatisfiable; all of it if unparsable."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return (0, size)  # several ranges or another unit: RFC 9110 lets us send it all
    first, last, suffix = match.groups()
    if suffix is not None:
        length = _number(suffix)
        return (max(0, size - length), size) if length > 0 and size > 0 else None
    start = _number(first)
    end = min(_number(last) + 1, size) if last else size
    if start >= size or end <= start:
        return None
    return (start, end)


def partial(header: str) -> bool:
    """Whether `header` asks for part of a file: one `bytes=` range other than `bytes=0-`
    (several ranges, another unit or a malformed value are answered with the whole file)."""
    match = _RANGE.fullmatch(header.strip())
    return match is not None and not (
        match[1] is not None and _number(match[1]) == 0 and not match[2]
    )


def first_byte(header: str, size: int | None) -> int | None:
    """The offset of the first byte a partial range asks for; None when that needs the
    size and it is unknown, or the range is unsatisfiable."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    if match[1] is not None:
        return _number(match[1])
    if size is None:
        return None
    span = byte_range(header, size)
    return None if span is None else span[0]


def _number(digits: str) -> int:
    """A range bound; one of more than _MAX_DIGITS digits counts as 10**_MAX_DIGITS,
    beyond any size (int() refuses strings of over 4,300 digits)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS
