"""Clusters: the one gate in the request path for admission, selection and accounting.

Owns `ClusterState` (long-lived per cluster name: the native `BackendLoad`, the
address→slot map, per-backend counters and drain marks), `Cluster` (immutable, part of a
`Snapshot`: the backends and their selector), and the `begin()` / `Lease.end()` pair every
request goes through. Breakers, load shedding, retry budgets and outlier ejection plug in
here as `AdmissionPolicy` / `OutcomeObserver` objects held by the `ClusterState`, never in
the data plane. Must not touch HTTP: outcomes arrive already classified.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, final

from lbproxy import selectors
from lbproxy.config import ClusterConfig, backend_of, parse_hostport


class Outcome(IntEnum):
    """How a leased request ended, as the data plane saw it."""

    OK = 0  # a response was relayed (any status below 500)
    HTTP_5XX = 1  # the backend answered 5xx
    CONNECT_FAILED = 2
    RESET = 3  # the backend closed or reset mid-exchange
    TIMEOUT = 4
    CLIENT_ABORT = 5  # the client went away: not the backend's fault


# Outcomes that count against the backend (outlier detection will read these).
BACKEND_FAILURES = frozenset(
    {Outcome.HTTP_5XX, Outcome.CONNECT_FAILED, Outcome.RESET, Outcome.TIMEOUT}
)
# The same set indexed by outcome: a tuple lookup is cheaper per request than hashing.
_IS_FAILURE = tuple(o in BACKEND_FAILURES for o in Outcome)
# A failure that returns fast must not make a backend look fast to peak-EWMA P2C (the
# "black hole" problem: an instantly failing backend attracts all traffic); its latency
# sample is raised to at least this.
FAILURE_PENALTY_NS = 1_000_000_000

# Why a slot is not accepted by selection; any bit set → BackendLoad.set_accept(slot, False).
REFUSE_DRAIN = 1  # an operator drained it (admin PATCH state=drain)
REFUSE_REMOVED = 2  # it left the cluster; the slot waits for its in-flight to finish
# Later: REFUSE_EJECTED (outlier detection), REFUSE_UNHEALTHY (active health checks).


@final
@dataclass(frozen=True, slots=True)
class BackendInfo:
    """One backend as a snapshot sees it (immutable)."""

    address: str
    host: str
    port: int
    weight: int
    zone: str
    slot: int


@final
@dataclass(frozen=True, slots=True)
class Refusal:
    """`begin()` said no: the data plane answers 503 with this code and Retry-After."""

    code: str  # X-Lbproxy-Error, stable
    retry_after: int  # seconds


NO_HEALTHY_BACKEND = Refusal("no_healthy_backend", 1)


class AdmissionPolicy(Protocol):
    """Consulted by `begin()` before selection (load shedding, circuit breaker, ...)."""

    def admit(self, cluster: Cluster, now_ns: int) -> Refusal | None:
        """None to let the request through, or the refusal to answer with."""
        ...


class OutcomeObserver(Protocol):
    """Told by `Lease.end()` how every request ended (outlier ejection, breaker, ...)."""

    def observe(self, backend: BackendInfo, outcome: Outcome, status: int, rtt_ns: int,
                now_ns: int) -> None:
        """Record one finished request; must be cheap and must not raise."""
        ...


@final
class BackendCounters:
    """Per-backend totals since the backend took its slot (read by /stats, later)."""

    __slots__ = ("by_outcome", "failures", "requests", "responses")

    def __init__(self) -> None:
        self.requests = 0
        # responses[c] counts status class c (1 = 1xx ... 5 = 5xx); [0] = no response at all.
        self.responses = [0, 0, 0, 0, 0, 0]
        self.failures = 0
        self.by_outcome = [0] * len(Outcome)


@final
class ClusterState:
    """Long-lived per-cluster state that outlives snapshots: load, slots, counters, drain."""

    def __init__(self, name: str, *, capacity: int = 8, decay_ns: int = 10_000_000_000) -> None:
        self.name = name
        self.load = selectors.BackendLoad(capacity, decay_ns)
        self.slots: dict[str, int] = {}  # address → slot, for every backend in the cluster
        self.addresses: list[str | None] = []  # slot → address (None: free)
        self.counters: list[BackendCounters] = []
        self._refuse: list[int] = []  # slot → REFUSE_* bits
        self._free: list[int] = []  # heap of reusable slots, lowest first
        self._retiring: set[int] = set()  # removed slots still holding in-flight requests
        self._drained: set[str] = set()  # addresses an operator drained; survives re-adding
        # Plug-in points, empty for now; held here (not in Cluster) because they keep state.
        self.admission: tuple[AdmissionPolicy, ...] = ()
        self.observers: tuple[OutcomeObserver, ...] = ()

    def assign(self, addresses: Sequence[str]) -> list[int]:
        """Slots for `addresses` (in order): survivors keep theirs, newcomers reuse freed ones."""
        for slot in [s for s in self._retiring if self.load.inflight(s) == 0]:
            # Reused only once its last lease has ended, so no finish() lands on a stranger.
            self._retiring.discard(slot)
            self.addresses[slot] = None
            heapq.heappush(self._free, slot)
        wanted = set(addresses)
        for address in [a for a in self.slots if a not in wanted]:
            slot = self.slots.pop(address)
            self._set_bits(slot, REFUSE_REMOVED, True)
            if self.load.inflight(slot) == 0:
                self.addresses[slot] = None
                heapq.heappush(self._free, slot)
            else:
                self._retiring.add(slot)
        out = []
        for address in addresses:
            known = self.slots.get(address)
            out.append(self._take_slot(address) if known is None else known)
        return out

    def _take_slot(self, address: str) -> int:
        if self._free:
            slot = heapq.heappop(self._free)
        else:
            slot = len(self.addresses)
            self.addresses.append(None)
            self.counters.append(BackendCounters())
            self._refuse.append(0)
            if slot >= self.load.capacity:
                self.load.ensure_capacity(max(slot + 1, 2 * self.load.capacity))
        self.load.reset(slot)
        self.addresses[slot] = address
        self.counters[slot] = BackendCounters()
        self._refuse[slot] = REFUSE_DRAIN if address in self._drained else 0
        self.load.set_accept(slot, self._refuse[slot] == 0)
        self.slots[address] = slot
        return slot

    def _set_bits(self, slot: int, bits: int, on: bool) -> None:
        self._refuse[slot] = (self._refuse[slot] | bits) if on else (self._refuse[slot] & ~bits)
        self.load.set_accept(slot, self._refuse[slot] == 0)

    def set_drain(self, address: str, drain: bool) -> None:
        """Drain (or re-activate) a backend: a drained one is never picked for new requests."""
        if drain:
            self._drained.add(address)
        else:
            self._drained.discard(address)
        slot = self.slots.get(address)
        if slot is not None:
            self._set_bits(slot, REFUSE_DRAIN, drain)

    def state_of(self, address: str) -> str:
        """``"drain"`` or ``"active"`` (the admin API's `state`)."""
        return "drain" if address in self._drained else "active"

    def inflight(self, address: str) -> int:
        """Requests in flight to `address` in this process (0 when it is not a member)."""
        slot = self.slots.get(address)
        return 0 if slot is None else self.load.inflight(slot)


@final
class Lease:
    """One admitted request on one backend; `end()` it exactly once."""

    __slots__ = ("_counters", "_state", "backend", "slot", "started_ns")

    def __init__(self, state: ClusterState, backend: BackendInfo, started_ns: int) -> None:
        self._state: ClusterState | None = state
        self._counters = state.counters[backend.slot]
        self.backend = backend
        self.slot = backend.slot
        self.started_ns = started_ns

    def end(self, outcome: Outcome, now_ns: int, status: int = 0) -> None:
        """Return the backend: in-flight -= 1, latency sample, counters, observers."""
        state = self._state
        if state is None:
            raise RuntimeError("Lease.end() called twice")
        self._state = None
        rtt = now_ns - self.started_ns
        if _IS_FAILURE[outcome]:
            self._counters.failures += 1
            if rtt < FAILURE_PENALTY_NS:
                rtt = FAILURE_PENALTY_NS
        state.load.finish(self.slot, rtt, now_ns)
        c = self._counters
        c.by_outcome[outcome] += 1
        c.responses[status // 100 if 100 <= status < 600 else 0] += 1
        for observer in state.observers:
            observer.observe(self.backend, outcome, status, rtt, now_ns)


def _build_selector(cfg: ClusterConfig, slots: list[int], addresses: list[str],
                    weights: list[int], load: selectors.BackendLoad) -> object:
    if cfg.policy == "maglev":
        maglev = selectors.MaglevSelector(slots, addresses, weights, load, cfg.table_size)
        if cfg.balance_factor > 0:
            return selectors.BoundedLoadSelector(maglev, load, cfg.balance_factor)
        return maglev
    if cfg.policy == "p2c":
        return selectors.P2CSelector(slots, addresses, weights, load, cfg.seed)
    if cfg.policy == "round_robin":
        return selectors.RoundRobinSelector(slots, addresses, weights, load)
    raise ValueError(f"unknown policy {cfg.policy!r}")


@final
class Cluster:
    """An immutable cluster in a snapshot: its backends, selector and long-lived state."""

    __slots__ = ("_by_slot", "_pick", "_pick_with_now", "backends", "config",
                 "name", "policy", "selector", "state")

    def __init__(self, name: str, cfg: ClusterConfig, state: ClusterState) -> None:
        self.name = name
        self.config = cfg
        self.policy = cfg.policy
        self.state = state
        entries = [backend_of(b) for b in cfg.backends]
        addresses = [b.address for b in entries]
        slots = state.assign(addresses)
        backends = []
        for b, slot in zip(entries, slots, strict=True):
            host, port = parse_hostport(b.address)
            backends.append(BackendInfo(b.address, host, port, b.weight, b.zone, slot))
        self.backends = tuple(backends)
        by_slot: list[BackendInfo | None] = [None] * (max(slots) + 1 if slots else 0)
        for info in self.backends:
            by_slot[info.slot] = info
        self._by_slot = by_slot
        self.selector = _build_selector(cfg, slots, addresses, [b.weight for b in entries],
                                        state.load)
        # P2C needs the clock (peak-EWMA decays with time); the others pick by key alone.
        self._pick_with_now = cfg.policy == "p2c"
        self._pick = self.selector.pick  # type: ignore[attr-defined]

    def begin(self, key: bytes, now_ns: int) -> Lease | Refusal:
        """Admit, select and account one request: a `Lease` to end later, or a `Refusal`."""
        state = self.state
        for policy in state.admission:
            refusal = policy.admit(self, now_ns)
            if refusal is not None:
                return refusal
        slot = self._pick(key, now_ns) if self._pick_with_now else self._pick(key)
        if slot < 0:
            return NO_HEALTHY_BACKEND
        state.load.start(slot)
        info = self._by_slot[slot]
        assert info is not None  # selectors only return slots they were built with
        state.counters[slot].requests += 1
        return Lease(state, info, now_ns)

    def backend(self, address: str) -> BackendInfo | None:
        """The member with this address, if any."""
        slot = self.state.slots.get(address)
        if slot is None or slot >= len(self._by_slot):
            return None
        return self._by_slot[slot]
