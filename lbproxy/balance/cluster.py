# cython: cdivision=False, annotation_typing=False
"""Clusters: the one gate in the request path for admission, selection and accounting.

Owns `ClusterState` (long-lived per cluster name: the native `BackendLoad`, the
address->slot map, per-backend counters and drain, ejection and health marks), `Cluster`
(immutable, part of a `Snapshot`: the backends and their selector), and the `begin()` /
`Lease.end()` pair every request goes through. Breakers, load shedding, retry budgets and
outlier ejection plug in here as `AdmissionPolicy` / `OutcomeObserver` objects held by the
`ClusterState`, never in the data plane. Must not touch HTTP: outcomes arrive classified.

How a policy's per-request work stays cheap, declared by the policy, not known to the gate:

- an admission policy with a ``wake(now_ns)`` method does timed work only (the outlier
  detector returning expired ejections): it asks for a wake-up with
  `ClusterState.wake_at`, and `begin()` calls ``wake`` on the first request at or after
  that time instead of calling ``admit`` on every request;
- an observer with ``successes_from_counters = True`` reads successes from
  ``BackendCounters.by_outcome`` when it next sees a failure, so `Lease.end()` tells it
  about failures only (the common, successful request calls no observer at all);
- every other policy is called as the protocols below say.

One source, two builds: this module runs as plain Python (``LBPROXY_NO_EXTENSIONS=1``) and
is what Cython compiles into ``lbproxy.balance._cluster_c``, with ``_cluster_c.pxd``
beside it declaring the C types. Import it through lbproxy/balance/gate.py, which picks
the build; nothing here may depend on which one runs.
"""

from __future__ import annotations

try:
    import cython
except ImportError:  # pragma: no cover - Python without Cython installed
    from lbproxy.native import pure_mode as cython

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, final

from lbproxy.balance import latency, selectors
from lbproxy.codes import Outcome
from lbproxy.control.config import ClusterConfig, backend_of, parse_hostport
from lbproxy.policies.admission_level import COHORTS
from lbproxy.policies.overload import REASONS

if not cython.compiled:  # compiled, _cluster_c.pxd cimports these as C declarations
    from lbproxy.balance.latency import bucket_index
    from lbproxy.codes import (
        N_OUTCOMES,
        OUTCOME_CLIENT_ABORT,
        OUTCOME_HTTP_5XX,
        OUTCOME_OK,
        OUTCOME_TIMEOUT,
    )

if TYPE_CHECKING:
    from lbproxy.balance.selectors import BackendLoad

# The names other modules use are listed once, in lbproxy/balance/gate.py's __all__.

# Outcomes that count against the backend (outlier detection reads these).
BACKEND_FAILURES = frozenset(
    {Outcome.HTTP_5XX, Outcome.CONNECT_FAILED, Outcome.RESET, Outcome.TIMEOUT}
)
# A failure that returns fast must not make a backend look fast to peak-EWMA P2C (the
# "black hole" problem: an instantly failing backend attracts all traffic); its latency
# sample is raised to at least this.
FAILURE_PENALTY_NS = 1_000_000_000
NEVER_NS = (1 << 63) - 1  # a wake-up time that never comes
_PENALTY_NS = FAILURE_PENALTY_NS  # the same values as C constants in the compiled build
_NEVER_NS = NEVER_NS
N_REASONS = len(REASONS)  # overload.shed is indexed priority * N_REASONS + reason
_COHORTS = COHORTS
_SHEDDABLE = 2  # the last priority class (lbproxy.control.config.PRIORITIES)

# Why a slot is not accepted by selection; any bit set -> BackendLoad.set_accept(slot, False).
REFUSE_DRAIN = 1  # an operator drained it (admin PATCH state=drain)
REFUSE_REMOVED = 2  # it left the cluster; the slot waits for its in-flight to finish
REFUSE_EJECTED = 4  # outlier detection ejected it (lbproxy/policies/outlier.py)
REFUSE_UNHEALTHY = 8  # its active health check fails (lbproxy/policies/health.py)
# Marks that panic routing may ignore; an operator's drain and removal are never ignored.
HEALTH_BITS = REFUSE_EJECTED | REFUSE_UNHEALTHY


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
# Overload control (lbproxy/policies/overload.py): the 503 a shed request gets, and the
# answer that tells the data plane to park the request in the cluster's queue instead.
OVERLOADED = Refusal("overloaded", 1)
WAIT = Refusal("wait", 0)


