"""A wheel's core metadata (`*.dist-info/METADATA`) read from its zip with a few ranged reads."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import IO

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

TAIL = 64 * 1024
"""Bytes read first from a wheel's end: its end records and, mostly, its central directory."""
MAX_DIRECTORY = 64 * 1024 * 1024
"""A central directory above this is refused (torch's is about 3 MB)."""
MAX_METADATA = 16 * 1024 * 1024
"""A METADATA member above this (compressed or not) is refused."""
_SLACK = 1024
"""Bytes read past a member's local header as the central directory sizes it: a local
extra field may be longer, and one read is cheaper than two."""

_EOCD = struct.Struct("<4sHHHHIIH")
_LOCATOR = struct.Struct("<4sIQI")
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")
_ENTRY = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_EOCD_SIG, _LOCATOR_SIG, _EOCD64_SIG = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_ENTRY_SIG, _LOCAL_SIG = b"PK\x01\x02", b"PK\x03\x04"
_ZIP64_EXTRA = 0x0001
_UTF8_FLAG, _ENCRYPTED_FLAG = 0x800, 0x1
_STORED, _DEFLATED = 0, 8
_METADATA = re.compile(r"([^/]+)\.dist-info/METADATA")


class NoMetadata(Exception):
    """The wheel has no core metadata the spec finds: none is advertised or served."""


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes [start, end) of the wheel; a negative start asks for its last -start bytes."""

    start: int
    end: int = 0


@dataclass(frozen=True, slots=True)
class Piece:
    """What a read gave: the bytes at `offset` of a wheel of `size` bytes."""

    offset: int
    data: bytes
    size: int


Steps = Generator[Span, Piece, bytes]
"""The reads extraction needs, one at a time; returns METADATA's bytes."""


def steps(filename: str) -> Steps:
    """The reads that find `filename`'s METADATA (sans I/O); raises NoMetadata.

    Binary distribution format: the metadata is in "{distribution}-{version}.dist-info/",
    the name and version as in the wheel's file name; compared normalized, so
    `Foo_Bar-1.0.dist-info` serves `foo_bar-1.0-py3-none-any.whl`.
    """
    try:
        name, version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise NoMetadata(f"{filename} is not a wheel's file name") from exc
    tail = yield Span(-TAIL)
    start, length, entries = _directory(tail)
    if start < 0 or start + length > tail.size:
        raise NoMetadata("the central directory lies outside the file")
    if start >= tail.offset:
        directory = tail.data[start - tail.offset : start - tail.offset + length]
    else:
        directory = (yield Span(start, start + length)).data
    if len(directory) != length:
        raise NoMetadata("the central directory was cut short")
    member = _find(_entries(directory, entries), name, version)
    end = min(tail.size, member.offset + member.span + _SLACK)
    if member.offset >= tail.offset:  # a small wheel: all of it came with the tail
        data = tail.data[member.offset - tail.offset : end - tail.offset]
    else:
        data = (yield Span(member.offset, end)).data
    if len(data) < _LOCAL.size or data[:4] != _LOCAL_SIG:
        raise NoMetadata("METADATA has no local header")
    fields = _LOCAL.unpack_from(data)
    skip = _LOCAL.size + fields[9] + fields[10]
    if skip + member.compressed > len(data):
        end = member.offset + skip + member.compressed
        if end > tail.size:
            raise NoMetadata("METADATA lies outside the file")
        data = data + (yield Span(member.offset + len(data), end)).data
    return _inflate(member, data[skip : skip + member.compressed])


def extract_from(handle: IO[bytes], filename: str) -> bytes:
    """METADATA of the wheel open in `handle` (seekable); raises NoMetadata."""
    size = handle.seek(0, 2)
    return drive_sync(steps(filename), lambda span: _read_file(handle, span, size))


def drive_sync(work: Steps, read: Callable[[Span], Piece]) -> bytes:
    """Run `work` with a blocking reader."""
    try:
        span = next(work)
        while True:
            span = work.send(read(span))
    except StopIteration as done:
        result: bytes = done.value
        return result


async def drive(work: Steps, read: Callable[[Span], Awaitable[Piece]]) -> bytes:
    """Run `work` with an async reader (ranged requests)."""
    try:
        span = next(work)
        while True:
            span = work.send(await read(span))
    except StopIteration as done:
        result: bytes = done.value
        return result


def _read_file(handle: IO[bytes], span: Span, size: int) -> Piece:
    start = max(0, size + span.start) if span.start < 0 else span.start
    end = size if span.start < 0 else min(span.end, size)
    handle.seek(start)
    return Piece(start, handle.read(max(0, end - start)), size)


