"""Upload sink backend for the bench: reads request bodies as fast as it can, answers 200.

Owns nothing but its socket: uvloop + httptools, counts body bytes and replies with the
count as JSON and an `X-Backend` header naming itself, so the generator can attribute the
request. Run as `python -m bench.sink PORT NAME`.
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop


class ServerConnection(asyncio.Protocol):
    """A server-side HTTP/1.1 connection parsed by httptools; subclasses handle the callbacks."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()


class SinkConnection(ServerConnection):
    """One client connection; keep-alive, no pipelining needed."""

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name
        self.received = 0

    def on_message_begin(self) -> None:
        self.received = 0

    def on_body(self, body: bytes) -> None:
        self.received += len(body)

    def on_message_complete(self) -> None:
        if self.transport is None:
            return
        payload = b'{"bytes": %d}' % self.received
        keep = self.parser.should_keep_alive()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Backend: %s\r\n"
            b"Content-Length: %d\r\n%s\r\n%s"
            % (self.name, len(payload), b"" if keep else b"Connection: close\r\n", payload)
        )
        if not keep:
            self.transport.close()


async def serve(port: int, name: str) -> None:
    """Listen on 127.0.0.1:port until killed."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SinkConnection(name.encode()), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2]))