class AdmissionPolicy(Protocol):
    """Consulted by `begin()` before selection (load shedding, circuit breaker, ...).

    A policy that also has ``wake(now_ns)`` is timed instead: see the module docstring.
    """

    def admit(self, cluster: Cluster, now_ns: int, attempt: int) -> Refusal | None:
        """None to let the request through, or the refusal to answer with."""
        ...


class OutcomeObserver(Protocol):
    """Told by `Lease.end()` how every request ended (outlier ejection, breaker, ...)."""

    def observe(self, backend: BackendInfo, outcome: int, status: int, rtt_ns: int,
                now_ns: int) -> None:
        """Record one finished request; must be cheap and must not raise."""
        ...


class BackendCounters:  # final: _cluster_c.pxd declares it @cython.final
    """Per-backend totals since the backend took its slot (read by /stats and /metrics)."""

    __slots__ = ("by_outcome", "failures", "latency", "latency_ns", "requests", "responses",
                 "retries")

    def __init__(self) -> None:
        self.requests = 0
        self.retries = 0  # of those requests, retries of an attempt that failed elsewhere
        # responses[c] counts status class c (1 = 1xx ... 5 = 5xx); [0] = no response at all.
        self.responses = [0, 0, 0, 0, 0, 0]
        self.failures = 0
        self.by_outcome = [0] * N_OUTCOMES
        self.latency = [0] * latency.N_BUCKETS  # lbproxy/balance/latency.py's buckets
        self.latency_ns = 0  # sum of the samples (Prometheus histograms carry it)


@final
class SlotPlan:
    """Where a member list will sit in a `ClusterState`, worked out without changing it."""

    __slots__ = ("addresses", "generation", "slots")

    def __init__(self, addresses: tuple[str, ...], slots: tuple[int, ...],
                 generation: int) -> None:
        self.addresses = addresses
        self.slots = slots
        self.generation = generation  # the state's generation the plan was made against


