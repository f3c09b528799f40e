"""Slow-loris clients: connections that send a request head a byte at a time, never finishing."""

from __future__ import annotations

import errno
import selectors
import socket
from dataclasses import dataclass, field

# A head that never ends: after these bytes, one more header value byte each time.
_START = b"GET /-/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


@dataclass
class _Slow:
    sock: socket.socket
    sent: int = 0

    def next_byte(self) -> bytes:
        byte = _START[self.sent : self.sent + 1] or b"a"
        self.sent += 1
        return byte


@dataclass
class SlowHeads:
    """Up to `count` connections to 127.0.0.1:`port`, each trickling a head that never ends."""

    port: int
    count: int
    closed_by_server: int = 0
    """Connections the server closed (EOF or reset) while the head was unfinished."""
    refused: int = 0
    """Connection attempts that failed or timed out."""
    _open: dict[int, _Slow] = field(default_factory=dict)
    _selector: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)

    @property
    def held(self) -> int:
        """Connections open right now, as far as this side knows."""
        return len(self._open)

    def fill(self, *, at_most: int | None = None, connect_timeout: float = 0.5) -> None:
        """Open connections (`at_most` this time) towards `count` held, each sending a byte."""
        missing = self.count - len(self._open)
        for _ in range(missing if at_most is None else min(at_most, missing)):
            sock = socket.socket()
            sock.settimeout(connect_timeout)
            try:
                sock.connect(("127.0.0.1", self.port))
            except OSError:
                sock.close()
                self.refused += 1
                continue
            sock.setblocking(False)
            slow = _Slow(sock)
            self._open[sock.fileno()] = slow
            self._selector.register(sock, selectors.EVENT_READ)
            self._send(slow)

    def trickled(self) -> int:
        """Send one more byte on every held connection; drop those the server closed.

        Returns how many are still held.
        """
        self.reap()
        for slow in list(self._open.values()):
            self._send(slow)
        return self.held

    def reap(self) -> None:
        """Drop (and count) the held connections the server has closed."""
        for key, _ in self._selector.select(timeout=0):
            slow = self._open.get(key.fd)
            if slow is None:
                continue
            try:
                data = slow.sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # anything else (a 4xx) is followed by the close
                self._drop(slow)

    def close(self) -> None:
        """Close every held connection from this side."""
        for slow in list(self._open.values()):
            self._selector.unregister(slow.sock)
            slow.sock.close()
        self._open.clear()
        self._selector.close()

    def _send(self, slow: _Slow) -> None:
        try:
            slow.sock.send(slow.next_byte())
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
            self._drop(slow)

    def _drop(self, slow: _Slow) -> None:
        self._selector.unregister(slow.sock)
        del self._open[slow.sock.fileno()]
        slow.sock.close()
        self.closed_by_server += 1
