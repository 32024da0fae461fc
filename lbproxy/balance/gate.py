"""Facade over the cluster gate: the compiled ``_cluster_c`` or its source ``cluster``.

The gate is written once, in lbproxy/balance/cluster.py; Cython compiles that file as
``lbproxy.balance._cluster_c`` (its C types in ``_cluster_c.pxd``). lbproxy/native.py
picks which one this process uses; type checkers read the source. Everything outside the
gate imports its names from here, so a process never mixes the two builds' classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbproxy import native

if TYPE_CHECKING:
    from lbproxy.balance.cluster import (
        BACKEND_FAILURES,
        FAILURE_PENALTY_NS,
        HEALTH_BITS,
        NEVER_NS,
        NO_HEALTHY_BACKEND,
        OVERLOADED,
        REFUSE_DRAIN,
        REFUSE_EJECTED,
        REFUSE_REMOVED,
        REFUSE_UNHEALTHY,
        WAIT,
        AdmissionPolicy,
        BackendCounters,
        BackendInfo,
        Cluster,
        ClusterState,
        Lease,
        Outcome,
        OutcomeObserver,
        Refusal,
        SlotPlan,
        in_panic,
    )
__all__ = [
    "BACKEND_FAILURES",
    "FAILURE_PENALTY_NS",
    "HEALTH_BITS",
    "NEVER_NS",
    "NO_HEALTHY_BACKEND",
    "OVERLOADED",
    "REFUSE_DRAIN",
    "REFUSE_EJECTED",
    "REFUSE_REMOVED",
    "REFUSE_UNHEALTHY",
    "WAIT",
    "AdmissionPolicy",
    "BackendCounters",
    "BackendInfo",
    "Cluster",
    "ClusterState",
    "Lease",
    "Outcome",
    "OutcomeObserver",
    "Refusal",
    "SlotPlan",
    "in_panic",
]

if not TYPE_CHECKING:
    _impl = native.load("lbproxy.balance._cluster_c")
    globals().update({name: getattr(_impl, name) for name in __all__})
    del _impl