class ClusterState:  # final: _cluster_c.pxd declares it @cython.final
    """Long-lived per-cluster state that outlives snapshots: load, slots, counters, marks."""

    __slots__ = ("_admission", "_drained", "_ejected", "_free", "_observers", "_per_request",
                 "_refuse", "_retiring", "_success_observers", "_timed", "_unhealthy",
                 "active", "addresses", "counters", "generation", "load", "name",
                 "overload", "panic_threshold", "panicking", "refusals", "requests",
                 "retries", "retry_admission", "slots", "wake_ns")

    def __init__(self, name: str, *, capacity: int = 8, decay_ns: int = 10_000_000_000) -> None:
        self.name = name
        self.load: BackendLoad = selectors.BackendLoad(capacity, decay_ns)
        self.slots: dict[str, int] = {}  # address -> slot, for every backend in the cluster
        self.addresses: list[str | None] = []  # slot -> address (None: free)
        self.counters: list[BackendCounters] = []
        self._refuse: list[int] = []  # slot -> REFUSE_* bits
        self._free: list[int] = []  # heap of reusable slots, lowest first
        self._retiring: set[int] = set()  # removed slots still holding in-flight requests
        self._drained: set[str] = set()  # members an operator drained
        # Ejection and health marks by address, kept like drain marks (while a member).
        self._ejected: set[str] = set()
        self._unhealthy: set[str] = set()
        self.generation = 0  # bumped by every change of membership (plans check it)
        # Envoy's healthy_panic_threshold (percent): below it, HEALTH_BITS are ignored.
        self.panic_threshold = 50.0
        self.panicking = False
        self.active = 0  # leases not yet ended, all backends (the circuit breaker reads it)
        self.requests = 0  # leases begun, retries included (the retry budget reads both)
        self.retries = 0
        self.wake_ns = _NEVER_NS  # begin() wakes the timed policies at or after this time
        self._admission: tuple[Any, ...] = ()
        self._per_request: tuple[Any, ...] = ()  # the admission policies begin() calls
        self._timed: tuple[Any, ...] = ()  # the admission policies woken by time instead
        self._observers: tuple[Any, ...] = ()
        self._success_observers: tuple[Any, ...] = ()  # the observers told of successes
        # Consulted after `admission` for retries only (attempt > 0): the retry budget.
        self.retry_admission: tuple[Any, ...] = ()
        # Adaptive limits, admission level and queue (lbproxy/policies/overload.py), or
        # None when the cluster's adaptive_concurrency is disabled.
        self.overload: Any = None
        # Refusals the gate answered, by code (overload's own are counted by the policy).
        self.refusals: dict[str, int] = {}

    # -- plug-in points ---------------------------------------------------------------

    @property
    def admission(self) -> tuple[AdmissionPolicy, ...]:
        """The admission policies, in order; assigning them sorts timed from per-request."""
        return self._admission

    @admission.setter
    def admission(self, policies: tuple[AdmissionPolicy, ...]) -> None:
        self._admission = tuple(policies)
        self._timed = tuple(p for p in self._admission if hasattr(p, "wake"))
        self._per_request = tuple(p for p in self._admission if not hasattr(p, "wake"))
        self.wake_ns = 0  # newly installed timed policies get one wake-up to schedule theirs

    @property
    def observers(self) -> tuple[OutcomeObserver, ...]:
        """The outcome observers, in order; assigning them sorts out who needs successes."""
        return self._observers

    @observers.setter
    def observers(self, observers: tuple[OutcomeObserver, ...]) -> None:
        self._observers = tuple(observers)
        self._success_observers = tuple(
            o for o in self._observers if not getattr(o, "successes_from_counters", False))

    def refused(self, refusal: Refusal) -> None:
        """Count a refusal by its code (/stats and lbproxy_refusals_total read these)."""
        refusals = self.refusals
        refusals[refusal.code] = refusals.get(refusal.code, 0) + 1

    def wake_at(self, when_ns: int) -> None:
        """Ask `begin()` to wake the timed admission policies at `when_ns` (or earlier)."""
        if when_ns < self.wake_ns:
            self.wake_ns = when_ns

    def wake(self, now_ns: int) -> None:
        """Run every timed admission policy's due work; each re-registers its next time."""
        self.wake_ns = _NEVER_NS
        for policy in self._timed:
            policy.wake(now_ns)

    # -- membership -------------------------------------------------------------------

    def plan(self, addresses: Sequence[str]) -> SlotPlan:
        """Slots `addresses` would take, in order, without changing any member's state.

        Survivors keep theirs; newcomers take the lowest free slots, which include slots
        whose last lease has ended since their backend left and those of members leaving
        now with nothing in flight. Only the C arrays' capacity may grow here, which
        changes no slot's load (the snapshot's selectors must be able to index them).
        """
        free = list(self._free)
        for slot in self._retiring:
            if self.load.inflight(slot) == 0:
                heapq.heappush(free, slot)
        wanted = set(addresses)
        for address, slot in self.slots.items():
            if address not in wanted and self.load.inflight(slot) == 0:
                heapq.heappush(free, slot)
        fresh = len(self.addresses)
        slots = []
        for address in addresses:
            known = self.slots.get(address)
            if known is not None:
                slots.append(known)
            elif free:
                slots.append(heapq.heappop(free))
            else:
                slots.append(fresh)
                fresh += 1
        if fresh > self.load.capacity:
            self.load.ensure_capacity(max(fresh, 2 * self.load.capacity))
        return SlotPlan(tuple(addresses), tuple(slots), self.generation)

    def commit(self, plan: SlotPlan) -> None:
        """Make `plan`'s membership live (at a snapshot's activation, right before its swap)."""
        if plan.generation != self.generation:
            raise RuntimeError(f"cluster {self.name}: slot plan is stale (membership changed "
                               "since it was made)")
        slots = self.assign(plan.addresses)
        if tuple(slots) != plan.slots:  # pragma: no cover - plan() and assign() disagree
            raise RuntimeError(f"cluster {self.name}: slots {slots} differ from the plan "
                               f"{list(plan.slots)}")

    def assign(self, addresses: Sequence[str]) -> list[int]:
        """Slots for `addresses` (in order): survivors keep theirs, newcomers reuse freed ones."""
        self.generation += 1
        for slot in [s for s in self._retiring if self.load.inflight(s) == 0]:
            # Reused only once its last lease has ended, so no finish() lands on a stranger.
            self._retiring.discard(slot)
            self.addresses[slot] = None
            heapq.heappush(self._free, slot)
        wanted = set(addresses)
        self._drained &= wanted  # marks are kept for members only (and those joining now)
        for address in [a for a in self.slots if a not in wanted]:
            slot = self.slots.pop(address)  # its drain mark went above: re-added, it is active
            self._ejected.discard(address)  # ... and healthy
            self._unhealthy.discard(address)
            self._refuse[slot] |= REFUSE_REMOVED
            if self.load.inflight(slot) == 0:
                self.addresses[slot] = None
                heapq.heappush(self._free, slot)
            else:
                self._retiring.add(slot)
        out = []
        for address in addresses:
            known = self.slots.get(address)
            out.append(self._take_slot(address) if known is None else known)
        self._refresh_accept()
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
        if self.overload is not None:
            self.overload.reset_slot(slot)  # a newcomer starts from the initial limit
        self.addresses[slot] = address
        self.counters[slot] = BackendCounters()
        self._refuse[slot] = REFUSE_DRAIN if address in self._drained else 0
        self.slots[address] = slot
        return slot

    def _set_bits(self, slot: int, bits: int, on: bool) -> None:
        self._refuse[slot] = (self._refuse[slot] | bits) if on else (self._refuse[slot] & ~bits)
        self._refresh_accept()

    def _refresh_accept(self) -> None:
        # Envoy's panic threshold (arch_overview/upstream/load_balancing/panic_threshold):
        # when too few members are usable, health marks are disregarded so the failure of a
        # few does not cascade onto the rest. Members an operator drained are out of the
        # count and stay refused. O(members), run only when a mark changes, never per request.
        eligible = usable = 0
        for slot in self.slots.values():
            bits = self._refuse[slot]
            if not bits & ~HEALTH_BITS:
                eligible += 1
                usable += bits == 0
        self.panicking = in_panic(eligible, usable, self.panic_threshold)
        ignore = HEALTH_BITS if self.panicking else 0
        for slot, address in enumerate(self.addresses):
            self.load.set_accept(slot, address is not None
                                 and self._refuse[slot] & ~ignore == 0)

    def set_panic_threshold(self, percent: float) -> None:
        """Set the healthy-panic threshold (percent; 0 disables) and re-apply the marks."""
        self.panic_threshold = percent
        self._refresh_accept()

    def _mark(self, marks: set[str], bit: int, address: str, on: bool) -> None:
        if (address in marks) == on:
            return  # unchanged (the set and the member's bit always agree)
        if on:
            marks.add(address)
        else:
            marks.discard(address)
        slot = self.slots.get(address)
        if slot is not None:
            self._set_bits(slot, bit, on)

    def set_ejected(self, address: str, ejected: bool) -> None:
        """Mark a member ejected by outlier detection (or returned to service)."""
        if address in self.slots:
            self._mark(self._ejected, REFUSE_EJECTED, address, ejected)

    def set_unhealthy(self, address: str, unhealthy: bool) -> None:
        """Mark a member failing (or passing again) its active health check."""
        if address in self.slots:
            self._mark(self._unhealthy, REFUSE_UNHEALTHY, address, unhealthy)

    def is_ejected(self, address: str) -> bool:
        """Whether outlier detection has `address` ejected now."""
        return address in self._ejected

    def is_unhealthy(self, address: str) -> bool:
        """Whether `address` fails its active health check now."""
        return address in self._unhealthy

    def is_healthy(self, address: str) -> bool:
        """Neither failing its health check nor ejected (the admin API's `healthy`)."""
        return address not in self._unhealthy and address not in self._ejected

    @property
    def ejected_count(self) -> int:
        """How many members are ejected now (max_ejection_percent reads it)."""
        return len(self._ejected)

    def set_drain(self, address: str, drain: bool) -> None:
        """Drain (or re-activate) a backend: a drained one is never picked for new requests."""
        self._mark(self._drained, REFUSE_DRAIN, address, drain)

    def set_drained(self, addresses: Iterable[str]) -> None:
        """Make exactly `addresses` drained (a snapshot's drain marks, applied at activation)."""
        wanted = set(addresses)
        for address in self._drained - wanted:
            self.set_drain(address, False)
        for address in wanted - self._drained:
            self.set_drain(address, True)

    @property
    def drained(self) -> frozenset[str]:
        """Addresses an operator drained (members, or about to be at the next commit)."""
        return frozenset(self._drained)

    def state_of(self, address: str) -> str:
        """``"drain"`` or ``"active"`` (the admin API's `state`)."""
        return "drain" if address in self._drained else "active"

    def inflight(self, address: str) -> int:
        """Requests in flight to `address` in this process (0 when it is not a member)."""
        slot = self.slots.get(address)
        return 0 if slot is None else self.load.inflight(slot)


