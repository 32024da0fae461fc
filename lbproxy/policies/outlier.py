"""Passive outlier detection: eject a backend after consecutive failures, return it later.

Owns the per-backend failure streaks and ejection times of one cluster, following Envoy's
outlier detection (arch_overview/upstream/outlier, config.cluster.v3.OutlierDetection):
consecutive 5xx and consecutive gateway failures, an ejection time of
``base_ejection_time x times ejected`` capped by ``max_ejection_time``, and a
``max_ejection_percent`` that always allows one ejection. Time is always passed in, so
tests feed explicit nanoseconds and never sleep. Marks reach selection only through
`ClusterState.set_ejected`; must not touch HTTP.

Its per-request hooks into the cluster gate (lbproxy/balance/cluster.py), both public:

- it is an `OutcomeObserver` with ``successes_from_counters``: `Lease.end()` calls
  `observe` for failures only, and a success between two failures is read from the
  backend's ``BackendCounters.by_outcome[OK]`` when the next failure comes, so the
  common successful request costs it nothing;
- it is a timed `AdmissionPolicy`: `wake(now_ns)` returns expired ejections to service,
  and it asks the gate to call it at the earliest expiry (`ClusterState.wake_at`), so it
  is not consulted on every request and never refuses.
"""

from __future__ import annotations

import logging
from typing import final

from lbproxy.balance.gate import NEVER_NS, BackendInfo, Cluster, ClusterState, Outcome, Refusal
from lbproxy.control.config import OutlierDetection

log = logging.getLogger("lbproxy.policies.outlier")
NS = 1_000_000_000
# Envoy counts these statuses as gateway failures, and maps its own connect failures,
# resets and timeouts onto 503/504, so they count as both 5xx and gateway failures.
GATEWAY_STATUSES = frozenset({502, 503, 504})
# Plain ints bound once: observe() runs for every request, and an Enum attribute lookup
# per call costs more than the comparison itself.
_OK = int(Outcome.OK)
_HTTP_5XX = int(Outcome.HTTP_5XX)
_CLIENT_ABORT = int(Outcome.CLIENT_ABORT)


def is_gateway_failure(outcome: int, status: int) -> bool:
    """A failure that counts towards consecutive_gateway_failure (and consecutive_5xx)."""
    return outcome != _HTTP_5XX or status in GATEWAY_STATUSES


def ejection_ns(cfg: OutlierDetection, times_ejected: int) -> int:
    """How long the `times_ejected`-th ejection lasts: base x n, capped (Envoy)."""
    # Envoy: a max_ejection_time below base_ejection_time is ignored (base is the floor).
    cap = max(cfg.base_ejection_time, cfg.max_ejection_time)
    return int(min(cfg.base_ejection_time * times_ejected, cap) * NS)


def may_eject(ejected: int, members: int, max_percent: float) -> bool:
    """Whether one more ejection stays within max_ejection_percent of `members`."""
    # Envoy's documented rule: "Defaults to 10% but will eject at least one host regardless
    # of the value" -- so a pool of 3 can still lose its one bad backend.
    return ejected == 0 or (ejected + 1) * 100 <= max_percent * members


@final
class HostRecord:
    """One backend's failure streaks and ejection history."""

    __slots__ = ("consecutive_5xx", "consecutive_gateway", "counters", "ejected_until_ns",
                 "returned_ns", "successes", "times_ejected")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        # The backend's counters and their success count at its last failure: a different
        # count at the next failure means a success came in between (the streaks restart).
        self.counters: object = None
        self.successes = 0
        self.times_ejected = 0  # Envoy's ejection multiplier
        self.ejected_until_ns = 0  # 0: in service
        self.returned_ns = 0  # when it last came back (the multiplier decays from there)


