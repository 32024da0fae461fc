"""Snapshots: everything a request reads, built off the request path and swapped whole.

Owns `Snapshot` (frozen: routes, clusters with their selectors, timeouts, limits, drain
marks) and `build_snapshot`, which turns a validated `Config` into one. The controller
stores a new snapshot with a single assignment (`dataplane.snapshot = new`); a request
reads it once and uses only that object until it ends. Must not touch sockets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import final

from lbproxy.balance.cluster import Cluster, ClusterState
from lbproxy.control.config import Config, Limits, Timeouts, Upstream
from lbproxy.policies.install import install
from lbproxy.proxy.routing import Route, Router


@final
@dataclass(frozen=True, slots=True)
class Snapshot:
    """One immutable view of the configuration the data plane serves from."""

    version: int
    config: Config
    router: Router
    clusters: Mapping[str, Cluster]
    timeouts: Timeouts
    limits: Limits
    upstream: Upstream
    # Cluster name → addresses an operator drained (admin PATCH). Part of the snapshot, not
    # of `ClusterState` alone, so that publishing a snapshot (to workers too) publishes them.
    drained: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: MappingProxyType({}))


def build_snapshot(cfg: Config, states: dict[str, ClusterState] | None = None,
                   version: int = 1,
                   drained: Mapping[str, Iterable[str]] | None = None) -> Snapshot:
    """Build a snapshot; `states` (by cluster name) is created into and reused across calls.

    `drained` (cluster → addresses) replaces the drain marks; None keeps the states' own.
    Marks for addresses that are not members are dropped (a backend re-added starts active).
    """
    if states is None:
        states = {}
    for gone in [name for name in states if name not in cfg.clusters]:
        # In-flight leases hold their ClusterState directly, so dropping it here is safe.
        del states[gone]
    clusters: dict[str, Cluster] = {}
    for name, cc in cfg.clusters.items():
        state = states.get(name)
        if state is None:
            state = states[name] = ClusterState(name)
        if drained is not None:
            state.set_drained(drained.get(name, ()))
        clusters[name] = Cluster(name, cc, state)  # assign() forgets non-members' marks
        install(state, cc)  # breaker, outlier detection, panic threshold
    routes = [
        Route.from_config(rc, clusters[rc.cluster], cfg.limits.max_body_bytes)
        for rc in cfg.routes
    ]
    return Snapshot(
        version=version,
        config=cfg,
        router=Router(routes),
        clusters=MappingProxyType(clusters),
        timeouts=cfg.timeouts,
        limits=cfg.limits,
        upstream=cfg.upstream,
        drained=MappingProxyType({name: state.drained for name, state in states.items()
                                  if state.drained}),
    )
