"""Capacity-limited origin for the `surge` scenario: N requests in service at once, FIFO beyond.

Owns its socket and its queue only: uvloop + httptools like bench/sink.py. Each request
takes exactly `service_ms`; at most `concurrency` are in service at once and the rest wait
in one unbounded FIFO, like a real origin whose accept queue and thread pool back up. So
its capacity is exactly concurrency / service time and a load factor means the same thing
for every proxy. Every answer is a small 200 with an `X-Backend` header naming the origin.
`GET /health` is answered at once, outside the queue, with the counters as JSON (the runner
waits on it for an idle origin between phases). Run as
`python -m bench.origin PORT NAME CONCURRENCY SERVICE_MS`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import sys
import time
from collections.abc import Callable

import uvloop

from bench.sink import ServerConnection

BODY = b"s" * 512  # a small body: the origin's cost is its service time, not its bytes


class CapacityLimit:
    """The workers and their FIFO: when each request starts and finishes, in virtual time.

    A worker that finished at its scheduled time T starts the next queued request at
    max(T, that request's arrival), not when the timer callback happened to run, so timer
    lateness (libuv timers tick in whole milliseconds) never lowers the capacity. A timer
    can also fire early, by up to 1.5 ms (uvloop rounds the delay to whole milliseconds and
    libuv counts it from its clock truncated to the millisecond): it is set again for the
    rest, so no answer leaves before its request's service time is up.
    """

    def __init__(self, concurrency: int, service_ns: int,
                 clock: Callable[[], int] = time.monotonic_ns,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.concurrency = concurrency
        self.service_ns = service_ns
        self.clock = clock
        self.loop = loop or asyncio.get_running_loop()
        self.busy = 0
        self.queue: collections.deque[tuple[OriginConnection, int]] = collections.deque()
        self.served = 0
        self.dropped = 0  # queued requests whose connection closed before a worker took them
        self.max_queue = 0

    def submit(self, conn: OriginConnection, arrival_ns: int) -> None:
        """A request arrived: start it on a free worker, or queue it."""
        if self.busy < self.concurrency:
            self._start(conn, arrival_ns)
        else:
            self.queue.append((conn, arrival_ns))
            self.max_queue = max(self.max_queue, len(self.queue))

    def _start(self, conn: OriginConnection, start_ns: int) -> None:
        self.busy += 1
        finish_ns = start_ns + self.service_ns
        delay = max(0.0, (finish_ns - self.clock()) / 1e9)
        self.loop.call_later(delay, self._finish, conn, finish_ns)

    def _finish(self, conn: OriginConnection, finish_ns: int) -> None:
        early_ns = finish_ns - self.clock()
        if early_ns > 0:  # the rest, rounded up: a 0 ms timer would spin the loop
            self.loop.call_later(math.ceil(early_ns / 1e6) / 1e3, self._finish, conn, finish_ns)
            return
        self.busy -= 1
        self.served += 1
        conn.respond()
        # A request whose client left while it waited is dropped when it reaches the head,
        # as a server notices a closed socket when it reads; one already in service is
        # served in full. Stopping a proxy therefore empties the queue.
        while self.queue:
            nxt, arrival_ns = self.queue.popleft()
            if nxt.transport is None:
                self.dropped += 1
                continue
            self._start(nxt, max(arrival_ns, finish_ns))
            break

    def stats(self) -> dict[str, int]:
        """Counters for /health and tests."""
        return {"busy": self.busy, "queued": len(self.queue), "served": self.served,
                "dropped": self.dropped, "max_queue": self.max_queue,
                "concurrency": self.concurrency, "service_us": self.service_ns // 1000}


class OriginConnection(ServerConnection):
    """One client (proxy) connection; requests on it are answered in arrival order."""

    def __init__(self, limit: CapacityLimit, name: bytes) -> None:
        super().__init__()
        self.limit = limit
        self.url = b""
        self.keep: collections.deque[bool] = collections.deque()  # per request in service
        self.head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     b"X-Backend: %s\r\nContent-Length: %d\r\n" % (name, len(BODY)))

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        if self.transport is None:
            return
        keep = self.parser.should_keep_alive()
        if self.url == b"/health":
            payload = json.dumps(self.limit.stats()).encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
            if not keep:
                self.transport.close()
            return
        self.keep.append(keep)
        self.limit.submit(self, self.limit.clock())

    def respond(self) -> None:
        """A worker finished this connection's oldest request: write its answer."""
        keep = self.keep.popleft() if self.keep else False
        if self.transport is None:
            return
        close = b"" if keep else b"Connection: close\r\n"
        self.transport.write(self.head + close + b"\r\n" + BODY)
        if not keep:
            self.transport.close()


async def serve(port: int, name: str, concurrency: int, service_ms: float,
                ready: asyncio.Future[tuple[CapacityLimit, int]] | None = None) -> None:
    """Listen on 127.0.0.1:port until cancelled or killed; `ready` is given the limit and
    the port listened on (the one the kernel chose, for port 0)."""
    loop = asyncio.get_running_loop()
    limit = CapacityLimit(concurrency, int(service_ms * 1e6))
    server = await loop.create_server(lambda: OriginConnection(limit, name.encode()),
                                      "127.0.0.1", port, backlog=4096)
    if ready is not None:
        ready.set_result((limit, int(server.sockets[0].getsockname()[1])))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
