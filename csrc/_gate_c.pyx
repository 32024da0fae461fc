"""The compiled twin of the cluster gate's per-request path: `Cluster.begin()` and `Lease`.

Owns only the per-request work of lbproxy/balance/cluster.py (its Python `Lease` and
`Cluster.begin` are the twin, chosen there when LBPROXY_NO_EXTENSIONS is set or this
module did not build): admission, selection, in-flight and counter accounting, the latency
bucket index, and the observers. Policies stay pluggable: any Python `AdmissionPolicy` /
`OutcomeObserver` is called as before; the two installed by lbproxy/policies/install.py on every
cluster (the `OutlierDetector`, the `Breaker`) have their per-request methods inlined here,
so the common configurations run without a Python frame. Retries (`attempt > 0`) take the
Python path (`Cluster._begin_retry`): they are rare and must stay one implementation.
Must not touch HTTP, and must not change what the twin computes: tests/test_gate.py
compares the two on random sequences.

Imported by lbproxy/balance/cluster.py at its end, so the names taken from it below already exist.
"""

cimport cython
from libc.stdint cimport int64_t

from lbproxy.balance.cluster import FAILURE_PENALTY_NS, NO_HEALTHY_BACKEND

__all__ = ["Lease", "begin", "bucket_index"]

# lbproxy/balance/latency.py's layout: 3 sub-bucket bits, 208 buckets.
cdef enum:
    SUB_BITS = 3
    LAST_BUCKET = 207
    # lbproxy.cluster.Outcome's values.
    N_OUTCOMES = 6
    OUTCOME_OK = 0
    OUTCOME_CLIENT_ABORT = 5

cdef int64_t _PENALTY = FAILURE_PENALTY_NS
cdef object _NO_HEALTHY = NO_HEALTHY_BACKEND
# The policy classes whose per-request methods are inlined; looked up at first use, since
# lbproxy/policies/outlier.py and lbproxy/policies/breaker.py import lbproxy/balance/cluster.py (which imports this).
cdef object _detector_type = None
cdef object _breaker_type = None
cdef object _circuit_open = None
cdef object _gateway_statuses = None


cdef void _bind_policies() except *:
    global _detector_type, _breaker_type, _circuit_open, _gateway_statuses
    from lbproxy.policies.breaker import CIRCUIT_OPEN, Breaker
    from lbproxy.policies.outlier import GATEWAY_STATUSES, OutlierDetector
    _detector_type = OutlierDetector
    _breaker_type = Breaker
    _circuit_open = CIRCUIT_OPEN
    _gateway_statuses = GATEWAY_STATUSES


cdef inline int _bit_length(int64_t v) noexcept nogil:
    cdef int n = 0
    if v < 0:
        v = -v
    while v:
        v >>= 1
        n += 1
    return n


cdef inline Py_ssize_t _bucket(int64_t rtt_ns) noexcept nogil:
    # latency.bucket_index in C. C division truncates where Python floors, which only
    # differs for negative samples (a clock step back), and those all land in bucket 0.
    cdef int64_t us = rtt_ns // 1000
    if us < 16:
        return us if us >= 0 else 0
    cdef int shift = _bit_length(us) - SUB_BITS - 1
    cdef int64_t index = (<int64_t>shift << SUB_BITS) + (us >> shift)
    return index if index < LAST_BUCKET else LAST_BUCKET


def bucket_index(int64_t rtt_ns):
    """The latency bucket of one sample (ns), as lbproxy.latency.bucket_index."""
    return _bucket(rtt_ns)


@cython.final
cdef class Lease:
    """One admitted request on one backend; `end()` it exactly once."""

    cdef object _state  # the ClusterState; None once ended
    cdef object _counters
    cdef readonly object backend
    cdef readonly Py_ssize_t slot
    cdef readonly int64_t started_ns

    def __init__(self, state, backend, int64_t started_ns):
        self._state = state
        self._counters = state.counters[backend.slot]
        self.backend = backend
        self.slot = backend.slot
        self.started_ns = started_ns

    def end(self, outcome, int64_t now_ns, int status=0):
        """Return the backend: in-flight -= 1, latency sample, counters, observers."""
        state = self._state
        if state is None:
            raise RuntimeError("Lease.end() called twice")
        self._state = None
        cdef int o = outcome
        if o < 0 or o >= N_OUTCOMES:
            raise IndexError("unknown outcome")  # the twin's tuple index fails the same way
        state.active -= 1
        cdef int64_t rtt = now_ns - self.started_ns
        c = self._counters
        # The histogram takes the real latency, before the failure penalty below.
        cdef list buckets = c.latency
        cdef Py_ssize_t i = _bucket(rtt)
        buckets[i] = buckets[i] + 1
        c.latency_ns += rtt
        if o != OUTCOME_OK and o != OUTCOME_CLIENT_ABORT:
            c.failures += 1
            if rtt < _PENALTY:
                rtt = _PENALTY
        state.load.finish(self.slot, rtt, now_ns)
        cdef list by_outcome = c.by_outcome
        by_outcome[o] = by_outcome[o] + 1
        cdef list responses = c.responses
        i = status // 100 if 100 <= status < 600 else 0
        responses[i] = responses[i] + 1
        observers = state.observers
        if not observers:
            return
        if _detector_type is None:
            _bind_policies()
        for observer in observers:
            if type(observer) is _detector_type:
                if o == OUTCOME_CLIENT_ABORT:
                    continue  # the client left: says nothing about the backend
                if o == OUTCOME_OK:
                    # OutlierDetector.observe's success path: both streaks restart (Envoy).
                    rec = observer.records.get(self.backend.address)
                    if rec is not None:
                        rec.consecutive_5xx = 0
                        rec.consecutive_gateway = 0
                    continue
            observer.observe(self.backend, outcome, status, rtt, now_ns)


def begin(cluster, key, int64_t now_ns, attempt=0, exclude=()):
    """Admit, select and account one request: a `Lease` to end later, or a `Refusal`."""
    if attempt:
        return cluster._begin_retry(key, now_ns, attempt, exclude)
    state = cluster.state
    cdef tuple admission = state.admission
    if admission:
        if _detector_type is None:
            _bind_policies()
        for policy in admission:
            kind = type(policy)
            if kind is _detector_type:
                # OutlierDetector.admit: returns expired ejections to service, never refuses.
                if now_ns >= policy._next_return_ns:
                    policy.sweep(now_ns)
            elif kind is _breaker_type:
                if state.active >= policy.max_requests:
                    return _circuit_open
            else:
                refusal = policy.admit(cluster, now_ns, attempt)
                if refusal is not None:
                    return refusal
    pick = cluster._pick
    cdef Py_ssize_t slot = pick(key, now_ns) if cluster._pick_with_now else pick(key)
    if slot < 0:
        return _NO_HEALTHY
    state.load.start(slot)
    state.active += 1
    state.requests += 1
    info = cluster._by_slot[slot]
    counters = state.counters[slot]
    counters.requests += 1
    cdef Lease lease = Lease.__new__(Lease)
    lease._state = state
    lease._counters = counters
    lease.backend = info
    lease.slot = slot
    lease.started_ns = now_ns
    return lease
