"""The controller: the configuration in force, its snapshots, and publishing a new one.

Owns turning a new validated `Config` into a `Snapshot` that reuses the long-lived
`ClusterState`s (so surviving backends keep their slots, in-flight counts and counters),
with the operator's drain marks (a snapshot carries them, so publishing it publishes them,
to every worker too), and handing it to every consumer with one assignment each: the data
plane, the admin API, and under a supervisor the workers' pipes. Must not touch sockets
or the data plane's internals; what a consumer does with a snapshot is its own business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from lbproxy.balance.gate import ClusterState
from lbproxy.control import config
from lbproxy.control.snapshot import Snapshot, build_snapshot

SnapshotSink = Callable[[Snapshot], None]


class Controller:
    """Holds the current config and snapshot; `apply` publishes a new one to every sink."""

    def __init__(self, cfg: config.Config, version: int = 1,
                 drained: Mapping[str, Iterable[str]] | None = None) -> None:
        self.config = cfg
        self.states: dict[str, ClusterState] = {}
        self.snapshot = build_snapshot(cfg, self.states, version, drained).activate()
        self.sinks: list[SnapshotSink] = []

    def apply(self, cfg: config.Config, version: int | None = None,
              drained: Mapping[str, Iterable[str]] | None = None) -> Snapshot:
        """Build a snapshot of `cfg` and publish it; ConfigError if `cfg` needs a restart.

        `drained` (cluster → addresses) replaces the drain marks; None keeps those in force
        (a reload does not undo an operator's drain), minus backends that left.
        """
        errors = config.restart_required(self.config, cfg)
        if errors:
            raise config.ConfigError(errors)
        snap = build_snapshot(cfg, self.states,
                              self.snapshot.version + 1 if version is None else version,
                              drained)
        # Built off the live state; activated and published with no await in between.
        snap.activate()
        self.config, self.snapshot = cfg, snap
        for sink in self.sinks:
            sink(snap)
        return snap
