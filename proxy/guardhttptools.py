"""uvicorn's httptools protocol under the slow-client guard (httptools' home)."""

from __future__ import annotations

import asyncio
from typing import IO, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from proxy import zerocopy
from proxy.guard import Guard


class GuardedHttpToolsProtocol(Guard, HttpToolsProtocol):
    """uvicorn's httptools protocol under the Guard."""

    async def send_file_body(
        self, cycle: Any, file: IO[bytes], offset: int, count: int, *, stall: float
    ) -> None:
        await send_file(
            cycle,
            file,
            offset,
            count,
            stall=stall,
            transport=self.holding.raw,
            senders=self._connections.senders,
        )


async def send_file(
    cycle: RequestResponseCycle,
    file: IO[bytes],
    offset: int,
    count: int,
    *,
    stall: float,
    transport: asyncio.Transport | None = None,
    senders: zerocopy.Senders | None = None,
) -> None:
    """Send bytes [offset, offset + count) of `file` as the next body bytes of `cycle`'s
    response (not a HEAD's), framed as uvicorn frames a body message there: one chunk
    under chunked encoding, else counted against Content-Length.

    RuntimeError past Content-Length; else as zerocopy.send_file, after which the caller
    must close the connection. `transport`: the socket's own, when cycle's wraps it;
    `senders`: threads for the bulk of the bytes.
    """
    transport = transport or cycle.transport
    if cycle.chunked_encoding:
        transport.write(b"%x\r\n" % count)
        await zerocopy.send_slices(transport, file, offset, count, stall=stall, senders=senders)
        transport.write(b"\r\n")
        return
    if count > cycle.expected_content_length:
        raise RuntimeError("Response content longer than Content-Length")
    cycle.expected_content_length -= count  # uvicorn checks the rest at the body's end
    await zerocopy.send_slices(transport, file, offset, count, stall=stall, senders=senders)
