"""Plugging a cluster's resilience policies into its `ClusterState`, and their background work.

Owns turning a `ClusterConfig`'s panic threshold, outlier detection and circuit breaker
into the `ClusterState.admission` / `.observers` tuples `Cluster.begin()` and
`Lease.end()` consult (`install`, called for every snapshot build; an `OutlierDetector`
already in place is kept, so ejections and streaks survive a reload), and the work off the
request path in each process that owns a data plane (`start`): active health checks and a
periodic sweep that returns expired ejections even when no request comes to do it lazily
(so the admin API never shows a stale `ejected`). Must not touch sockets itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, final

from lbproxy.breaker import Breaker
from lbproxy.cluster import AdmissionPolicy, ClusterState, OutcomeObserver
from lbproxy.config import ClusterConfig
from lbproxy.health import HealthChecker
from lbproxy.outlier import OutlierDetector

if TYPE_CHECKING:  # snapshot.py imports this module: type-only imports avoid the cycle
    from lbproxy.controller import Controller
    from lbproxy.snapshot import Snapshot

SWEEP_INTERVAL_S = 1.0


def detector_of(state: ClusterState) -> OutlierDetector | None:
    """The cluster's outlier detector, if one is installed."""
    for observer in state.observers:
        if isinstance(observer, OutlierDetector):
            return observer
    return None


def install(state: ClusterState, cfg: ClusterConfig) -> None:
    """Install `cfg`'s policies in `state` (idempotent; keeps outlier state across calls)."""
    # Policies installed by others (stats, shedding, ...) are kept, in their order.
    admission: list[AdmissionPolicy] = [
        p for p in state.admission if not isinstance(p, OutlierDetector | Breaker)]
    observers: list[OutcomeObserver] = [
        o for o in state.observers if not isinstance(o, OutlierDetector)]
    detector = detector_of(state)
    if cfg.outlier_detection.enabled:
        if detector is None:
            detector = OutlierDetector(state, cfg.outlier_detection)
        else:
            detector.reconfigure(cfg.outlier_detection)
        admission.insert(0, detector)  # first: it returns expired ejections before selection
        observers.append(detector)
    elif detector is not None:
        detector.release_all()
    if cfg.circuit_breaker.max_requests > 0:
        admission.append(Breaker(cfg.circuit_breaker.max_requests))
    state.admission = tuple(admission)
    state.observers = tuple(observers)
    state.set_panic_threshold(cfg.panic_threshold)


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
