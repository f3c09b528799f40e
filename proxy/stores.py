"""The Store that the settings ask for: verified files on local disk or in an S3 bucket."""

from __future__ import annotations

from proxy.cache import SIDE_SHARE, Store
from proxy.records import Records
from proxy.settings import Settings
from proxy.storage import Files


def make_store(settings: Settings) -> Store:
    """The Store in cache.dir, its files in the backend of settings.storage (blocks)."""
    cache, storage = settings.cache, settings.storage
    files: Files | None = None
    if storage.backend == "s3":
        from proxy.objectstore import Bucket  # the s3 extra: imported only when asked for

        uses = Records(cache.dir / "bucket-uses", size_limit=cache.max_size // SIDE_SHARE)
        files = Bucket(storage.url, endpoint_url=storage.endpoint_url, uses=uses)
    return Store(cache.dir, max_size=cache.max_size, files=files)