class Lease:  # final: _cluster_c.pxd declares it @cython.final
    """One admitted request on one backend; `end()` it exactly once."""

    __slots__ = ("_counters", "_state", "backend", "head_ns", "inflight", "sent_ns", "slot",
                 "started_ns")

    def __init__(self, state: ClusterState, backend: BackendInfo, started_ns: int) -> None:
        self._state: ClusterState | None = state
        self._counters = state.counters[backend.slot]
        self.backend = backend
        self.slot = backend.slot
        self.started_ns = started_ns
        self.inflight = 0
        self.sent_ns = 0
        self.head_ns = 0

    def end(self, outcome: int, now_ns: int, status: int = 0) -> None:
        """Return the backend: in-flight -= 1, latency sample, counters, observers.

        The data plane sets ``sent_ns`` when the whole request has gone upstream and
        ``head_ns`` when the response head arrived: the backend's own time between the
        two is what its adaptive limit learns from (an upload's transfer time is not).
        """
        state = self._state
        if state is None:
            raise RuntimeError("Lease.end() called twice")
        o = int(outcome)
        if o < 0 or o >= N_OUTCOMES:
            raise IndexError(f"unknown outcome {outcome!r}")
        self._state = None
        state.active -= 1
        rtt = now_ns - self.started_ns
        c = self._counters
        # The histogram takes the real latency, before the failure penalty below.
        buckets = c.latency
        i = bucket_index(rtt)
        buckets[i] += 1
        c.latency_ns += rtt
        failed = o != OUTCOME_OK and o != OUTCOME_CLIENT_ABORT
        if failed:
            c.failures += 1
            if rtt < _PENALTY_NS:
                rtt = _PENALTY_NS
        state.load.finish(self.slot, rtt, now_ns)
        overload = state.overload
        if overload is not None:
            # Timeouts and 5xx are drops (Netflix's didDrop); a connect failure or reset
            # says nothing about the backend's queue, and is not sampled.
            dropped = o in (OUTCOME_TIMEOUT, OUTCOME_HTTP_5XX)
            head = self.head_ns
            if head or dropped:
                sent = self.sent_ns if self.sent_ns > self.started_ns else self.started_ns
                sample = (head if head else now_ns) - sent
                limits = overload.limits
                limit = (limits[self.slot] if self.slot < len(limits)
                         else overload.limit(self.slot))
                limit.sample(sample if sample > 0 else 0, self.inflight, dropped, now_ns)
        by_outcome = c.by_outcome
        by_outcome[o] += 1
        responses = c.responses
        i = status // 100 if 100 <= status < 600 else 0
        responses[i] += 1
        # A success reaches only the observers that cannot read it from the counters.
        for observer in state._observers if o != OUTCOME_OK else state._success_observers:
            observer.observe(self.backend, outcome, status, rtt, now_ns)
        if overload is not None and overload.queue.length:
            overload.queue.serve(now_ns)  # the room this lease held goes to a waiter


