"""Transport benchmark: httpx's default transport (httpcore) against proxy.wire.Wire.

Run from the repository with the test venv: `.venv/bin/python bench/wire.py`.
A raw asyncio server in a child process answers every request at once (a 2,000-byte page,
or a 192 MiB body); the client's own CPU time is measured (getrusage), for sequential and
10 concurrent small requests (CPU microseconds per request) and for one big body (best of
5). "httpcore 256 KiB" is httpcore with the 256 KiB reads the proxy used before Wire.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import time

import httpcore
import httpx

from proxy.wire import Wire

PAGE = b"x" * 2000
BIG_MIB = 192


class _Server(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buffer, self.left, self.paused = transport, b"", 0, False

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            if b" /big " in head:
                length = BIG_MIB << 20
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length)
                self.left = BIG_MIB
                self.push()
            else:
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n"
                    % len(PAGE)
                    + PAGE
                )

    def push(self) -> None:
        block = b"x" * (1 << 20)
        while self.left and not self.paused:
            self.left -= 1
            self.transport.write(block)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.push()


def _serve(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Server, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _small(
    url: str, transport: httpx.AsyncBaseTransport | None, requests: int, conc: int
) -> float:
    async with httpx.AsyncClient(trust_env=False, transport=transport) as client:

        async def one() -> None:
            for _ in range(requests // conc):
                async with client.stream(
                    "GET", url + "/page", headers={"Accept": "text/html"}
                ) as r:
                    assert len(b"".join([chunk async for chunk in r.aiter_raw()])) == len(PAGE)

        await one()  # connections opened, code warm
        started = _cpu()
        await asyncio.gather(*[one() for _ in range(conc)])
        return (_cpu() - started) / requests * 1e6


async def _big(url: str, transport: httpx.AsyncBaseTransport | None) -> tuple[float, float]:
    best: tuple[float, float] | None = None
    async with httpx.AsyncClient(trust_env=False, transport=transport) as client:
        for _ in range(5):
            cpu, wall, size = _cpu(), time.perf_counter(), 0
            async with client.stream("GET", url + "/big") as response:
                async for chunk in response.aiter_raw():
                    size += len(chunk)
            assert size == BIG_MIB << 20
            sample = (_cpu() - cpu, time.perf_counter() - wall)
            best = sample if best is None or sample[0] < best[0] else best
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8799, help="the server's port (8799)")
    parser.add_argument("--requests", type=int, default=3000, help="small requests (3000)")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    server = multiprocessing.Process(target=_serve, args=(args.port,), daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # polling a condition with a deadline
            try:
                httpx.get(url + "/page", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        print(
            "| transport | CPU us/request, 1 at a time | 10 at once | 192 MiB body: CPU s, MiB/s |"
        )
        print("|---|---|---|---|")
        for name in ("httpcore 64 KiB", "httpcore 256 KiB", "Wire"):
            httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = (
                256 * 1024 if name == "httpcore 256 KiB" else 64 * 1024
            )
            make = Wire if name == "Wire" else lambda: None
            alone = asyncio.run(_small(url, make(), args.requests, 1))
            together = asyncio.run(_small(url, make(), args.requests, 10))
            cpu, wall = asyncio.run(_big(url, make()))
            print(f"| {name} | {alone:.0f} | {together:.0f} | {cpu:.3f}, {BIG_MIB / wall:.0f} |")
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
