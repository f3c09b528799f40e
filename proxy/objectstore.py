"""Verified files in an S3-compatible bucket, the `s3` storage backend (the only boto3 import)."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
from anyio import to_thread
from boto3.s3.transfer import TransferConfig

from proxy.errors import CacheError
from proxy.records import Records
from proxy.retention import StoredFile
from proxy.storage import HIT_CHUNK, USE_RESOLUTION, Opened

log = logging.getLogger("proxy.objectstore")
PART_SIZE = 8 * 1024 * 1024
"""Files above this go up in parts of this size: S3 shows the object only once the
upload completes, so a partial object is never visible."""
LISTING_TTL = 30.0
"""Seconds a listing of the files is reused (with this replica's own commits and deletes
applied): eviction after each commit then needs no LIST of the whole bucket, and another
replica's uploads count toward max_size within this time. Pins are listed every time."""
READ_AHEAD = 1024 * 1024
"""Bytes per ranged GET of a sync reader (core metadata, export, check)."""
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_FAILURES = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError)


class Bucket:
    """Files under `s3://bucket/prefix`: `prefix/files/<sha256>`, with an empty
    `prefix/pinned/<sha256>` marking a pinned one, seen by every replica.

    Credentials come from boto3's default chain (environment, ~/.aws files, instance and
    pod roles). Each replica records the uses it serves in `uses` (local, small); a file
    it has no use for counts as used when it was uploaded.
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str = "",
        uses: Records,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(url)
        self.bucket = parts.netloc
        prefix = parts.path.strip("/")
        self._files = f"{prefix}/files/" if prefix else "files/"
        self._pins = f"{prefix}/pinned/" if prefix else "pinned/"
        self._uses = uses
        self._clock = clock
        self._lock = threading.Lock()
        self._listed: dict[str, tuple[int, float]] | None = None  # sha256 -> (size, uploaded)
        self._listed_at = 0.0
        config = botocore.config.Config(
            signature_version="s3v4", max_pool_connections=64, retries={"mode": "standard"}
        )
        try:
            self._client: Any = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url or None, config=config
            )
        except _FAILURES as exc:
            raise CacheError(f"cannot reach the bucket {self.bucket}: {exc}") from exc
        self._transfer = TransferConfig(
            multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, use_threads=True
        )

    def __repr__(self) -> str:
        return f"Bucket({self.bucket!r})"

    def close(self) -> None:
        """Close the local use records of this thread."""
        self._uses.close()

    def has(self, sha256: str) -> bool:
        """True when the object is in the bucket."""
        return self._head(self._files + sha256) is not None

    def is_pinned(self, sha256: str) -> bool:
        """True when the object and its pin marker are in the bucket."""
        return self._head(self._pins + sha256) is not None and self.has(sha256)

    def open(self, sha256: str, *, use: bool = True) -> IO[bytes] | None:
        """A seekable reader by ranged GETs of READ_AHEAD bytes, or None."""
        head = self._head(self._files + sha256)
        if head is None:
            return None
        if use:
            self._record_use(sha256)
        raw = _RangedReader(self, self._files + sha256, int(head["ContentLength"]))
        return io.BufferedReader(raw, READ_AHEAD)

    def open_range(self, sha256: str) -> Opened | None:
        """The object opened for serving: one ranged GET streamed per read()."""
        key = self._files + sha256
        head = self._head(key)
        if head is None:
            return None
        self._record_use(sha256)
        size = int(head["ContentLength"])
        modified = head["LastModified"].timestamp()
        return Opened(size, modified, lambda start, end: self._stream(key, size, start, end), _nil)

    def presign(self, sha256: str, *, filename: str, expires: int) -> str | None:
        """A presigned GET of the object (SigV4 in the query), or None when not held."""
        if not self.has(sha256):
            return None
        self._record_use(sha256)
        params = {"Bucket": self.bucket, "Key": self._files + sha256}
        url: str = self._call(
            self._client.generate_presigned_url, "get_object", Params=params, ExpiresIn=expires
        )
        return url

    def commit(self, sha256: str, path: Path, *, pinned: bool) -> None:
        """Upload the verified file (in parts above PART_SIZE); the pin marker goes first,
        so a pinned file is never evictable for a moment."""
        if pinned:
            self._call(self._client.put_object, Bucket=self.bucket, Key=self._pins + sha256)
        self._call(
            self._client.upload_file,
            str(path),
            self.bucket,
            self._files + sha256,
            Config=self._transfer,
        )
        self._note(sha256, (path.stat().st_size, time.time()))
        self._record_use(sha256, committed=True)

    def pin(self, sha256: str) -> bool:
        """Write the pin marker of a held file; False when it is not held."""
        if not self.has(sha256):
            return False
        self._call(self._client.put_object, Bucket=self.bucket, Key=self._pins + sha256)
        return True

    def delete(self, sha256: str) -> bool:
        """Delete the object and its pin marker; False when it was not held."""
        held = self.has(sha256)
        for key in (self._files + sha256, self._pins + sha256):
            self._call(self._client.delete_object, Bucket=self.bucket, Key=key)
        self._uses.delete(sha256)
        self._note(sha256, None)
        return held

    def list(self) -> Iterator[StoredFile]:
        """Every object, with this replica's last use (else its upload time)."""
        pinned = {key for key, _, _ in self._listing(self._pins)}
        for sha256, (size, uploaded) in self._objects().items():
            used = self._uses.get(sha256)
            last = used if isinstance(used, float) else uploaded
            yield StoredFile(sha256, size, last, pinned=sha256 in pinned)

    def volume(self) -> int:
        """Bytes of the unpinned objects."""
        return sum(file.size for file in self.list() if not file.pinned)

    def counts(self) -> tuple[int, int, int]:
        """(objects, bytes, pinned objects)."""
        files = list(self.list())
        return len(files), sum(file.size for file in files), sum(file.pinned for file in files)

    def tidy(self) -> None:
        """Forget the uses of objects no longer in the bucket, and stray pin markers."""
        held = {sha256 for sha256, _, _ in self._listing(self._files)}
        self._uses.prune(lambda key, _: key in held)
        for sha256, _, _ in self._listing(self._pins):
            if sha256 not in held:
                self._call(self._client.delete_object, Bucket=self.bucket, Key=self._pins + sha256)

    def _objects(self) -> dict[str, tuple[int, float]]:
        """The files' (size, upload time), listed at most once per LISTING_TTL."""
        with self._lock:
            if self._listed is not None and time.monotonic() - self._listed_at < LISTING_TTL:
                return dict(self._listed)
        listed = {sha: (size, uploaded) for sha, size, uploaded in self._listing(self._files)}
        with self._lock:
            self._listed, self._listed_at = listed, time.monotonic()
        return dict(listed)

    def _note(self, sha256: str, entry: tuple[int, float] | None) -> None:
        """Apply this replica's commit (or delete, with None) to the reused listing."""
        with self._lock:
            if self._listed is not None:
                if entry is None:
                    self._listed.pop(sha256, None)
                else:
                    self._listed[sha256] = entry

    def get(self, key: str, start: int, end: int) -> Any:
        """The streaming body of bytes [start, end) of `key` (end > start)."""
        reply = self._call(
            self._client.get_object, Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}"
        )
        return reply["Body"]

    async def _stream(
        self, key: str, size: int, start: int, end: int | None
    ) -> AsyncGenerator[bytes, None]:
        end = size if end is None else min(end, size)
        if start >= end:
            return
        body = await to_thread.run_sync(self.get, key, start, end)
        try:
            while True:
                chunk: bytes = await to_thread.run_sync(self._read, body)
                if not chunk:
                    return
                yield chunk
                del chunk
        finally:
            await to_thread.run_sync(body.close)

    def _read(self, body: Any) -> bytes:
        try:
            chunk: bytes = body.read(HIT_CHUNK)
        except _FAILURES as exc:
            raise CacheError(f"reading from the bucket {self.bucket} failed: {exc}") from exc
        return chunk

    def _listing(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in self._call(list, pages):
            for item in page.get("Contents", ()):
                name = item["Key"].removeprefix(prefix)
                yield name, int(item["Size"]), item["LastModified"].timestamp()

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _MISSING:
                return None
            raise CacheError(f"the bucket {self.bucket} refused a HEAD: {exc}") from exc
        except _FAILURES as exc:
            raise CacheError(f"the bucket {self.bucket} cannot be reached: {exc}") from exc
        return head

    def _record_use(self, sha256: str, *, committed: bool = False) -> None:
        now = self._clock()
        try:
            known = self._uses.get(sha256)
            if committed or not (isinstance(known, float) and now - known < USE_RESOLUTION):
                self._uses.set(sha256, now)
        except CacheError as exc:  # bookkeeping must not fail a hit
            log.debug("cannot record the use of %s: %s", sha256, exc)

    def _call(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except _FAILURES as exc:
            raise CacheError(f"the bucket {self.bucket} failed: {exc}") from exc


class _RangedReader(io.RawIOBase):
    """A seekable read-only file over ranged GETs of one object."""

    def __init__(self, bucket: Bucket, key: str, size: int) -> None:
        self._bucket, self._key, self._size, self._position = bucket, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._size, self._position + len(view))
        if end <= self._position:
            return 0
        body = self._bucket.get(self._key, self._position, end)
        try:
            data: bytes = body.read()
        finally:
            body.close()
        view[: len(data)] = data
        self._position += len(data)
        return len(data)


def _nil() -> None:
    """Nothing to free: a ranged GET opens only when read."""