def in_panic(eligible: int, usable: int, threshold: float) -> bool:
    """Envoy's healthy-panic rule: fewer than `threshold` percent of the `eligible` (not
    drained) members are `usable` (neither ejected nor failing health checks). The gate
    and the admin API's dry run (lbproxy/balance/moved.py) both decide by it."""
    return eligible > 0 and usable * 100 < threshold * eligible


def _build_selector(cfg: ClusterConfig, slots: list[int], addresses: list[str],
                    weights: list[int], load: BackendLoad) -> Any:
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


class Cluster:  # final: _cluster_c.pxd declares it @cython.final
    """An immutable cluster in a snapshot: its backends, selector and long-lived state."""

    __slots__ = ("_by_slot", "_fallback", "_pick", "_pick_with_now", "_plan", "backends",
                 "config", "name", "policy", "selector", "state")

    def __init__(self, name: str, cfg: ClusterConfig, state: ClusterState,
                 plan: SlotPlan | None = None) -> None:
        """Build from `cfg`; with no `plan`, take the slots in `state` at once.

        A snapshot passes the plan it made without touching `state`, and commits it with
        `activate()` right before it is published (lbproxy/control/snapshot.py).
        """
        self.name = name
        self.config = cfg
        self.policy = cfg.policy
        self.state = state
        entries = [backend_of(b) for b in cfg.backends]
        addresses = [b.address for b in entries]
        if plan is None:
            slots = state.assign(addresses)
            self._plan = None
        else:
            slots = list(plan.slots)
            self._plan = plan
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
        self._pick = self.selector.pick
        # Maglev's fallback order for a key (bounded load or not), for retries.
        inner = getattr(self.selector, "inner", self.selector)
        self._fallback = inner.candidates if cfg.policy == "maglev" else None

    def activate(self) -> None:
        """Commit this cluster's slot plan to its state (once; no-op when built live)."""
        plan = self._plan
        if plan is not None:
            self._plan = None
            self.state.commit(plan)

    def begin(self, key: bytes, now_ns: int, attempt: int = 0,
              exclude: tuple[int, ...] = (), priority: int = 1,
              cohort: int = 0) -> Lease | Refusal:
        """Admit, select and account one request: a `Lease` to end later, or a `Refusal`.

        With overload control on, `priority` (0 critical, 1 normal, 2 sheddable) and
        `cohort` (0-127, a hash of the viewer) place the request in the admission order,
        and the answer may be `WAIT`: the data plane parks the request in
        ``state.overload.queue``, which admits it through `admit_waiting` when room frees.
        """
        # `attempt` is 0 for a first try and counts retries, so a retry budget (an admission
        # policy) can refuse retries without the data plane knowing budgets exist.
        if attempt:
            return self._begin_retry(key, now_ns, attempt, exclude)
        state = self.state
        if now_ns >= state.wake_ns:
            state.wake(now_ns)
        for policy in state._per_request:
            refusal = policy.admit(self, now_ns, attempt)
            if refusal is not None:
                state.refused(refusal)
                return refusal
        overload = state.overload
        if overload is not None:
            level = overload.level
            if now_ns >= level.window_end_ns:
                overload.close_window(now_ns)
            position = priority * _COHORTS + cohort
            level.arrivals[position] += 1  # AdmissionLevel.admits, inlined
            if position >= level.level:
                overload.shed[priority * N_REASONS] += 1  # reason SHED
                return OVERLOADED
        slot = self._pick(key, now_ns) if self._pick_with_now else self._pick(key)
        if slot < 0:
            state.refused(NO_HEALTHY_BACKEND)
            return NO_HEALTHY_BACKEND
        if overload is not None and not self._fits(overload, slot, priority):
            slot = self._room(overload, key, priority)
            if slot < 0:
                queue = overload.queue
                # Sheddable work uses spare room only and never waits. Other classes
                # wait, unless their queue stands: a newcomer would only wait to be shed,
                # so it is refused now, which is what keeps refusals fast. Critical
                # requests always wait (bounded by CoDel and max_wait).
                if (priority < _SHEDDABLE and queue.length < queue.max_pending
                        and not (priority and queue.codels[priority].standing(now_ns))):
                    return WAIT
                overload.shed[priority * N_REASONS] += 1
                return OVERLOADED
        return self._lease(slot, now_ns, False)

    def _fits(self, overload: Any, slot: int, priority: int) -> bool:
        """Whether a request of `priority` fits under `slot`'s adaptive limit.

        Netflix's PartitionedLimiter habit: sheddable work may not take the last quarter
        of a backend's limit (at least one request), which stays free for the classes that
        matter, so a critical request is not kept waiting behind prefetches.
        """
        limits = overload.limits
        limit = limits[slot].limit if slot < len(limits) else overload.limit(slot).limit
        if priority == _SHEDDABLE:
            limit -= limit // 4 if limit >= 4 else 1
        return self.state.load.inflight(slot) < limit

    def _room(self, overload: Any, key: bytes, priority: int) -> int:
        """An accepted backend with room for `priority`, in the selector's fallback order:
        a key's next Maglev candidates, else the backend with the most room; -1 if none."""
        load = self.state.load
        if self._fallback is not None:
            for slot in self._fallback(key, len(self.backends)):
                if load.accepts(slot) and self._fits(overload, slot, priority):
                    return slot
            return -1
        best = -1
        most = 0
        for b in self.backends:
            slot = b.slot
            if load.accepts(slot) and self._fits(overload, slot, priority):
                room = overload.limit(slot).limit - load.inflight(slot)
                if room > most:
                    best = slot
                    most = room
        return best

    def protect_shed(self, priority: int) -> Refusal:
        """The data plane shed a request to protect the proxy itself: count it."""
        overload = self.state.overload
        if overload is not None:
            overload.shed[priority * N_REASONS + 2] += 1  # reason SELF_PROTECT
        else:
            self.state.refused(OVERLOADED)
        return OVERLOADED

    def admit_waiting(self, key: bytes, now_ns: int, priority: int) -> Lease | None:
        """A lease for a queued request if some backend has room now, else None."""
        overload = self.state.overload
        slot = self._pick(key, now_ns) if self._pick_with_now else self._pick(key)
        if slot < 0:
            return None
        if overload is not None and not self._fits(overload, slot, priority):
            slot = self._room(overload, key, priority)
            if slot < 0:
                return None
        return self._lease(slot, now_ns, False)

    def _lease(self, slot: int, now_ns: int, retry: bool) -> Lease:
        """Account a request on `slot` and hand out its lease."""
        state = self.state
        state.load.start(slot)
        state.active += 1
        state.requests += 1
        counters = state.counters[slot]
        counters.requests += 1
        if retry:
            state.retries += 1
            counters.retries += 1
        lease = Lease.__new__(Lease)
        lease._state = state
        lease._counters = counters
        # Never None: selectors only return slots they were built with.
        lease.backend = self._by_slot[slot]  # type: ignore[assignment]
        lease.slot = slot
        lease.started_ns = now_ns
        lease.inflight = state.load.inflight(slot)
        lease.sent_ns = 0
        lease.head_ns = 0
        return lease

    def _begin_retry(self, key: bytes, now_ns: int, attempt: int,
                     exclude: tuple[int, ...]) -> Lease | Refusal:
        """`begin()` for a retry: every admission policy, the retry budget, another backend."""
        state = self.state
        for policy in state.admission + state.retry_admission:
            refusal = policy.admit(self, now_ns, attempt)
            if refusal is not None:
                state.refused(refusal)
                return refusal
        slot = self._pick_other(key, now_ns, exclude)
        if slot < 0:
            return NO_HEALTHY_BACKEND  # the failed attempt's error stands: not a refusal
        overload = state.overload
        if overload is not None and not self._fits(overload, slot, 1):
            # Retries count against the same limits; a retry never waits in the queue
            # (the failed attempt already took its time): the failure stands.
            overload.shed[N_REASONS] += 1  # counted as normal, reason SHED
            return OVERLOADED
        return self._lease(slot, now_ns, True)

    def _pick_other(self, key: bytes, now_ns: int, exclude: tuple[int, ...]) -> int:
        """An accepted backend not in `exclude`; -1 when none is left."""
        load = self.state.load
        if self._fallback is not None:
            # The key's next Maglev candidate (Pingora's BackendSelection::iter order): every
            # retry of a key whose primary is down lands on the same second choice (cache
            # affinity). Envoy's Maglev instead mutates the hash per attempt (maglev_lb.cc,
            # `hash ^= ~0ULL - attempt + 1`): deterministic too, but it may draw a failed host
            # again and relies on its retry host predicate to re-pick.
            for slot in self._fallback(key, len(self.backends)):
                if slot not in exclude and load.accepts(slot):
                    return slot
        else:
            # P2C and round robin: pick again a few times; then the cheapest one left.
            for _ in range(len(self.backends)):
                slot = self._pick(key, now_ns) if self._pick_with_now else self._pick(key)
                if slot < 0:
                    return slot
                if slot not in exclude:
                    return slot
            others = [b.slot for b in self.backends
                      if b.slot not in exclude and load.accepts(b.slot)]
            if others:
                return min(others, key=lambda s: load.cost(s, now_ns))
        # Only backends that already failed this request are left: as nginx's
        # proxy_next_upstream, no next server means the failed attempt's error stands.
        return -1

    def backend(self, address: str) -> BackendInfo | None:
        """The member with this address, if any."""
        slot = self.state.slots.get(address)
        if slot is None or slot >= len(self._by_slot):
            return None
        return self._by_slot[slot]
