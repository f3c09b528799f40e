"""Pages parsed and rendered off the event loop; renderings and their codings reused."""

from __future__ import annotations

import hashlib
import marshal
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from typing import Literal, Protocol, TypeVar

from anyio import CapacityLimiter, to_thread

from proxy import codings, pagerender, pages
from proxy.codings import Coding
from proxy.models import Page

RENDERED_MEMORY = 64 * 1024 * 1024
"""Default bound on the bytes of renderings kept in memory."""
THREADS = 2
"""Worker threads parsing or rendering at once: the work holds the GIL, so more threads
would not go faster, only take turns from the event loop."""
_FIELDS = attrgetter("path", "text", "fragment", "attrs")  # what render reads of a Link

T = TypeVar("T")


def digest(page: Page) -> bytes:
    """A digest of everything `pagerender.render` reads from `page`: equal only for equal pages."""
    # marshal (C, 4x faster than json here) writes values unambiguously, so equal bytes
    # are equal pages; it may write one page two ways (it marks shared objects), which
    # costs a rendering, never a wrong one. sha256, so no uploader can make two
    # different pages share a rendering.
    content = (page.title, page.kind, page.json, list(map(_FIELDS, page.links)))
    return hashlib.sha256(marshal.dumps(content)).digest()


@dataclass(frozen=True, slots=True)
class Rendering:
    """A page as sent: its body in `coding`, with the validator of exactly these bytes."""

    body: bytes
    content_type: str
    etag: str
    """Strong and quoted (RFC 9110 8.8.3): a hash of the rendered bytes, with the coding's
    name after it unless identity, since each coding is a representation of its own."""
    coding: Coding = "identity"


class Render(Protocol):
    """How a page becomes (body, content type): pagerender.render, or a fake in tests."""

    def __call__(self, page: Page, *, base_url: str) -> tuple[bytes, str]: ...


class Renderer:
    """Parses GitLab's pages and renders them off the event loop, keeping the most recently
    used renderings up to `max_bytes` in all, keyed by page content, base URL and coding."""

    def __init__(
        self,
        *,
        max_bytes: int = RENDERED_MEMORY,
        render: Render = pagerender.render,
    ) -> None:
        self.max_bytes = max_bytes
        self._render = render
        self._kept: OrderedDict[tuple[bytes, str, Coding], Rendering] = OrderedDict()
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
        coding: Coding = "identity",
    ) -> Rendering:
        """`page` (or its links to files `held` says are held) rendered and put in `coding`
        (identity for a body under codings.MIN_SIZE); the same bytes for as long as the
        page (and what is held) stays the same, rendered and encoded once."""
        return await self.run(
            partial(self.rendered, page, base_url=base_url, held=held, coding=coding)
        )

    async def run(self, work: Callable[[], T]) -> T:
        """`work` (which renders) in a thread, within the renderer's bound on threads."""
        return await to_thread.run_sync(work, limiter=self._threads)

    def rendered(
        self,
        page: Page,
        *,
        base_url: str,
        held: Callable[[frozenset[str]], frozenset[str]] | None = None,
        coding: Coding = "identity",
    ) -> Rendering:
        """(Blocking) render()."""
        if held is not None:
            page = page.only(held(page.shas()))
        key = digest(page)
        with self._lock:
            plain = self._found((key, base_url, "identity"))
            if plain is None:
                body, content_type = self._render(page, base_url=base_url)
                etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                plain = Rendering(body, content_type, etag)
                self._keep((key, base_url, "identity"), plain)
            if coding == "identity" or len(plain.body) < codings.MIN_SIZE:
                return plain
            coded = self._found((key, base_url, coding))
            if coded is None:
                coded = Rendering(
                    codings.encode(plain.body, coding),
                    plain.content_type,
                    f'{plain.etag[:-1]}-{coding}"',
                    coding,
                )
                self._keep((key, base_url, coding), coded)
            return coded

    def _found(self, key: tuple[bytes, str, Coding]) -> Rendering | None:
        found = self._kept.get(key)
        if found is not None:
            self._kept.move_to_end(key)
        return found

    def _keep(self, key: tuple[bytes, str, Coding], rendering: Rendering) -> None:
        size = len(rendering.body)
        if size > self.max_bytes:
            return
        self._kept[key] = rendering
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, gone = self._kept.popitem(last=False)
            self._bytes -= len(gone.body)
