# The C types of lbproxy/balance/cluster.py, which Cython compiles as
# lbproxy.balance._cluster_c (aiohttp's reader_c.pxd beside reader_py.py is the model).
# Only declarations live here: every line of behaviour is in cluster.py, which also runs
# uncompiled. What the types buy per request: the gate's classes are final with C fields,
# begin() and Lease.end() touch counters and the state without a dict lookup, and the
# latency bucket is computed by a C call into _latency_c.

cimport cython
from libc.stdint cimport int64_t

from lbproxy._codes cimport *  # every shared code, as C enums
from lbproxy.balance._latency_c cimport bucket_index

cdef int64_t _PENALTY_NS, _NEVER_NS
cdef Py_ssize_t N_REASONS, _COHORTS, _SHEDDABLE


@cython.final
cdef class BackendCounters:
    cdef public Py_ssize_t requests, retries, failures
    cdef public int64_t latency_ns
    cdef public list responses, by_outcome, latency


@cython.final
cdef class ClusterState:
    cdef public str name
    cdef public object load
    cdef public dict slots
    cdef public list addresses, counters
    cdef list _refuse, _free
    cdef set _retiring, _drained, _ejected, _unhealthy
    cdef public Py_ssize_t generation
    cdef public double panic_threshold
    cdef public bint panicking
    cdef public Py_ssize_t active, requests, retries
    cdef public int64_t wake_ns
    cdef tuple _admission, _per_request, _timed, _observers, _success_observers
    cdef public tuple retry_admission
    cdef public object overload
    cdef public dict refusals

    cpdef refused(self, refusal)
    cpdef wake_at(self, int64_t when_ns)
    cpdef wake(self, int64_t now_ns)


@cython.final
cdef class Lease:
    cdef ClusterState _state
    cdef BackendCounters _counters
    cdef readonly object backend
    cdef readonly Py_ssize_t slot
    cdef readonly int64_t started_ns
    cdef public Py_ssize_t inflight
    cdef public int64_t sent_ns, head_ns

    @cython.locals(state=ClusterState, c=BackendCounters, o=int, rtt=int64_t, i=Py_ssize_t,
                   failed=bint, buckets=list, by_outcome=list, responses=list,
                   dropped=bint, head=int64_t, sent=int64_t, sample=int64_t, limits=list)
    cpdef end(self, outcome, int64_t now_ns, int status=*)


@cython.final
cdef class Cluster:
    cdef readonly str name, policy
    cdef readonly object config, selector
    cdef readonly ClusterState state
    cdef readonly tuple backends
    cdef list _by_slot
    cdef object _pick, _fallback, _plan
    cdef bint _pick_with_now

    @cython.locals(state=ClusterState, slot=Py_ssize_t, position=Py_ssize_t)
    cpdef begin(self, bytes key, int64_t now_ns, Py_ssize_t attempt=*, tuple exclude=*,
                Py_ssize_t priority=*, Py_ssize_t cohort=*)
    @cython.locals(slot=Py_ssize_t)
    cpdef admit_waiting(self, bytes key, int64_t now_ns, Py_ssize_t priority)
    cpdef protect_shed(self, Py_ssize_t priority)
    @cython.locals(limit=Py_ssize_t, limits=list)
    cdef bint _fits(self, object overload, Py_ssize_t slot, Py_ssize_t priority) except -1
    @cython.locals(slot=Py_ssize_t, best=Py_ssize_t, most=Py_ssize_t, room=Py_ssize_t)
    cdef Py_ssize_t _room(self, object overload, bytes key, Py_ssize_t priority) except -2
    @cython.locals(state=ClusterState, counters=BackendCounters, lease=Lease)
    cdef Lease _lease(self, Py_ssize_t slot, int64_t now_ns, bint retry)