@final
class OutlierDetector:
    """Consecutive-failure ejection for one cluster (an OutcomeObserver and AdmissionPolicy)."""

    # The gate tells it of failures only; it reads successes from BackendCounters.
    successes_from_counters = True

    def __init__(self, state: ClusterState, cfg: OutlierDetection) -> None:
        self.state = state
        self.cfg = cfg
        self.records: dict[str, HostRecord] = {}
        self.next_return_ns = NEVER_NS  # the earliest ejected_until_ns: when to wake

    def reconfigure(self, cfg: OutlierDetection) -> None:
        """Take new settings; streaks and ejections in progress carry over."""
        self.cfg = cfg

    def admit(self, cluster: Cluster, now_ns: int, attempt: int) -> Refusal | None:
        """Never refuses: returns expired ejections to service before selection."""
        self.wake(now_ns)
        return None

    def wake(self, now_ns: int) -> None:
        """Return the ejections that expired by `now_ns` (the gate calls it when due)."""
        if now_ns >= self.next_return_ns:
            self.sweep(now_ns)
        else:
            self.state.wake_at(self.next_return_ns)

    def observe(self, backend: BackendInfo, outcome: int, status: int, rtt_ns: int,
                now_ns: int) -> None:
        """Count one outcome against the backend's streaks; eject at a threshold."""
        if outcome == _CLIENT_ABORT:
            return  # the client left: says nothing about the backend
        rec = self.records.get(backend.address)
        if outcome == _OK:
            if rec is not None:  # success resets both streaks (Envoy)
                rec.consecutive_5xx = rec.consecutive_gateway = 0
            return
        if rec is None:
            rec = self.records[backend.address] = HostRecord()
        counters = self.state.counters[backend.slot]
        successes = counters.by_outcome[_OK]
        if counters is not rec.counters or successes != rec.successes:
            # A success the gate did not report (it reports failures only) came since the
            # last failure, or the backend took a fresh slot: both streaks restart (Envoy).
            if rec.counters is not None:
                rec.consecutive_5xx = rec.consecutive_gateway = 0
            rec.counters = counters
            rec.successes = successes
        rec.consecutive_5xx += 1
        if is_gateway_failure(outcome, status):
            rec.consecutive_gateway += 1
        else:
            rec.consecutive_gateway = 0  # a non-gateway 5xx breaks the gateway streak
        cfg = self.cfg
        if (rec.consecutive_5xx >= cfg.consecutive_5xx
                or rec.consecutive_gateway >= cfg.consecutive_gateway_failure):
            reason = (f"{rec.consecutive_gateway} consecutive gateway failures"
                      if rec.consecutive_gateway >= cfg.consecutive_gateway_failure
                      else f"{rec.consecutive_5xx} consecutive 5xx")
            # Streaks restart whether or not the ejection is allowed, as in Envoy: the next
            # attempt needs a fresh run of failures.
            rec.consecutive_5xx = rec.consecutive_gateway = 0
            # Late leases of an ejected host change nothing. Asked of the state, not the
            # record: a backend removed and re-added since its ejection starts in service.
            if not self.state.is_ejected(backend.address):
                self._eject(backend.address, rec, now_ns, reason)

    def _eject(self, address: str, rec: HostRecord, now_ns: int, reason: str) -> None:
        state = self.state
        if address not in state.slots:
            return  # removed since the lease began
        if not may_eject(state.ejected_count, len(state.slots), self.cfg.max_ejection_percent):
            log.info("cluster %s: %s not ejected after %s: max_ejection_percent reached",
                     state.name, address, reason)
            return
        # Envoy lowers the multiplier by one per interval a host stays in service; computed
        # here, when it matters, instead of by a timer.
        interval_ns = int(self.cfg.interval * NS)
        healthy_intervals = (now_ns - rec.returned_ns) // interval_ns if rec.returned_ns else 0
        rec.times_ejected = max(0, rec.times_ejected - healthy_intervals) + 1
        rec.ejected_until_ns = now_ns + ejection_ns(self.cfg, rec.times_ejected)
        self.next_return_ns = min(self.next_return_ns, rec.ejected_until_ns)
        state.wake_at(self.next_return_ns)
        state.set_ejected(address, True)
        log.warning("cluster %s: %s ejected for %gs after %s (ejection %d)", state.name, address,
                    (rec.ejected_until_ns - now_ns) / NS, reason, rec.times_ejected)

    def sweep(self, now_ns: int) -> None:
        """Return every ejection that expired by `now_ns`; forget backends that left."""
        members = self.state.slots
        next_return = NEVER_NS
        for address in list(self.records):
            rec = self.records[address]
            if address not in members:
                del self.records[address]  # ClusterState already forgot its mark
            elif rec.ejected_until_ns:
                if now_ns >= rec.ejected_until_ns:
                    rec.ejected_until_ns = 0
                    rec.returned_ns = now_ns
                    self.state.set_ejected(address, False)
                    log.warning("cluster %s: %s returned from ejection", self.state.name, address)
                else:
                    next_return = min(next_return, rec.ejected_until_ns)
        self.next_return_ns = next_return
        self.state.wake_at(next_return)

    def release_all(self) -> None:
        """Return every ejected backend now (outlier detection was turned off)."""
        for address, rec in self.records.items():
            if rec.ejected_until_ns:
                rec.ejected_until_ns = 0
                self.state.set_ejected(address, False)
        self.records.clear()
        self.next_return_ns = NEVER_NS
