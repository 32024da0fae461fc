"""Plugging a cluster's resilience policies into its long-lived `ClusterState`.

Owns turning a `ClusterConfig`'s panic threshold, outlier detection and circuit breaker
into the `ClusterState.admission` / `.observers` tuples `Cluster.begin()` and
`Lease.end()` consult. Called for every snapshot build; an `OutlierDetector` already in
place is kept (reconfigured), so ejections and streaks survive a reload. Active health
checks run outside the request path (lbproxy/health.py). Must not touch sockets.
"""

from __future__ import annotations

from lbproxy.breaker import Breaker
from lbproxy.cluster import AdmissionPolicy, ClusterState, OutcomeObserver
from lbproxy.config import ClusterConfig
from lbproxy.outlier import OutlierDetector


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
