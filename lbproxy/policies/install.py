"""Installing a cluster's policies in its `ClusterState`.

Owns turning a `ClusterConfig`'s panic threshold, outlier detection, circuit breaker,
retry budget and overload control (``state.overload``) into the `ClusterState.admission`
/ `.observers` / `.retry_admission` tuples `Cluster.begin()` and `Lease.end()` consult
(`install`, called for every snapshot build;
an `OutlierDetector` already in place is kept, so ejections and streaks survive a reload,
and so is a `RetryBudget` whose figures did not change). The work these policies do off
the request path (health checks, the ejection sweep) is lbproxy/control/upkeep.py's.
Must not touch sockets.
"""

from __future__ import annotations

from lbproxy.balance.gate import OVERLOADED, AdmissionPolicy, ClusterState, OutcomeObserver
from lbproxy.control.config import ClusterConfig
from lbproxy.policies.breaker import Breaker
from lbproxy.policies.outlier import OutlierDetector
from lbproxy.policies.overload import OverloadControl
from lbproxy.policies.retry import RetryBudget


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
    state.retry_admission = _retry_admission(state, cfg)
    state.set_panic_threshold(cfg.panic_threshold)
    _install_overload(state, cfg)


def _install_overload(state: ClusterState, cfg: ClusterConfig) -> None:
    """Adaptive limits, admission level and queue: kept across reloads (limits learned
    so far stay), dropped when disabled (waiters are then admitted as room frees)."""
    ac = cfg.adaptive_concurrency
    current = state.overload
    if not ac.enabled:
        state.overload = None
        if current is not None:
            current.release_all()
        return
    if current is None:
        current = OverloadControl(ac, cfg.queue, OVERLOADED)
        for slot, address in enumerate(state.addresses):
            if address is not None:
                current.limit(slot)
        state.overload = current
    else:
        current.reconfigure(ac, cfg.queue)

def _retry_admission(state: ClusterState, cfg: ClusterConfig) -> tuple[AdmissionPolicy, ...]:
    """The retry budget (kept across reloads while its figures stay) and others' policies."""
    others = tuple(p for p in state.retry_admission if not isinstance(p, RetryBudget))
    if cfg.retry.attempts == 0:
        return others
    wanted = RetryBudget.of(cfg.retry)
    for p in state.retry_admission:
        if isinstance(p, RetryBudget) and (p.ratio, p.reserve) == (wanted.ratio, wanted.reserve):
            return (p, *others)  # same figures: keep its window
    return (wanted, *others)
