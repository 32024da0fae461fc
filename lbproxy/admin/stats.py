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
from typing import Any, Protocol

from lbproxy.balance import latency
from lbproxy.balance.gate import BACKEND_FAILURES, BackendCounters, ClusterState, Outcome
from lbproxy.control.config import PRIORITIES
from lbproxy.control.snapshot import Snapshot
from lbproxy.policies.admission_level import POSITIONS
from lbproxy.policies.overload import QUEUE_TIMEOUT, REASONS, OverloadControl

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999))
# BackendCounters.responses index → key; [0] counts requests that got no response at all.
RESPONSE_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
OUTCOME_NAMES = tuple(o.name.lower() for o in Outcome)
FAILURE_NAMES = tuple(o.name.lower() for o in Outcome if o in BACKEND_FAILURES)

# (cluster name, backend address) → requests in flight to it.
InflightSource = Callable[[str, str], int]


class OverloadGauges(Protocol):
    """Overload gauges gathered from elsewhere (the supervisor sums its workers')."""

    def limits(self, cluster: str) -> dict[str, int]:
        """Backend address -> adaptive limit, summed over the workers."""
        ...

    def queue(self, cluster: str) -> tuple[int, float, float]:
        """(waiting, oldest wait in ms, admission level 0-1) over the workers."""
        ...


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


def stats_view(snapshot: Snapshot, inflight: InflightSource,
               gauges: OverloadGauges | None = None) -> dict[str, Any]:
    """The /stats document: per cluster and per backend, since each backend took its slot."""
    clusters: dict[str, Any] = {}
    for name, cluster in snapshot.clusters.items():
        counters = cluster.state.counters
        limits = None if gauges is None else gauges.limits(name)
        backends = []
        for b in cluster.backends:
            c = counters[b.slot]
            entry = {"address": b.address,
                     **_summary(c.requests, c.responses, c.by_outcome, c.latency,
                                inflight(name, b.address), c.retries),
                     "limit": backend_limit(cluster.state, b.slot, limits, b.address)}
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
            "overload": overload_view(cluster.state.overload,
                                      None if gauges is None else gauges.queue(name)),
            "backends": backends,
        }
    return {"version": snapshot.version, "clusters": clusters}


def backend_limit(state: ClusterState, slot: int, limits: dict[str, int] | None = None,
                  address: str = "") -> int | None:
    """A backend's adaptive concurrency limit now (None: overload control is off); from
    `limits` (the workers' sum) when given."""
    overload = state.overload
    if overload is None:
        return None
    if limits is not None:
        return limits.get(address)
    return int(overload.limit(slot).limit)


def queue_gauges(overload: OverloadControl) -> tuple[int, float, float]:
    """(waiting, oldest wait in ms, admission level 0-1) of one process."""
    queue = overload.queue
    waiting = sum(1 for lane in queue.lanes for w in lane if not w.done)
    oldest_ms = round(queue.oldest_wait_ns(time.monotonic_ns()) / 1e6, 3)
    return waiting, oldest_ms, round(overload.level.level / POSITIONS, 4)


def overload_view(overload: OverloadControl | None,
                  gauges: tuple[int, float, float] | None = None) -> dict[str, Any] | None:
    """A cluster's overload control: queue, admission level and shed requests."""
    if overload is None:
        return None
    queue = overload.queue
    waiting, oldest_ms, level = queue_gauges(overload) if gauges is None else gauges
    return {
        "algorithm": overload.config.algorithm,
        # DAGOR's admission level: the share of (class, cohort) positions admitted.
        "admission_level": level,
        "queue": {
            "length": waiting,
            "oldest_wait_ms": oldest_ms,
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


def overload_counters(state: ClusterState) -> dict[str, int]:
    """A cluster's overload and refusal counters, flat, for worker -> supervisor deltas."""
    out = {f"refused:{code}": n for code, n in state.refusals.items()}
    overload = state.overload
    if overload is not None:
        for i, p in enumerate(PRIORITIES):
            for j, r in enumerate(REASONS):
                out[f"shed:{p}:{r}"] = overload.shed_count(i, j)
        out["served"] = overload.queue.served
        out["wait_ns"] = overload.queue.wait_ns_total
    return out


class OverloadReporter:
    """In a worker: what each cluster's overload counters gained since the last report."""

    def __init__(self) -> None:
        self._sent: dict[str, tuple[ClusterState, dict[str, int]]] = {}

    def collect(self, snapshot: Snapshot) -> dict[str, dict[str, int]]:
        """{cluster: {counter: delta}} for the counters that moved; {} when idle."""
        out: dict[str, dict[str, int]] = {}
        for name, cluster in snapshot.clusters.items():
            now = overload_counters(cluster.state)
            prev = self._sent.get(name)
            before = prev[1] if prev is not None and prev[0] is cluster.state else {}
            moved = {k: n - before.get(k, 0) for k, n in now.items() if n != before.get(k, 0)}
            self._sent[name] = (cluster.state, now)
            if moved:
                out[name] = moved
        for name in [n for n in self._sent if n not in snapshot.clusters]:
            del self._sent[name]
        return out


def add_overload_deltas(states: Mapping[str, ClusterState],
                        report: Mapping[str, Mapping[str, int]]) -> None:
    """In the supervisor: add one worker's overload deltas to the matching clusters."""
    for name, counters in report.items():
        state = states.get(name)
        if state is None:
            continue
        overload = state.overload
        for key, n in counters.items():
            kind, _, rest = key.partition(":")
            if kind == "refused":
                state.refusals[rest] = state.refusals.get(rest, 0) + n
            elif overload is None:
                continue  # overload control was turned off since the worker counted
            elif kind == "shed":
                priority, _, reason = rest.partition(":")
                if priority in PRIORITIES and reason in REASONS:
                    i, j = PRIORITIES.index(priority), REASONS.index(reason)
                    if j == QUEUE_TIMEOUT:
                        overload.queue.refused_by[i] += n
                    else:
                        overload.shed[i * len(REASONS) + j] += n
            elif kind == "served":
                overload.queue.served += n
            elif kind == "wait_ns":
                overload.queue.wait_ns_total += n


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
