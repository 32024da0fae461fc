"""Per-process upkeep off the request path: active health checks and the ejection sweep.

Owns the background work of each process that owns a data plane (`start`): one probe
task per checked backend (lbproxy/policies/health.py), reconciled with every snapshot,
and a periodic sweep that returns expired ejections even when no request comes to do it
lazily (so the admin API never shows a stale `ejected`); and, under a supervisor, the
health and ejection marks each worker reports and the supervisor mirrors for /clusters.
Must not touch sockets itself or the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, final

from lbproxy.policies.health import HealthChecker
from lbproxy.policies.install import detector_of

if TYPE_CHECKING:
    from lbproxy.control.controller import Controller
    from lbproxy.control.snapshot import Snapshot

SWEEP_INTERVAL_S = 1.0


def sweep(snapshot: Snapshot, now_ns: int) -> None:
    """Return every ejection in `snapshot` that expired by `now_ns`."""
    for cluster in snapshot.clusters.values():
        detector = detector_of(cluster.state)
        if detector is not None:
            detector.sweep(now_ns)


@final
class Upkeep:
    """Health checks and the ejection sweep of one data-plane process; `stop()` ends both."""

    def __init__(self, controller: Controller) -> None:
        self.checks = HealthChecker()
        self.checks.update(controller.snapshot)
        controller.sinks.append(self.checks.update)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(controller))

    @staticmethod
    async def _sweep(controller: Controller) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            # The data plane's clock (lbproxy/proxy/client.py uses time.monotonic_ns).
            sweep(controller.snapshot, time.monotonic_ns())

    async def stop(self) -> None:
        """Cancel the sweep and every health probe."""
        self._sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper
        await self.checks.stop()


def start(controller: Controller) -> Upkeep:
    """Start health checks and the ejection sweep for `controller`'s snapshots."""
    return Upkeep(controller)


# Per cluster, the addresses with each mark: what a worker reports to its supervisor.
MarksView = dict[str, dict[str, list[str]]]


def marks_view(snapshot: Snapshot) -> MarksView:
    """This process's unhealthy and ejected members per cluster (JSON-ready)."""
    out: MarksView = {}
    for name, cluster in snapshot.clusters.items():
        state = cluster.state
        unhealthy = [b.address for b in cluster.backends if state.is_unhealthy(b.address)]
        ejected = [b.address for b in cluster.backends if state.is_ejected(b.address)]
        if unhealthy or ejected:
            out[name] = {"unhealthy": unhealthy, "ejected": ejected}
    return out


def mirror_marks(snapshot: Snapshot, reports: list[MarksView]) -> None:
    """Set `snapshot`'s marks to the union of the workers' reports (the supervisor's view).

    Each worker checks and ejects on its own, so they may disagree for a moment; the admin
    API shows a backend unhealthy (or ejected) while any worker has it so.
    """
    for name, cluster in snapshot.clusters.items():
        unhealthy = {a for r in reports for a in r.get(name, {}).get("unhealthy", ())}
        ejected = {a for r in reports for a in r.get(name, {}).get("ejected", ())}
        for b in cluster.backends:
            cluster.state.set_unhealthy(b.address, b.address in unhealthy)
            cluster.state.set_ejected(b.address, b.address in ejected)
