"""The admin API (JSON over HTTP on `admin.bind`, aiohttp): readiness and cluster views.

Owns the HTTP surface of CONTRACT.md's admin table. It reads the current `Snapshot`
through `AdminAPI.snapshot`, which the controller replaces with one assignment, and reads
in-flight counts through an `InflightSource` (the local `ClusterState`s in a single
process; the workers' reports under a supervisor). Mutating endpoints come with a later
issue; they will build a new snapshot and assign it the same way. Must not touch the data
plane's internals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from lbproxy.snapshot import Snapshot
from lbproxy.webapp import start_app

# (cluster name, backend address) → requests in flight to it.
InflightSource = Callable[[str, str], int]


class AdminAPI:
    """The admin application; `snapshot`, `accepting` and `draining` are set by the server."""

    def __init__(self, snapshot: Snapshot, inflight: InflightSource | None = None) -> None:
        self.snapshot = snapshot  # replaced whole by the controller, never mutated
        self.accepting = False  # every listener is accepting
        self.draining = False  # shutting down: readiness goes 503 so balancers move away
        self._inflight = inflight
        self.app = web.Application()
        self.app.router.add_get("/ready", self.ready)
        self.app.router.add_get("/clusters", self.clusters)
        self._runner: web.AppRunner | None = None

    def inflight(self, cluster: str, address: str) -> int:
        """In-flight requests to one backend, from the configured source."""
        if self._inflight is not None:
            return self._inflight(cluster, address)
        c = self.snapshot.clusters.get(cluster)
        return 0 if c is None else c.state.inflight(address)

    async def ready(self, request: web.Request) -> web.Response:
        """GET /ready: 200 once every listener accepts; 503 while starting or draining."""
        if self.accepting and not self.draining:
            return web.json_response({"ready": True})
        reason = "draining" if self.draining else "starting"
        return web.json_response({"ready": False, "reason": reason}, status=503)

    def clusters_view(self) -> dict[str, Any]:
        """The /clusters document for the current snapshot (CONTRACT.md shape)."""
        snap = self.snapshot  # read once: one consistent view
        out: dict[str, Any] = {}
        for name, cluster in snap.clusters.items():
            state = cluster.state
            out[name] = {
                "policy": cluster.policy,
                "version": snap.version,
                "backends": [
                    {
                        "address": b.address,
                        "weight": b.weight,
                        "zone": b.zone,
                        "state": state.state_of(b.address),
                        "healthy": True,  # until active health checks exist
                        "inflight": self.inflight(name, b.address),
                    }
                    for b in cluster.backends
                ],
            }
        return {"clusters": out}

    async def clusters(self, request: web.Request) -> web.Response:
        """GET /clusters: policy, version and backends of every cluster (read-only)."""
        return web.json_response(self.clusters_view())

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (OSError when it cannot); returns the bound port."""
        self._runner, bound = await start_app(self.app, host, port)
        return bound

    async def stop(self) -> None:
        """Stop listening and close admin connections."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
