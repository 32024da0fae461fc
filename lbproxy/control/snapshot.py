"""Snapshots: everything a request reads, built off the request path and swapped whole.

Owns `Snapshot` (frozen: routes, clusters with their selectors, timeouts, limits, drain
marks) and `build_snapshot`, which turns a validated `Config` into one *without touching
any live `ClusterState`*: slots are planned, not taken, and policies are not installed
yet. `Snapshot.activate()` makes those changes live, and the controller calls it right
before it stores the snapshot with a single assignment (`dataplane.snapshot = new`), with
no await in between, so a request never sees one snapshot's state with another's routes
(Pingora's `update()` builds, then swaps). A snapshot that is never activated (a dry run,
a build that fails half-way) changes nothing. A request reads the snapshot once and uses
only that object until it ends. Must not touch sockets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import final

from lbproxy.balance.gate import Cluster, ClusterState
from lbproxy.control.config import Config, Limits, Timeouts, Upstream, backend_of
from lbproxy.policies.install import install
from lbproxy.proxy.routing import Route, Router


@final
class Activation:
    """What a snapshot changes in the long-lived states when it is activated (once)."""

    __slots__ = ("done", "drained", "states")

    def __init__(self, states: dict[str, ClusterState],
                 drained: Mapping[str, frozenset[str]]) -> None:
        self.states = states  # the controller's long-lived dict, by cluster name
        self.drained = drained
        self.done = False


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
    # Cluster name -> addresses an operator drained (admin PATCH). Part of the snapshot, not
    # of `ClusterState` alone, so that publishing a snapshot (to workers too) publishes them.
    drained: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: MappingProxyType({}))
    activation: Activation | None = field(default=None, repr=False, compare=False)

    def activate(self) -> Snapshot:
        """Make this snapshot's slots, marks and policies live; returns the snapshot.

        Call it once, right before publishing: it commits each cluster's slot plan,
        applies the drain marks, installs the configured policies, and adds and drops
        `ClusterState`s for clusters that joined or left.
        """
        act = self.activation
        if act is None or act.done:
            raise RuntimeError(f"snapshot version {self.version} was already activated")
        act.done = True
        for gone in [name for name in act.states if name not in self.clusters]:
            # In-flight leases hold their ClusterState directly, so dropping it is safe.
            del act.states[gone]
        for name, cluster in self.clusters.items():
            state = cluster.state
            act.states[name] = state
            state.set_drained(act.drained.get(name, ()))  # before the slots: newcomers too
            cluster.activate()  # assign() forgets non-members' marks
            install(state, cluster.config)  # breaker, outlier detection, panic threshold
        return self


def build_snapshot(cfg: Config, states: dict[str, ClusterState] | None = None,
                   version: int = 1,
                   drained: Mapping[str, Iterable[str]] | None = None) -> Snapshot:
    """Build a snapshot off the request path; nothing changes until `activate()`.

    `states` (by cluster name) holds the long-lived `ClusterState`s to reuse; a cluster
    without one gets a new state, which joins `states` at activation. `drained` (cluster ->
    addresses) replaces the drain marks; None keeps the states' own. Marks for addresses
    that are not members are dropped (a backend re-added starts active).
    """
    if states is None:
        states = {}
    clusters: dict[str, Cluster] = {}
    marks: dict[str, frozenset[str]] = {}
    for name, cc in cfg.clusters.items():
        state = states.get(name)
        if state is None:
            state = ClusterState(name)
        addresses = [backend_of(b).address for b in cc.backends]
        wanted = state.drained if drained is None else frozenset(drained.get(name, ()))
        marks[name] = wanted & frozenset(addresses)
        clusters[name] = Cluster(name, cc, state, state.plan(addresses))
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
        drained=MappingProxyType({name: m for name, m in marks.items() if m}),
        activation=Activation(states, marks),
    )


def snapshot_of(cfg: Config, states: dict[str, ClusterState] | None = None,
                version: int = 1,
                drained: Mapping[str, Iterable[str]] | None = None) -> Snapshot:
    """Build and activate at once: a process's first snapshot, tests and benchmarks."""
    return build_snapshot(cfg, states, version, drained).activate()
