"""Pool changes as operators see them: the diff of two backend sets, and their history.

Owns `pool_diff` (added, removed, weight, zone and drain-state changes between two
snapshots of one cluster), `snapshot_diffs` (every cluster's, for a reload), `moved_keys`
(the dry run's share of hash keys that change backend, lbproxy/balance/moved.py) and
`ChangeHistory`, the bounded record of applied changes behind `GET /changes` (who, when,
which versions, what). Must not apply anything or touch the data plane.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from lbproxy.balance import moved
from lbproxy.control import config
from lbproxy.control.snapshot import Snapshot

HISTORY_LENGTH = 256  # changes kept; the oldest goes first (Envoy's admin keeps none)

Members = dict[str, config.Backend]


def members(cc: config.ClusterConfig | None) -> Members:
    """A cluster's backends by address, in config order (empty for no cluster)."""
    if cc is None:
        return {}
    return {b.address: b for b in map(config.backend_of, cc.backends)}


def _entry(b: config.Backend) -> dict[str, Any]:
    return {"address": b.address, "weight": b.weight, "zone": b.zone}


def pool_diff(old: Members, old_drained: frozenset[str],
              new: Members, new_drained: frozenset[str]) -> dict[str, Any]:
    """What changes from (old set, old drain marks) to (new set, new marks), by address."""
    kept = [a for a in new if a in old]

    def changes(before: Any, after: Any) -> list[dict[str, Any]]:
        return [{"address": a, "from": before(a), "to": after(a)}
                for a in kept if before(a) != after(a)]

    def state(drained: frozenset[str]) -> Any:
        return lambda a: "drain" if a in drained else "active"

    return {
        "added": [_entry(b) for a, b in new.items() if a not in old],
        "removed": [_entry(b) for a, b in old.items() if a not in new],
        "weights": changes(lambda a: old[a].weight, lambda a: new[a].weight),
        "zones": changes(lambda a: old[a].zone, lambda a: new[a].zone),
        "states": changes(state(old_drained), state(new_drained)),
    }


def is_empty(diff: Mapping[str, list[Any]]) -> bool:
    """Whether a `pool_diff` changes nothing."""
    return not any(diff.values())


def snapshot_diffs(old: Snapshot, new: Snapshot) -> dict[str, dict[str, Any]]:
    """Every cluster whose pool differs between two snapshots, with its `pool_diff`."""
    out = {}
    for name in [*old.config.clusters, *(n for n in new.config.clusters
                                         if n not in old.config.clusters)]:
        diff = pool_diff(members(old.config.clusters.get(name)),
                         old.drained.get(name, frozenset()),
                         members(new.config.clusters.get(name)),
                         new.drained.get(name, frozenset()))
        if not is_empty(diff):
            out[name] = diff
    return out


def moved_keys(old: config.ClusterConfig, old_drained: Collection[str],
               new: config.ClusterConfig, new_drained: Collection[str],
               unusable: Collection[str], panic_threshold: float) -> float:
    """The share of hash keys a Maglev cluster's change from `old` to `new` (same table
    size) sends to another backend; `unusable`: members ejected or failing health checks
    now. CPU-bound (two table builds): run it off the event loop."""

    def owners(cc: config.ClusterConfig, drained: Collection[str]) -> list[str | None]:
        backends = [config.backend_of(b) for b in cc.backends]
        addresses = [b.address for b in backends]
        return moved.key_owners(addresses, [b.weight for b in backends], cc.table_size,
                                moved.accepted(addresses, drained, unusable,
                                               panic_threshold))

    return moved.moved_fraction(owners(old, old_drained), owners(new, new_drained))


@dataclass(frozen=True, slots=True)
class Origin:
    """Who is applying a change: kind (put, patch, reload), cluster, token name, client."""

    kind: str
    cluster: str | None
    token: str | None  # the named token the call used (admin.tokens); None: unnamed or none
    client: str  # the peer's address, or what started a reload ("SIGHUP")


class ChangeHistory:
    """The last `HISTORY_LENGTH` applied changes, oldest first, each with a sequence id."""

    def __init__(self, length: int = HISTORY_LENGTH) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=length)
        self._next_id = 1

    def record(self, origin: Origin, old: Snapshot, new: Snapshot) -> None:
        """Record the change from `old` to `new`: one entry per cluster whose pool changed,
        or one for `origin.cluster` (None for a reload) when no pool did."""
        diffs: dict[str | None, dict[str, Any]] = dict(snapshot_diffs(old, new).items())
        if not diffs:
            diffs[origin.cluster] = pool_diff({}, frozenset(), {}, frozenset())
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + (
            f".{int(now * 1000) % 1000:03d}Z")  # as the log lines (lbproxy/process/logs.py)
        for cluster, diff in diffs.items():
            self._entries.append({
                "id": self._next_id,
                "time": stamp,
                "cluster": cluster,
                "version_before": old.version,
                "version_after": new.version,
                "kind": origin.kind,
                # The token's name when the caller used a named one, else where it came from.
                "who": origin.token if origin.token is not None else origin.client,
                "client": origin.client,
                "diff": diff,
            })
            self._next_id += 1

    def entries(self) -> list[dict[str, Any]]:
        """The entries kept, oldest first."""
        return list(self._entries)
