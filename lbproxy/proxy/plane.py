"""The data plane object: snapshot holder, client protocol factory, pools, timers, drain.

Owns what outlives a single connection: the current snapshot (replaced by one assignment),
the upstream pools keyed by backend address (they outlive snapshots), the one ticker that
enforces every deadline (a per-connection float compared on each tick, instead of a timer
handle created and cancelled per request), and graceful drain. Must not build snapshots
or touch the control plane.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from lbproxy.proxy.protocols import ClientConnection, UpstreamPool

if TYPE_CHECKING:
    from lbproxy.control.snapshot import Snapshot


class DataPlane:
    """HTTP/1.1 reverse proxy data plane; `snapshot` is swapped whole by the controller."""

    def __init__(self, snapshot: Snapshot, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.snapshot = snapshot
        self._loop = loop  # resolved on the first connection when not given
        self.draining = False
        # lbproxy/proxy/protection.py's state: 1 shed sheddable requests after the head,
        # 2 (the listener) stop accepting, 3 close connections after each response.
        self.protect = 0
        self.inflight_requests = 0
        self._connections: set[ClientConnection] = set()
        # Upstream pools by backend address: they outlive snapshots. The client protocol reads
        # this dict directly (one lookup per request, no Python frame for pool()).
        self.pools: dict[tuple[str, int], UpstreamPool] = {}
        self._ticker: asyncio.TimerHandle | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop serving this plane (the running one, fixed at first use)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    @property
    def active_connections(self) -> int:
        """Open client connections."""
        return len(self._connections)

    def protocol_factory(self) -> asyncio.Protocol:
        """A new client-connection Protocol (pass this method to loop.create_server)."""
        # An asyncio protocol by duck typing: compiled, ClientConnection is a cdef class,
        # which cannot also derive from the Python class asyncio.Protocol.
        return cast(asyncio.Protocol, ClientConnection(self))

    def pool(self, host: str, port: int) -> UpstreamPool:
        """The connection pool of one backend address (created on first use)."""
        key = (host, port)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = UpstreamPool(self, host, port)
        return pool

    def register(self, conn: ClientConnection) -> None:
        """Track a new client connection; start the ticker with the first one."""
        self._connections.add(conn)
        if self._ticker is None:
            self._ticker = self.loop.call_later(self._tick_interval(), self._tick)

    def unregister(self, conn: ClientConnection) -> None:
        """Forget a closed client connection."""
        self._connections.discard(conn)

    def _tick_interval(self) -> float:
        t = self.snapshot.timeouts
        # A quarter of the shortest timeout bounds how late a deadline fires (<= 25 %).
        shortest = min(
            t.request_headers, t.client_body_idle, t.client_idle, t.connect,
            t.upstream_headers, t.upstream_idle,
        )
        return min(0.5, max(0.01, shortest / 4))

    def _tick(self) -> None:
        """Fire every passed deadline; close pooled connections idle for too long."""
        now = self.loop.time()
        for conn in [c for c in self._connections if c.deadline <= now or c.up_deadline <= now]:
            if conn.deadline <= now:
                conn.client_timeout()
            if conn.up_deadline <= now:
                conn.upstream_timeout(now)
        idle_timeout = self.snapshot.upstream.idle_timeout
        for pool in self.pools.values():
            if pool.idle:
                pool.sweep(now, idle_timeout)
        if self._connections or any(p.idle for p in self.pools.values()):
            self._ticker = self.loop.call_later(self._tick_interval(), self._tick)
        else:
            self._ticker = None

    async def drain(self, deadline_s: float) -> None:
        """Stop keep-alive, close idle connections, wait for in-flight up to `deadline_s`."""
        self.draining = True
        for conn in list(self._connections):
            conn.drain()
        for pool in self.pools.values():
            pool.close_idle()
        end = self.loop.time() + deadline_s
        while self._connections and self.loop.time() < end:
            await asyncio.sleep(0.01)
        for conn in list(self._connections):
            conn.abort()
        for pool in self.pools.values():
            pool.close_idle()
