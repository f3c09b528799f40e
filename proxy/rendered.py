"""Pages parsed and rendered in worker threads, renderings reused while their page is the same."""

from __future__ import annotations

import hashlib
import marshal
import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from operator import attrgetter
from typing import Literal, Protocol

from anyio import CapacityLimiter, to_thread

from proxy import pages
from proxy.models import Page

RENDERED_MEMORY = 64 * 1024 * 1024
"""Default bound on the bytes of renderings kept in memory."""
THREADS = 2
"""Worker threads parsing or rendering at once: the work holds the GIL, so more threads
would not go faster, only take turns from the event loop."""
_FIELDS = attrgetter("path", "text", "fragment", "attrs")  # what render reads of a Link


def digest(page: Page) -> bytes:
    """A digest of everything `pages.render` reads from `page`: equal only for equal pages."""
    # marshal (C, 4x faster than json here) writes values unambiguously, so equal bytes
    # are equal pages; it may write one page two ways (it marks shared objects), which
    # costs a rendering, never a wrong one. sha256, so no uploader can make two
    # different pages share a rendering.
    content = (page.title, page.kind, page.json, list(map(_FIELDS, page.links)))
    return hashlib.sha256(marshal.dumps(content)).digest()


class Render(Protocol):
    """How a page becomes (body, content type): pages.render, or a fake in tests."""

    def __call__(self, page: Page, *, base_url: str) -> tuple[bytes, str]: ...


class Renderer:
    """Parses GitLab's pages and renders them off the event loop, keeping the most recently
    used renderings up to `max_bytes` in all, keyed by page content and base URL."""

    def __init__(
        self,
        *,
        max_bytes: int = RENDERED_MEMORY,
        render: Render = pages.render,
    ) -> None:
        self.max_bytes = max_bytes
        self._render = render
        self._kept: OrderedDict[tuple[bytes, str], tuple[bytes, str]] = OrderedDict()
        self._bytes = 0
        # One rendering at a time: ten clients on a new big page wait for one rendering
        # instead of making ten (the GIL runs one at a time anyway).
        self._lock = threading.Lock()
        self._threads = CapacityLimiter(THREADS)

    def __repr__(self) -> str:
        return f"Renderer(max_bytes={self.max_bytes}, held_bytes={self.held_bytes})"

    @property
    def held_bytes(self) -> int:
        """Bytes of the renderings kept now (never above max_bytes)."""
        return self._bytes

    async def parse(
        self,
        body: bytes,
        *,
        content_type: str,
        page_url: str,
        upstream_url: str,
        kind: Literal["index", "project"],
    ) -> Page:
        """pages.parse in a worker thread."""
        return await to_thread.run_sync(
            partial(
                pages.parse,
                body,
                content_type=content_type,
                page_url=page_url,
                upstream_url=upstream_url,
                kind=kind,
            ),
            limiter=self._threads,
        )

    async def render(
        self,
        page: Page,
        *,
        base_url: str,
        held: Callable[[frozenset[str]], frozenset[str]] | None = None,
    ) -> tuple[bytes, str]:
        """(body, content type) of `page`, or of its links to files `held` says are held;
        the same bytes for as long as the page (and what is held) stays the same."""
        return await to_thread.run_sync(self._rendered, page, base_url, held, limiter=self._threads)

    def _rendered(
        self,
        page: Page,
        base_url: str,
        held: Callable[[frozenset[str]], frozenset[str]] | None,
    ) -> tuple[bytes, str]:
        if held is not None:
            page = page.only(held(page.shas()))
        key = (digest(page), base_url)
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
                return found
            rendered = self._render(page, base_url=base_url)
            self._keep(key, rendered)
            return rendered

    def _keep(self, key: tuple[bytes, str], rendered: tuple[bytes, str]) -> None:
        size = len(rendered[0])
        if size > self.max_bytes:
            return
        self._kept[key] = rendered
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (body, _type) = self._kept.popitem(last=False)
            self._bytes -= len(body)