def _directory(tail: Piece) -> tuple[int, int, int]:
    """(offset, length, entries) of the central directory, from the end records in `tail`."""
    data = tail.data
    at = len(data)
    while True:
        at = data.rfind(_EOCD_SIG, 0, at)
        if at < 0 or len(data) - at < _EOCD.size:
            raise NoMetadata("no end of central directory record (not a zip)")
        fields = _EOCD.unpack_from(data, at)
        if at + _EOCD.size + fields[7] <= len(data):  # its comment fits: the real one
            break
    _, disk, cd_disk, _, entries, length, offset, _ = fields
    if disk or cd_disk:
        raise NoMetadata("a zip split over several disks")
    end_at = tail.offset + at
    locator = at - _LOCATOR.size
    if locator >= 0 and data[locator : locator + 4] == _LOCATOR_SIG:
        # ZIP64: the real counts, size and offset are in the zip64 end record.
        _, _, record, _ = _LOCATOR.unpack_from(data, locator)
        if not tail.offset <= record <= len(data) + tail.offset - _EOCD64.size:
            raise NoMetadata("the zip64 end record is not in the tail read")
        fields64 = _EOCD64.unpack_from(data, record - tail.offset)
        if fields64[0] != _EOCD64_SIG:
            raise NoMetadata("no zip64 end of central directory record")
        entries, length, offset = fields64[7], fields64[8], fields64[9]
        end_at = record
    if length > MAX_DIRECTORY:
        raise NoMetadata(f"a central directory of {length} bytes")
    # Bytes prepended to the zip (a self-extractor) shift every offset alike.
    shift = end_at - length - offset
    if shift < 0:
        raise NoMetadata("the central directory overlaps its end record")
    return offset + shift, length, entries


@dataclass(frozen=True, slots=True)
class _Member:
    name: str
    method: int
    flags: int
    crc: int
    compressed: int
    size: int
    offset: int

    @property
    def span(self) -> int:
        """Local header, name, the central directory's extra and the data."""
        return _LOCAL.size + len(self.name.encode()) + 64 + self.compressed


def _entries(directory: bytes, count: int) -> list[_Member]:
    members, at = [], 0
    while at + _ENTRY.size <= len(directory) and directory[at : at + 4] == _ENTRY_SIG:
        fields = _ENTRY.unpack_from(directory, at)
        name_at = at + _ENTRY.size
        name_end = name_at + fields[10]
        extra = directory[name_end : name_end + fields[11]]
        raw = directory[name_at:name_end]
        flags = fields[3]
        name = raw.decode("utf-8" if flags & _UTF8_FLAG else "cp437", "replace")
        compressed, size, offset = fields[8], fields[9], fields[16]
        if 0xFFFFFFFF in (compressed, size, offset):
            size, compressed, offset = _zip64(extra, size, compressed, offset)
        members.append(_Member(name, fields[4], flags, fields[7], compressed, size, offset))
        at = name_end + fields[11] + fields[12]
    if len(members) != count and count != 0xFFFF:
        raise NoMetadata(f"the central directory lists {len(members)} of {count} entries")
    return members


def _zip64(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    """APPNOTE 4.5.3: the zip64 extra field holds, in this order, each of uncompressed size,
    compressed size and local header offset whose 32-bit field is 0xFFFFFFFF."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        if kind == _ZIP64_EXTRA:
            values = iter(struct.unpack_from(f"<{length // 8}Q", extra, at + 4))
            try:
                size = next(values) if size == 0xFFFFFFFF else size
                compressed = next(values) if compressed == 0xFFFFFFFF else compressed
                offset = next(values) if offset == 0xFFFFFFFF else offset
            except StopIteration:
                raise NoMetadata("a zip64 extra field too short") from None
            return size, compressed, offset
        at += 4 + length
    raise NoMetadata("a zip64 entry without its extra field")


def _find(members: list[_Member], name: str, version: Version) -> _Member:
    """The METADATA of the one dist-info directory named as the wheel is."""
    directories = {
        member.name.split("/", 1)[0]
        for member in members
        if member.name.split("/", 1)[0].endswith(".dist-info")
    }
    matching = [d for d in directories if _names(d.removesuffix(".dist-info"), name, version)]
    if len(matching) != 1:
        found = ", ".join(sorted(matching)) or "none"
        raise NoMetadata(f"{len(matching)} .dist-info directories match the wheel ({found})")
    wanted = f"{matching[0]}/METADATA"
    member = next((m for m in members if m.name == wanted), None)
    if member is None:
        raise NoMetadata(f"no {wanted}")
    if member.flags & _ENCRYPTED_FLAG or member.method not in (_STORED, _DEFLATED):
        raise NoMetadata(f"{wanted} is encrypted or compressed with method {member.method}")
    if max(member.size, member.compressed) > MAX_METADATA:
        raise NoMetadata(f"{wanted} is larger than {MAX_METADATA} bytes")
    return member


def _names(stem: str, name: str, version: Version) -> bool:
    """Whether "{distribution}-{version}" names this project and version (either part
    may be written unescaped, so every "-" is tried as the separator)."""
    for at in (m.start() for m in re.finditer("-", stem)):
        if canonicalize_name(stem[:at]) != name:
            continue
        try:
            if Version(stem[at + 1 :]) == version:
                return True
        except InvalidVersion:
            continue
    return False


def _inflate(member: _Member, data: bytes) -> bytes:
    if member.method == _DEFLATED:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data, MAX_METADATA + 1)
        except zlib.error as exc:
            raise NoMetadata(f"METADATA does not inflate: {exc}") from exc
    if len(data) != member.size or zlib.crc32(data) != member.crc:
        raise NoMetadata("METADATA does not match its size and CRC-32")
    return data
