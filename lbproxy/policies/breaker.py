"""The circuit breaker: a cap on requests in flight to one cluster (Envoy-style thresholds).

Owns refusing a request when the cluster already has `max_requests` leases open, with
`Refusal("circuit_open", retry_after=1)` (503 + Retry-After). As in Envoy's circuit
breaking (arch_overview/upstream/circuit_breaking) this is a threshold checked per
request, not an open/half-open/closed state machine: the breaker closes by itself as soon
as in-flight requests end. The count is `ClusterState.active` of this process, so with
N workers the cluster-wide cap is N x max_requests, just as Envoy's thresholds are per
Envoy instance. Must not touch HTTP or selection.
"""

from __future__ import annotations

from typing import final

from lbproxy.balance.gate import Cluster, Refusal

CIRCUIT_OPEN = Refusal("circuit_open", 1)


@final
class Breaker:
    """An `AdmissionPolicy` refusing requests past `max_requests` in flight (> 0)."""

    __slots__ = ("max_requests",)

    def __init__(self, max_requests: int) -> None:
        if max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {max_requests}")
        self.max_requests = max_requests

    def admit(self, cluster: Cluster, now_ns: int, attempt: int) -> Refusal | None:
        """CIRCUIT_OPEN when the cluster already has `max_requests` requests in flight."""
        return CIRCUIT_OPEN if cluster.state.active >= self.max_requests else None
