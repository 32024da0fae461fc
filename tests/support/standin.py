"""A stand-in for `lbproxy.proxy.DataPlane`, for server/CLI tests only (never shipped).

It speaks just enough HTTP/1.1 to answer every request with 200 and a body naming the
process, so tests can see which worker served; the real data plane lives in lbproxy/proxy/.
"""

from __future__ import annotations

import asyncio
import os


class _Answer(asyncio.Protocol):
    def __init__(self, plane: StandInDataPlane) -> None:
        self.plane = plane
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):
        self.transport = transport
        self.plane.active_connections += 1

    def connection_lost(self, exc):
        self.plane.active_connections -= 1

    def data_received(self, data):
        self.buf += data
        if b"\r\n\r\n" in self.buf and self.transport is not None:
            body = f"pid={os.getpid()}".encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(body), body))
            self.transport.close()


class StandInDataPlane:
    """Answers 200 `pid=N` to every request; `drain` waits for open connections to close."""

    def __init__(self, snapshot):
        self.snapshot = snapshot
        self.protect = 0
        self.active_connections = 0
        self.inflight_requests = 0

    def protocol_factory(self):
        return _Answer(self)

    async def drain(self, deadline_s):
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while self.active_connections and loop.time() < end:
            await asyncio.sleep(0.01)
