"""Request statistics: the /stats document, and moving counters from workers to the supervisor.

Owns reading the per-backend `BackendCounters` of a snapshot's `ClusterState`s into plain
data (counts, outcomes, latency percentiles), and the delta reports a worker sends its
supervisor so the supervisor's own counters hold the sum over all workers. Must not touch
HTTP (the admin API serves what this returns) or the request path (it reads counters from a
timer or a request to the admin API, never per proxied request).

Why deltas, not running totals: the supervisor adds each report to its own counters, so
totals survive a worker restart (a restarted worker starts from zero) and a lost or
duplicated report cannot be confused with a reset.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lbproxy.balance import latency
from lbproxy.balance.gate import BACKEND_FAILURES, BackendCounters, ClusterState, Outcome
from lbproxy.control.config import PRIORITIES
from lbproxy.control.snapshot import Snapshot
from lbproxy.policies.admission_level import POSITIONS
from lbproxy.policies.overload import REASONS, OverloadControl

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999))
# BackendCounters.responses index → key; [0] counts requests that got no response at all.
RESPONSE_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
OUTCOME_NAMES = tuple(o.name.lower() for o in Outcome)
FAILURE_NAMES = tuple(o.name.lower() for o in Outcome if o in BACKEND_FAILURES)

# (cluster name, backend address) → requests in flight to it.
InflightSource = Callable[[str, str], int]


def _summary(requests: int, responses: Sequence[int], by_outcome: Sequence[int],
             histogram: Sequence[int], inflight: int, retries: int) -> dict[str, Any]:
    return {
        "requests": requests,
        "retries": retries,  # of those requests, retries of an attempt failed elsewhere
        "inflight": inflight,
        "responses": dict(zip(RESPONSE_CLASSES, responses, strict=True)),
        "failures": {name: by_outcome[Outcome[name.upper()]] for name in FAILURE_NAMES},
        "client_aborts": by_outcome[Outcome.CLIENT_ABORT],
        "latency_ms": {key: latency.percentile_ms(histogram, q) for key, q in PERCENTILES},
    }


def stats_view(snapshot: Snapshot, inflight: InflightSource) -> dict[str, Any]:
    """The /stats document: per cluster and per backend, since each backend took its slot."""
    clusters: dict[str, Any] = {}
    for name, cluster in snapshot.clusters.items():
        counters = cluster.state.counters
        backends = []
        for b in cluster.backends:
            c = counters[b.slot]
            entry = {"address": b.address,
                     **_summary(c.requests, c.responses, c.by_outcome, c.latency,
                                inflight(name, b.address), c.retries),
                     "limit": backend_limit(cluster.state, b.slot)}
            backends.append(entry)
        members = [counters[b.slot] for b in cluster.backends]
        clusters[name] = {
            **_summary(
                sum(c.requests for c in members),
                [sum(c.responses[i] for c in members) for i in range(len(RESPONSE_CLASSES))],
                [sum(c.by_outcome[i] for c in members) for i in range(len(Outcome))],
                latency.merged(c.latency for c in members),
                sum(e["inflight"] for e in backends),
                sum(c.retries for c in members),
            ),
            "refusals": dict(sorted(cluster.state.refusals.items())),
            "overload": overload_view(cluster.state.overload),
            "backends": backends,
        }
    return {"version": snapshot.version, "clusters": clusters}


def backend_limit(state: ClusterState, slot: int) -> int | None:
    """A backend's adaptive concurrency limit now (None: overload control is off)."""
    overload = state.overload
    return None if overload is None else overload.limit(slot).limit


def overload_view(overload: OverloadControl | None) -> dict[str, Any] | None:
    """A cluster's overload control: queue, admission level and shed requests."""
    if overload is None:
        return None
    now = time.monotonic_ns()
    queue = overload.queue
    return {
        "algorithm": overload.config.algorithm,
        # DAGOR's admission level: the share of (class, cohort) positions admitted.
        "admission_level": round(overload.level.level / POSITIONS, 4),
        "queue": {
            "length": sum(1 for lane in queue.lanes for w in lane if not w.done),
            "oldest_wait_ms": round(queue.oldest_wait_ns(now) / 1e6, 3),
            "admitted_after_wait": queue.served,
            "wait_ms_total": round(queue.wait_ns_total / 1e6, 3),
            "standing": [p for p, c in zip(PRIORITIES, queue.codels, strict=True)
                         if c.overloaded],
        },
        "shed": {p: {r: overload.shed_count(i, j) for j, r in enumerate(REASONS)}
                 for i, p in enumerate(PRIORITIES)},
    }


# ---- worker → supervisor -------------------------------------------------------------


def _flat(c: BackendCounters) -> list[int]:
    return [c.requests, c.failures, c.latency_ns, *c.responses, *c.by_outcome, c.retries]


# How many counters one backend's "c" deltas carry (the pipe protocol checks it).
FLAT_LENGTH = len(_flat(BackendCounters()))


class DeltaReporter:
    """In a worker: what each backend's counters gained since the last report."""

    def __init__(self) -> None:
        # (cluster, address) → (the counters object, its flat totals and histogram as sent)
        self._sent: dict[tuple[str, str], tuple[BackendCounters, list[int], list[int]]] = {}

    def collect(self, snapshot: Snapshot) -> dict[str, dict[str, Any]]:
        """{cluster: {address: {"c": flat deltas, "h": [[bucket, n], ...]}}}; {} when idle."""
        out: dict[str, dict[str, Any]] = {}
        seen = set()
        for name, cluster in snapshot.clusters.items():
            for b in cluster.backends:
                key = (name, b.address)
                seen.add(key)
                c = cluster.state.counters[b.slot]
                flat, hist = _flat(c), list(c.latency)
                prev = self._sent.get(key)
                if prev is not None and prev[0] is c:
                    d_flat = [x - y for x, y in zip(flat, prev[1], strict=True)]
                    d_hist = [[i, x - y] for i, (x, y) in enumerate(zip(hist, prev[2],
                                                                       strict=True)) if x != y]
                else:  # a new member, or the address took a fresh slot: all of it is new
                    d_flat = flat
                    d_hist = [[i, x] for i, x in enumerate(hist) if x]
                self._sent[key] = (c, flat, hist)
                if any(d_flat) or d_hist:
                    out.setdefault(name, {})[b.address] = {"c": d_flat, "h": d_hist}
        for key in [k for k in self._sent if k not in seen]:
            del self._sent[key]
        return out


def add_deltas(states: Mapping[str, ClusterState], report: Mapping[str, Any]) -> None:
    """In the supervisor: add one worker's deltas to the matching backends' counters."""
    for name, backends in report.items():
        state = states.get(name)
        if state is None:
            continue  # the cluster left the config since the worker counted
        for address, delta in backends.items():
            slot = state.slots.get(address)
            if slot is None:
                continue  # likewise for a backend
            c = state.counters[slot]
            flat = delta["c"]
            c.requests += flat[0]
            c.failures += flat[1]
            c.latency_ns += flat[2]
            n_resp = len(c.responses)
            for i in range(n_resp):
                c.responses[i] += flat[3 + i]
            n_out = len(c.by_outcome)
            for i in range(n_out):
                c.by_outcome[i] += flat[3 + n_resp + i]
            c.retries += flat[3 + n_resp + n_out]
            for i, n in delta["h"]:
                c.latency[i] += n
