"""Uploads: passed through to GitLab with whose credentials may go; the pages they stale dropped."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from anyio import to_thread

from proxy.access import Keeper
from proxy.cache import Store
from proxy.errors import OfflineRefusal, Unauthorized
from proxy.models import Reply, Scope, normalize
from proxy.upstream import GitLab

# twine sends the form fields before the file (`content` last), so the name is near the start.
_SNIFF_BYTES = 64 * 1024
_NAME_FIELD = re.compile(rb'name="name"\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]{1,200})\r\n')


class Uploads:
    """Streams uploads to GitLab and drops the cached pages an accepted one makes stale."""

    def __init__(
        self,
        *,
        store: Store,
        upstream: GitLab,
        keeper: Keeper,
        offline: bool,
        service_authorization: str | None,
        allow_service_upload: bool = False,
        on_upload: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._keeper = keeper
        self.offline = offline
        self._service = service_authorization
        self._allow_service_upload = allow_service_upload
        self._on_upload = on_upload

    def __repr__(self) -> str:
        return f"Uploads(upstream={self._upstream!r}, offline={self.offline})"

    def _authorization(self, client: str | None) -> str | None:
        """What GitLab sees for an upload: the client's own GitLab credentials; the
        service token only where access.allow_service_upload says so; never a proxy token."""
        gate = self._keeper.gate
        proxy_token = gate.mode == "tokens" and gate.admits(client)
        if client and not proxy_token:
            return client
        if gate.mode == "tokens" and not proxy_token:
            raise Unauthorized("uploads need your GitLab credentials, or a proxy token")
        if self._service and self._allow_service_upload:
            return self._service
        if self._service or proxy_token:
            raise Unauthorized("uploads use your own GitLab credentials; none were sent")
        return None

    async def upload(
        self, scope: Scope, *, headers: Mapping[str, str], body: AsyncIterator[bytes]
    ) -> Reply:
        """Stream an upload to GitLab; on success drop the cached pages of its name, and
        tell `on_upload` (the other replicas) the name ("" when it is unknown)."""
        if self.offline:
            raise OfflineRefusal("offline mode: uploads need GitLab")
        headers = {**headers}
        credentials = self._authorization(headers.pop("authorization", None))
        if credentials:
            headers["authorization"] = credentials
        head = bytearray()

        async def sniffing() -> AsyncIterator[bytes]:
            async for chunk in body:
                if len(head) < _SNIFF_BYTES:
                    head.extend(chunk[: _SNIFF_BYTES - len(head)])
                yield chunk

        answer = await self._upstream.upload(scope.api_path, headers=headers, body=sniffing())
        if 200 <= answer.status < 300:
            found = _NAME_FIELD.search(bytes(head))
            name: str = ""
            if found:
                name = normalize(found.group(1).decode("utf-8", "replace").strip())
                await to_thread.run_sync(self._store.drop_pages, name)
            else:
                await to_thread.run_sync(self._store.drop_all_pages)
            if self._on_upload is not None:
                await self._on_upload(name)
        return Reply(answer.status, answer.body, dict(answer.headers), "BYPASS")
