"""The uvloop floor, not a proxy: ``floor.py PORT BACKEND`` copies bytes unparsed.

One upstream connection per client connection, bytes relayed both ways with no parsing,
no routing and no pool: what one uvloop worker costs per request before any HTTP work.
Measure it like the proxies (wrk on CPU 1, this on CPU 0, /proc CPU time) to see how much
of lbproxy's per-request cost is its own Python work.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class Upstream(asyncio.Protocol):
    """Backend side: everything read goes to the client."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.client.transport is not None and not self.client.transport.is_closing():
            self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class Client(asyncio.Protocol):
    """Client side: everything read goes to the backend (held until connected)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.held: list[bytes] = []
        self.connecting: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(lambda: Upstream(self), self.host,
                                                        self.port)
        assert self.upstream.transport is not None
        for data in self.held:
            self.upstream.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.upstream is None or self.upstream.transport is None:
            self.held.append(data)
        else:
            self.upstream.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def main(port: int, backend: str) -> None:
    """Listen on 127.0.0.1:`port` until killed."""
    host, _, bport = backend.rpartition(":")
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Client(host, int(bport)), "127.0.0.1", port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
